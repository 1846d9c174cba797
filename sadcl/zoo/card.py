"""The Hub model card (``README.md``) of an export: Hub metadata, usage, results with their source, labels."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .._text import printable

_ARXIV = "2307.09715"
_CITATION = """@inproceedings{ma2023sadcl,
  title     = {Semantic-Aware Dual Contrastive Learning for Multi-label Image Classification},
  author    = {Ma, Leilei and Sun, Dengdi and Wang, Lei and Zhao, Haifeng and Luo, Bin},
  booktitle = {Proceedings of the 26th European Conference on Artificial Intelligence (ECAI 2023)},
  year      = {2023},
  eprint    = {2307.09715},
  archivePrefix = {arXiv}
}"""


def model_card(config: Mapping[str, Any], *, repo_id: str | None = None, license: str | None = None) -> str:
    """The model card of an export, from its ``config.json`` content (format version 2).

    The YAML front matter carries what the Hub indexes: ``library_name: sadcl``, ``pipeline_tag``, tags,
    the licence when given, and a ``model-index`` with the metrics and their source.
    """
    from huggingface_hub import EvalResult, ModelCardData

    info = config["sadcl"]
    pre = config["pretrained_cfg"]
    arch = config["model_args"]
    name = repo_id.split("/")[-1] if repo_id else (info.get("variant") or config["architecture"])
    metrics = info.get("metrics") or {}
    dataset = info.get("dataset")
    source = info.get("metrics_source")
    eval_results = (
        [
            EvalResult(
                task_type="image-classification",
                task_name="Multi-label image classification",
                dataset_type=_slug(dataset),
                dataset_name=dataset,
                metric_type=_slug(key),
                metric_name=key,
                metric_value=float(value),
            )
            for key, value in metrics.items()
        ]
        if dataset
        else []
    )
    card_data = ModelCardData(
        library_name="sadcl",
        pipeline_tag="image-classification",
        license=license,
        tags=[
            "sadcl",
            "timm",
            "image-classification",
            "multi-label-image-classification",
            "pytorch",
            "safetensors",
            f"backbone:{arch['backbone']}",
        ],
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
        metrics_source=source if metrics else None,  # where the model-index figures come from
        label_names=list(config["label_names"]),  # exact names (YAML escapes them), output i scores label i
    )
    where = f"hf-hub:{repo_id}" if repo_id else "path/to/this/folder"
    sections = [
        f"---\n{card_data.to_yaml()}\n---",
        f"# {printable(name)}\n\n{printable(info.get('description') or 'A SADCL multi-label image classifier.')}"
        f"\n\nSADCL (Semantic-Aware Dual Contrastive Learning) decodes one label query per class against the "
        f"image's feature grid (semantic-aware representation learning) and trains those label-level embeddings "
        f"with sample-to-sample (SSCL) and prototype-to-sample (PSCL) contrastive losses; see the paper "
        f"([arXiv {_ARXIV}](https://arxiv.org/abs/{_ARXIV})).",
        "## Model details\n\n"
        + _table(
            [
                ("Backbone", f"`{arch['backbone']}`"),
                (
                    "Transformer",
                    f"{arch['num_encoder_layers']} encoder / {arch['num_decoder_layers']} decoder layers, "
                    f"width {arch['hidden_dim']}, {arch['num_heads']} heads, FFN {arch['ffn_dim']}",
                ),
                ("Labels", f"{config['num_classes']}" + (f" ({printable(dataset)})" if dataset else "")),
                (
                    "Input",
                    f"{pre['input_size'][1]}×{pre['input_size'][2]} RGB, resized without keeping the aspect "
                    f"ratio (timm crop_mode {pre['crop_mode']}, crop_pct {pre['crop_pct']}), "
                    f"{pre['interpolation']}, mean {pre['mean']}, std {pre['std']}",
                ),
                ("Outputs", "one logit per label; apply a sigmoid for independent per-label probabilities"),
                ("Weights", f"`{info['weights']['filename']}`, sha256 `{info['weights']['sha256']}`"),
            ]
        ),
        "## Usage\n\n```python\nimport sadcl\n\n"
        f'model = sadcl.create_model("{where}")\n'
        'print(sadcl.predict(model, "photo.jpg", top_k=3))  # {label: probability}\n```\n\n'
        "With timm (after `import sadcl`, which registers the architecture) and timm's own preprocessing:\n\n"
        "```python\nimport sadcl, timm\n\n"
        f'model = timm.create_model("{where if repo_id else "local-dir:path/to/this/folder"}", pretrained=True)\n'
        "transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))\n```"
        + (
            "\n\nWith ONNX Runtime (`model.onnx`, input `images` [batch, 3, H, W] normalised as above, "
            "output `logits`):\n\n```python\nimport onnxruntime as ort\n\n"
            'session = ort.InferenceSession("model.onnx")\n'
            'logits = session.run(["logits"], {"images": batch})[0]\n```'
            if info.get("onnx")
            else ""
        ),
        "## Results\n\n"
        + (
            _table([(printable(k), str(float(v))) for k, v in metrics.items()], header=("Metric (%)", "Value"))
            + f"\n\nSource: {printable(source or 'not stated')}."
            if metrics
            else "No results are recorded for these weights."
        ),
        "## Labels\n\n" + _labels(config["label_names"]),
        "## Training recipe\n\n" + _recipe(info.get("recipe")),
        f"## Citation\n\n```bibtex\n{_CITATION}\n```",
    ]
    return "\n\n".join(sections) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _table(rows: list[tuple[str, str]], header: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _labels(names: list[str]) -> str:
    # Label names come from users' files: control characters are shown escaped, never written raw.
    listing = "\n".join(f"{i}\t{printable(name)}" for i, name in enumerate(names))
    return (
        f"{len(names)} labels; output `i` scores label `i`.\n\n<details>\n<summary>Label list</summary>\n\n"
        f"```text\n{listing}\n```\n\n</details>"
    )


def _recipe(recipe: Mapping[str, Any] | str | None) -> str:
    if recipe is None:
        return "Not recorded with this export."
    if isinstance(recipe, str):
        return printable(recipe)
    return "\n".join(f"- **{printable(key)}**: {printable(value)}" for key, value in recipe.items())
