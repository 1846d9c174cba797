"""Cold start in fresh processes: ``import sadcl``, ``create_model(pretrained=True)`` from a warm Hub cache, first
prediction; with the sha256 check done for the first time vs remembered.

    python benchmarks/bench_cold_start.py [--quick] [--threads N] [--out benchmarks/results/cold_start.json]

Random checkpoints of the default small model (``sadcl_fashion_mosaic`` when registered, else ``sadcl_tiny``)
and of ``sadcl_coco_448`` (~800 MB; not in ``--quick``) are published on a loopback Hub (``tests/hubserver.py``,
the real ``huggingface_hub`` client talks to it through ``HF_ENDPOINT``) and recorded in a temporary weights
table (``SADCL_WEIGHTS_JSON``). A first child process downloads them into an empty ``HF_HUB_CACHE`` (reported,
not the point). Then, alternating, for each model: a child after deleting sadcl's verification index
(``sadcl-verified.json``: the checkpoint is hashed again) and a child with the index in place (the check is
a lookup). Each child is ``_cold_child.py``; the file stays in the OS page cache between children, as on
a machine that used the model recently.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common
import torch

import sadcl
from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import save_safetensors

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from hubserver import EMPTY_AGENT_REGISTRY, FakeHub  # noqa: E402  (a test helper: the loopback Hub)

REPO_ORG = "sadcl-bench"
PHASES = (
    "import_sadcl_total_s",
    "create_model_s",
    "build_network_s",
    "hub_cache_lookup_s",
    "sha256_verify_s",
    "read_safetensors_s",
    "load_state_dict_s",
    "first_predict_s",
    "second_predict_s",
    "time_to_first_prediction_s",
)


def small_model_name() -> str:
    return "sadcl_fashion_mosaic" if "sadcl_fashion_mosaic" in sadcl.list_models() else "sadcl_tiny"


def publish(hub: FakeHub, variant: str, workdir: Path) -> dict[str, Any]:
    """Save a randomly initialised ``variant`` as safetensors, put it on the Hub, return its weights record."""
    torch.manual_seed(0)
    model = sadcl.create_model(variant)
    path = workdir / f"{variant}.safetensors"
    sha = save_safetensors(export_state_dict(model), path, checkpoint_metadata(model))
    del model
    data = path.read_bytes()
    commit = hub.add_file(f"{REPO_ORG}/{variant}", "model.safetensors", data)
    path.unlink()
    return {
        "hf_hub_id": f"{REPO_ORG}/{variant}",
        "filename": "model.safetensors",
        "revision": commit,
        "sha256": sha,
        "size": len(data),
        "file": None,
    }


def child_env(hub: FakeHub, workdir: Path, table: Path) -> dict[str, str]:
    """Environment of the children: the loopback Hub, an empty cache and home, the temporary weights table."""
    home = workdir / "hf-home"
    home.mkdir(exist_ok=True)
    (home / ".agent_harnesses.json").write_text(json.dumps(EMPTY_AGENT_REGISTRY))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_HUB_CACHE=str(workdir / "hf-cache"),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        SADCL_WEIGHTS_JSON=str(table),
    )
    return env


def run_child(variant: str, threads: int, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "_cold_child.py"), variant, str(threads)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start child for {variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = _common.parser(__doc__.splitlines()[0], "cold_start.json").parse_args(argv)
    _common.set_threads(args.threads)
    threads = torch.get_num_threads()
    variants = [small_model_name()] + ([] if args.quick else ["sadcl_coco_448"])
    rounds = args.rounds or (1 if args.quick else 3)
    report = _common.result_header("bench_cold_start.py", args, argv, models={}, results={})
    with tempfile.TemporaryDirectory(prefix="sadcl-cold-") as tmp, FakeHub() as hub:
        workdir = Path(tmp)
        records = {v: publish(hub, v, workdir) for v in variants}
        table = workdir / "weights.json"
        table.write_text(json.dumps({"schema": 1, "weights": records}))
        env = child_env(hub, workdir, table)
        cache = Path(env["HF_HUB_CACHE"])
        report["models"] = {v: {"checkpoint_bytes": r["size"]} for v, r in records.items()}
        runs: dict[str, dict[str, list[dict]]] = {
            v: {"download": [], "first_verification": [], "remembered_verification": []} for v in variants
        }
        for v in variants:  # fills the cache (and the verification index)
            runs[v]["download"].append(run_child(v, threads, env))
        for r in range(rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                index = cache / f"models--{REPO_ORG}--{v}" / "sadcl-verified.json"
                if not index.is_file():
                    raise SystemExit(f"bench_cold_start: {index} was not written by the first load")
                index.unlink()  # the next load hashes the checkpoint again (and re-creates the index)
                runs[v]["first_verification"].append(run_child(v, threads, env))
                runs[v]["remembered_verification"].append(run_child(v, threads, env))
        n_requests = len(hub.requests)

    rows = []
    for v in variants:
        res: dict[str, Any] = {}
        for mode, items in runs[v].items():
            res[mode] = {k: statistics.median(i[k] for i in items) for k in PHASES if k in items[0]}
            res[mode]["n"] = len(items)
        first, remembered = res["first_verification"], res["remembered_verification"]
        res["sha256_share_of_create_first"] = first["sha256_verify_s"] / first["create_model_s"]
        res["sha256_share_of_create_remembered"] = remembered["sha256_verify_s"] / remembered["create_model_s"]
        res["sha256_mb_per_s"] = records[v]["size"] / 1e6 / max(first["sha256_verify_s"], 1e-9)
        report["results"][v] = res
        for mode in ("first_verification", "remembered_verification"):
            m = res[mode]
            rows.append(
                {
                    "model": v,
                    "verification": mode.split("_")[0],
                    "import": m["import_sadcl_total_s"],
                    "create": m["create_model_s"],
                    "build": m["build_network_s"],
                    "sha256": m["sha256_verify_s"],
                    "read+load": m["read_safetensors_s"] + m["load_state_dict_s"],
                    "1st predict": m["first_predict_s"],
                    "to 1st pred": m["time_to_first_prediction_s"],
                }
            )
    report["hub_requests_total"] = n_requests
    _common.write_json(args.out, report)
    _common.print_table(
        rows,
        ["model", "verification", "import", "create", "build", "sha256", "read+load", "1st predict", "to 1st pred"],
    )
    print(f"seconds, medians of {rounds} fresh processes each; threads={threads}  results: {args.out}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
