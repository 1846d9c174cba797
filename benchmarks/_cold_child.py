"""One cold start, run by bench_cold_start.py in a fresh interpreter: ``python _cold_child.py VARIANT THREADS``.

Times ``import torch``, then ``import sadcl``, then ``sadcl.create_model(VARIANT, pretrained=True)`` split into
its steps (Hub cache lookup, sha256 verification, safetensors read, ``load_state_dict``; the rest is building
the randomly initialised network), then the first and second ``sadcl.predict`` on one random image.
Prints one JSON line. Only the standard library is imported before the clock starts.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any


def _timed(timers: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers[name] += time.perf_counter() - t0

    return wrapper


def main(variant: str, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    import torch

    out["import_torch_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import sadcl

    out["import_sadcl_after_torch_s"] = time.perf_counter() - t0
    out["import_sadcl_total_s"] = out["import_torch_s"] + out["import_sadcl_after_torch_s"]
    torch.set_num_threads(threads)

    import huggingface_hub

    from sadcl.zoo import factory, weights

    timers: dict[str, float] = defaultdict(float)
    # download_checkpoint imports hf_hub_download from the package and calls verify_file by its global
    # name; the factory calls its own read_safetensors and load_pretrained: patch those references.
    huggingface_hub.hf_hub_download = _timed(timers, "hub_cache_lookup_s", huggingface_hub.hf_hub_download)
    weights.verify_file = _timed(timers, "sha256_verify_s", weights.verify_file)
    factory.read_safetensors = _timed(timers, "read_safetensors_s", factory.read_safetensors)
    factory.load_pretrained = _timed(timers, "load_state_dict_s", factory.load_pretrained)
    t0 = time.perf_counter()
    model = sadcl.create_model(variant, pretrained=True)
    create = time.perf_counter() - t0
    out["create_model_s"] = create
    out.update(timers)
    out["build_network_s"] = create - sum(timers.values())

    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(1, 3, size, size)
    for key in ("first_predict_s", "second_predict_s"):
        t0 = time.perf_counter()
        sadcl.predict(model, x)
        out[key] = time.perf_counter() - t0
    out["time_to_first_prediction_s"] = out["import_sadcl_total_s"] + create + out["first_predict_s"]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
