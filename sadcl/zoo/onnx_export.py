"""ONNX export of a SADCL model's logits, with its labels and preprocessing in the ONNX metadata."""

from __future__ import annotations

import inspect
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .._atomic import atomic_write
from ..model import SADCL
from .header import HEADER_KEY, canonical_json
from .loading import header_for

ONNX_NAME = "model.onnx"


def require_onnx() -> None:
    """Raise ImportError with the install command when the ``onnx`` extra is missing (before writing anything)."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package: pip install 'sadcl[onnx]'") from e


def export_onnx(model: SADCL, path: str | os.PathLike, *, img_size: int | None = None, opset: int = 17) -> Path:
    """Export ``model``'s logits to ONNX: input ``images`` ``[batch, 3, S, S]``, output ``logits`` ``[batch, C]``.

    The batch dimension is dynamic; the image size is fixed (``img_size``, default the model's), because the
    position encoding is traced for one feature-map size. Label names, mean/std and the model config are
    stored in the ONNX metadata. Needs ``pip install sadcl[onnx]``.
    """
    require_onnx()
    import warnings

    import onnx

    size = int(img_size or model.config["img_size"])
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Traced into a temporary sibling, renamed when complete: a failed export never leaves a model.onnx behind.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    param = next(model.parameters())
    dummy = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript exporter: exact, fast, any opset. torch 2.9+'s default dynamo exporter emits
        # Split(num_outputs), invalid below opset 18, and takes ~10x longer on this model.
        kwargs["dynamo"] = False
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # The legacy exporter is chosen on purpose (above): its deprecation notices are not for our users.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                **kwargs,
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)

    try:
        proto = onnx.load(str(tmp))
        # The tracer leaves the label axis symbolic; it is the model's label count.
        label_axis = proto.graph.output[0].type.tensor_type.shape.dim[1]
        label_axis.ClearField("dim_param")
        label_axis.dim_value = model.num_classes
        header = header_for(model)
        pre = header.preprocessing
        meta = {
            "label_names": json.dumps(model.label_names),
            "sadcl_config": json.dumps(model.config),
            "mean": json.dumps(list(pre.mean)),
            "std": json.dumps(list(pre.std)),
            "input_size": json.dumps([3, size, size]),
            "sadcl_version": __version__,
            HEADER_KEY: canonical_json(header.to_json()),
        }
        onnx.helper.set_model_props(proto, meta)
        onnx.checker.check_model(proto)
        data = proto.SerializeToString()
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write(path, lambda f: f.write(data))
    return path
