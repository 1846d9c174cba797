"""Multi-label classification metrics: mAP, CP/CR/CF1/OP/OR/OF1 and their top-k variants.

Conventions (REFERENCE.md d.4, ANCHORS.md Part 2 (b)):

* ``mode="voc"`` AP is the authors' (SADCL / Query2Label / SSGRL) VOC all-points interpolated AP: precision
  is replaced by its monotone envelope before summing over recall changes. ``mode="sklearn"`` is the
  non-interpolated AP of scikit-learn's ``average_precision_score`` (tied scores grouped into one threshold).
  VOC AP is never lower than sklearn AP on the same scores. mAP is ``100 x`` the mean over classes.
* Threshold metrics predict a label when ``score > threshold`` (strict, as SADCL/ASL). Per-class precision and
  recall are 0 when TP = 0. ``CF1`` is the authors' mean of per-class F1; ``CF1_harmonic`` is
  ``2 CP CR / (CP + CR)`` (ML-GCN / C-Tran). ``top_k`` keeps only each image's k highest scores (exactly k,
  ties broken by the lower class index), which must still pass the threshold.
* Classes with no positive target have no AP. They are excluded, with a :class:`NoPositiveClassWarning`,
  from mAP and from the class-averaged CP/CR/CF1; the overall OP/OR/OF1 still count their predictions.
  (The authors' code returns NaN for the whole mAP instead.)
* Under tied scores VOC AP depends on the ranking order; ties are ranked by image index (stable sort), so
  results are deterministic, whereas the authors' unstable argsort is arbitrary. Evaluate in fp32 or better.

Inputs may be numpy arrays, torch tensors (any device / dtype) or nested lists; all maths is float64 numpy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "NoPositiveClassWarning",
    "average_precision",
    "mean_average_precision",
    "threshold_metrics",
    "evaluate",
    "format_table",
]

AP_MODES = ("voc", "sklearn")
THRESHOLD_KEYS = ("CP", "CR", "CF1", "CF1_harmonic", "OP", "OR", "OF1")
# Upper bound on N x classes elements per vectorised AP chunk (~32 MiB per float64 array).
_CHUNK_ELEMENTS = 1 << 22
_MAX_NAMES_IN_WARNING = 20


class NoPositiveClassWarning(UserWarning):
    """Some classes have no positive target, so they are left out of the class-averaged metrics."""


# --------------------------------------------------------------------------- input checks


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Float64 numpy copy of a numpy array, torch tensor or nested list."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        # bf16/half/bool tensors have no (or a lossy) numpy view: widen in torch first.
        x = x.double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} must be numeric (numpy array, torch tensor or list), got {type(x).__name__}: {e}"
        ) from e


def _check_inputs(scores: Any, targets: Any, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores, "scores")
    t = _to_numpy(targets, "targets")
    layout = "[num_images]" if ndim == 1 else "[num_images, num_classes]"
    if s.ndim != ndim or t.ndim != ndim:
        raise ValueError(f"scores and targets must both be {ndim}-D {layout}, got shapes {s.shape} and {t.shape}")
    if s.shape != t.shape:
        raise ValueError(f"scores has shape {s.shape} but targets has shape {t.shape}; they must match {layout}")
    if s.shape[0] == 0:
        raise ValueError("scores and targets contain no images (first dimension is 0)")
    if ndim == 2 and s.shape[1] == 0:
        raise ValueError("scores and targets contain no classes (second dimension is 0)")
    if np.isnan(s).any():
        bad = np.argwhere(np.isnan(s))[0].tolist()
        raise ValueError(
            f"scores contain {int(np.isnan(s).sum())} NaN value(s) (first at index {bad}); "
            "check the model outputs (e.g. a diverged fp16 run) before evaluating"
        )
    bad_t = (t != 0) & (t != 1)  # also catches NaN targets
    if bad_t.any():
        values = np.unique(t[bad_t])[:5].tolist()
        raise ValueError(
            f"targets must contain only 0 and 1, found {values}; map other codes first "
            "(e.g. VOC-style -1 / 0 'difficult' labels to 0 or 1) before evaluating"
        )
    return s, t


def _check_mode(mode: str) -> None:
    if mode not in AP_MODES:
        raise ValueError(f"unknown AP mode {mode!r}; use one of {AP_MODES}")


def _check_label_names(label_names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if label_names is None:
        return None
    names = list(label_names)
    if len(names) != num_classes:
        raise ValueError(f"label_names has {len(names)} entries but scores have {num_classes} classes")
    return names


def _positive_classes(targets: np.ndarray, label_names: list[str] | None, what: str, warn: bool = True) -> np.ndarray:
    """Mask of classes with at least one positive; warn about (or refuse) the others."""
    has_pos = targets.sum(axis=0) > 0
    if not has_pos.any():
        raise ValueError(
            f"no class has a positive target among the {targets.shape[0]} images, so {what} is undefined; "
            "check that the label matrix was loaded correctly (it is all zeros)"
        )
    missing = np.flatnonzero(~has_pos)
    if warn and missing.size:
        shown = missing[:_MAX_NAMES_IN_WARNING]
        names = [repr(label_names[i]) for i in shown] if label_names else [str(i) for i in shown]
        more = f", ... ({missing.size - shown.size} more)" if missing.size > shown.size else ""
        kind = "" if label_names else "indices "
        warnings.warn(
            f"{missing.size} of {targets.shape[1]} classes have no positive target and are excluded from "
            f"{what}: class {kind}{', '.join(names)}{more}",
            NoPositiveClassWarning,
            stacklevel=3,
        )
    return has_pos


# --------------------------------------------------------------------------- average precision


def _ap_columns(scores: np.ndarray, targets: np.ndarray, mode: str) -> np.ndarray:
    """AP of every column of ``[N, c]`` arrays (NaN where a column has no positive), vectorised over columns."""
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")  # descending, ties by image index
    s = np.take_along_axis(scores, order, axis=0)
    y = np.take_along_axis(targets, order, axis=0)
    precision = np.cumsum(y, axis=0) / np.arange(1, n + 1, dtype=np.float64)[:, None]  # prec@k
    if mode == "voc":
        # Monotone envelope: best precision at this rank or any deeper one.
        precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
    else:
        # Tied scores form one threshold: every rank takes the precision at the end of its tie group.
        is_end = np.ones(s.shape, dtype=bool)
        is_end[:-1] = s[:-1] != s[1:]
        end = np.where(is_end, np.arange(n)[:, None], n)
        end = np.minimum.accumulate(end[::-1], axis=0)[::-1]  # next group end at or below each rank
        precision = np.take_along_axis(precision, end, axis=0)
    # Recall rises by 1/P at each positive, so AP = sum over positive ranks of precision / P.
    num_pos = y.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * y).sum(axis=0) / num_pos
    ap[num_pos == 0] = np.nan
    return ap


def _per_class_ap(scores: np.ndarray, targets: np.ndarray, mode: str) -> np.ndarray:
    """``[C]`` AP in [0, 1]; chunks over classes bound the memory for long-tail label sets (VG-500)."""
    n, c = scores.shape
    step = max(1, _CHUNK_ELEMENTS // n)
    return np.concatenate(
        [_ap_columns(scores[:, i : i + step], targets[:, i : i + step], mode) for i in range(0, c, step)]
    )


def average_precision(scores: Any, targets: Any, mode: str = "voc") -> float:
    """AP in [0, 1] of one class: ``scores [N]`` ranked against binary ``targets [N]``.

    ``mode="voc"``: VOC all-points interpolated AP (the authors' ``voc_ap``); ``mode="sklearn"``: scikit-learn's
    non-interpolated ``average_precision_score``. Raises ValueError when there is no positive target.
    """
    _check_mode(mode)
    s, t = _check_inputs(scores, targets, ndim=1)
    if not t.any():
        raise ValueError(f"AP is undefined: targets have no positive among the {t.size} images")
    return float(_ap_columns(s[:, None], t[:, None], mode)[0])


def mean_average_precision(
    scores: Any, targets: Any, mode: str = "voc", *, label_names: Sequence[str] | None = None
) -> float:
    """mAP in percent: ``100 x`` mean over classes of the AP of ``scores [N, C]`` against ``targets [N, C]``.

    Classes without a positive target are excluded with a :class:`NoPositiveClassWarning` that names them
    (by ``label_names`` when given); ValueError if no class has a positive.
    """
    _check_mode(mode)
    s, t = _check_inputs(scores, targets, ndim=2)
    names = _check_label_names(label_names, s.shape[1])
    keep = _positive_classes(t, names, "mAP")
    return 100.0 * float(_per_class_ap(s[:, keep], t[:, keep], mode).mean())


# --------------------------------------------------------------------------- threshold metrics


def _threshold_metrics(
    s: np.ndarray, t: np.ndarray, keep: np.ndarray, threshold: float, top_k: int | None
) -> dict[str, float]:
    pred = s > threshold
    if top_k is not None:
        # Exactly k labels per image survive (stable sort: a tie at the k-th score goes to the lower index).
        top = np.argsort(-s, axis=1, kind="stable")[:, :top_k]
        in_top = np.zeros_like(pred)
        np.put_along_axis(in_top, top, True, axis=1)
        pred &= in_top
    pos = t > 0
    tp = (pred & pos).sum(axis=0).astype(np.float64)
    n_pred = pred.sum(axis=0).astype(np.float64)
    n_pos = pos.sum(axis=0).astype(np.float64)
    # Per-class P, R, F1 are 0 when TP = 0 (SADCL/ASL convention), which also avoids 0/0.
    hit = tp > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 only where TP = 0, masked below
        p_c = np.where(hit, tp / n_pred, 0.0)
        r_c = np.where(hit, tp / n_pos, 0.0)
        f_c = np.where(hit, 2 * tp / (n_pred + n_pos), 0.0)  # = 2 P R / (P + R)
    cp, cr, cf1 = (float(v[keep].mean()) for v in (p_c, r_c, f_c))
    tp_all, pred_all, pos_all = tp.sum(), n_pred.sum(), n_pos.sum()
    op = tp_all / pred_all if tp_all > 0 else 0.0
    orc = tp_all / pos_all if tp_all > 0 else 0.0

    def hmean(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b > 0 else 0.0

    values = dict(CP=cp, CR=cr, CF1=cf1, CF1_harmonic=hmean(cp, cr), OP=op, OR=orc, OF1=hmean(op, orc))
    return {k: 100.0 * float(v) for k, v in values.items()}


def _check_threshold_args(threshold: float, top_k: int | None) -> None:
    if not isinstance(threshold, (int, float, np.floating, np.integer)) or isinstance(threshold, bool):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive integer, got {top_k!r}")


def threshold_metrics(
    scores: Any,
    targets: Any,
    threshold: float = 0.5,
    top_k: int | None = None,
    *,
    label_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """CP, CR, CF1, CF1_harmonic, OP, OR, OF1 in percent for predictions ``scores > threshold``.

    ``CF1`` is the mean of per-class F1 (the authors' convention), ``CF1_harmonic`` is ``2 CP CR / (CP + CR)``.
    With ``top_k`` only each image's k highest scores may be predicted. CP/CR/CF1 average over the classes with
    at least one positive target (the others are named in a :class:`NoPositiveClassWarning`); OP/OR/OF1 pool
    all classes, so false positives on such classes still lower OP.
    """
    _check_threshold_args(threshold, top_k)
    s, t = _check_inputs(scores, targets, ndim=2)
    names = _check_label_names(label_names, s.shape[1])
    keep = _positive_classes(t, names, "CP/CR/CF1")
    return _threshold_metrics(s, t, keep, float(threshold), top_k)


# --------------------------------------------------------------------------- report


def evaluate(
    scores: Any, targets: Any, *, threshold: float = 0.5, label_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every metric of the paper's tables for ``scores [N, C]`` (probabilities) against ``targets [N, C]``.

    Returns ``mAP`` (VOC, %), ``mAP_sklearn`` (%), the :func:`threshold_metrics` keys, the same keys for the
    top-3 protocol with a ``_top3`` suffix, ``threshold``, ``num_images``, ``num_classes``,
    ``num_classes_evaluated`` and ``per_class_AP`` (VOC AP in %, a dict keyed by label name when ``label_names``
    is given, else a list; NaN for classes without a positive target, which are warned about once).
    """
    _check_threshold_args(threshold, None)
    s, t = _check_inputs(scores, targets, ndim=2)
    names = _check_label_names(label_names, s.shape[1])
    keep = _positive_classes(t, names, "mAP and CP/CR/CF1")
    ap = np.full(s.shape[1], np.nan)
    ap[keep] = 100.0 * _per_class_ap(s[:, keep], t[:, keep], "voc")
    ap_sk = 100.0 * _per_class_ap(s[:, keep], t[:, keep], "sklearn")
    results: dict[str, Any] = {"mAP": float(ap[keep].mean()), "mAP_sklearn": float(ap_sk.mean())}
    results.update(_threshold_metrics(s, t, keep, float(threshold), None))
    top3 = _threshold_metrics(s, t, keep, float(threshold), 3)
    results.update({f"{k}_top3": v for k, v in top3.items()})
    per_class: dict[str, float] | list[float] = [float(v) for v in ap]
    if names is not None:
        per_class = dict(zip(names, per_class))
    results.update(
        threshold=float(threshold),
        num_images=int(s.shape[0]),
        num_classes=int(s.shape[1]),
        num_classes_evaluated=int(keep.sum()),
        per_class_AP=per_class,
    )
    return results


def format_table(results: dict[str, Any]) -> str:
    """The paper's table row: ``mAP | CP CR CF1 OP OR OF1 | top-3 CP CR CF1 OP OR OF1``, one decimal."""
    cols = ("CP", "CR", "CF1", "OP", "OR", "OF1")
    keys = ["mAP", *cols, *(f"{c}_top3" for c in cols)]
    missing = [k for k in keys if k not in results]
    if missing:
        raise ValueError(f"results lack {missing}; pass the dict returned by sadcl.metrics.evaluate()")
    w = 6
    block = "".join(f"{c:>{w}}" for c in cols)
    span = len(block)
    lines = [
        f"{'':>{w}} |{'All':^{span}} |{'Top-3':^{span}}",
        f"{'mAP':>{w}} |{block} |{block}",
        f"{results['mAP']:>{w}.1f} |"
        + "".join(f"{results[c]:>{w}.1f}" for c in cols)
        + " |"
        + "".join(f"{results[c + '_top3']:>{w}.1f}" for c in cols),
    ]
    if all(k in results for k in ("threshold", "num_images", "num_classes_evaluated", "num_classes")):
        lines.append(
            f"VOC mAP; score > {results['threshold']:g}; {results['num_images']} images; "
            f"{results['num_classes_evaluated']} of {results['num_classes']} classes evaluated"
        )
    return "\n".join(line.rstrip() for line in lines)
