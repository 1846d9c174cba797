"""Tests for sadcl.metrics: AP conventions, threshold metrics, top-k, no-positive classes, input errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sadcl import metrics
from sadcl.metrics import (
    NoPositiveClassWarning,
    average_precision,
    evaluate,
    format_table,
    mean_average_precision,
    threshold_metrics,
)


@pytest.fixture(scope="module")
def sklearn_metrics():
    """scikit-learn, the reference implementation (in the `test` extra): the comparisons skip without it."""
    return pytest.importorskip("sklearn.metrics", reason="needs scikit-learn: pip install 'sadcl[test]'")


# --------------------------------------------------------------------------- references written from the definitions


def slow_voc_ap(scores, targets):
    """VOC all-points AP, literally: cumulative TP/FP, monotone envelope, sum over recall changes."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties by index
    tp = fp = 0
    rec, prec = [], []
    num_pos = sum(targets)
    for i in order:
        tp += targets[i] == 1
        fp += targets[i] == 0
        rec.append(tp / num_pos)
        prec.append(tp / max(tp + fp, 1e-12))
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def slow_threshold_metrics(scores, targets, threshold, top_k=None):
    """Per-class / overall counts with explicit loops (top-k by a stable per-row sort)."""
    n, c = scores.shape
    pred = np.zeros((n, c), dtype=bool)
    for i in range(n):
        allowed = range(c) if top_k is None else sorted(range(c), key=lambda j: -scores[i, j])[:top_k]
        for j in allowed:
            pred[i, j] = scores[i, j] > threshold
    ps, rs, fs = [], [], []
    tp_all = pred_all = pos_all = 0
    for j in range(c):
        tp = int(np.sum(pred[:, j] & (targets[:, j] == 1)))
        npred, npos = int(pred[:, j].sum()), int(targets[:, j].sum())
        tp_all, pred_all, pos_all = tp_all + tp, pred_all + npred, pos_all + npos
        if npos == 0:
            continue
        p = tp / npred if tp else 0.0
        r = tp / npos if tp else 0.0
        ps.append(p)
        rs.append(r)
        fs.append(2 * p * r / (p + r) if tp else 0.0)
    cp, cr = np.mean(ps), np.mean(rs)
    op, orc = tp_all / pred_all, tp_all / pos_all
    return dict(
        CP=100 * cp,
        CR=100 * cr,
        CF1=100 * np.mean(fs),
        CF1_harmonic=100 * 2 * cp * cr / (cp + cr),
        OP=100 * op,
        OR=100 * orc,
        OF1=100 * 2 * op * orc / (op + orc),
    )


def random_problem(seed, n=40, c=6, ties=False):
    rng = np.random.default_rng(seed)
    scores = rng.random((n, c))
    if ties:
        scores = np.round(scores, 1)  # few distinct values -> many ties
    targets = (rng.random((n, c)) < 0.35).astype(np.int64)
    targets[0] = 1  # every class has a positive
    return scores, targets


# --------------------------------------------------------------------------- average precision


def test_voc_ap_hand_computed():
    s = [0.9, 0.8, 0.7, 0.6, 0.5]
    y = [1, 0, 0, 1, 1]
    # prec@k = 1, 1/2, 1/3, 1/2, 3/5; envelope at the hits = 1, 3/5, 3/5 -> VOC 2.2/3; raw 1, 1/2, 3/5 -> 2.1/3
    assert average_precision(s, y) == pytest.approx(2.2 / 3)
    assert average_precision(s, y, mode="sklearn") == pytest.approx(2.1 / 3)


def test_ap_ties_hand_computed():
    s = [0.9, 0.5, 0.5, 0.1]
    y = [1, 1, 0, 0]
    # sklearn groups the tie {0.5}: R 0->1/2 at P=1, 1/2->1 at P=2/3; VOC ranks the tie by index (hit first).
    assert average_precision(s, y, mode="sklearn") == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(s, y, mode="voc") == pytest.approx(1.0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_sklearn_mode_matches_sklearn(seed, ties, sklearn_metrics):
    scores, targets = random_problem(seed, ties=ties)
    for c in range(scores.shape[1]):
        ref = sklearn_metrics.average_precision_score(targets[:, c], scores[:, c])
        assert average_precision(scores[:, c], targets[:, c], mode="sklearn") == pytest.approx(ref, abs=1e-12)
    ref_map = 100 * sklearn_metrics.average_precision_score(targets, scores, average="macro")
    assert mean_average_precision(scores, targets, mode="sklearn") == pytest.approx(ref_map, abs=1e-10)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_voc_mode_matches_definition_and_bounds_sklearn(seed, ties):
    scores, targets = random_problem(seed, ties=ties)
    per_class = []
    for c in range(scores.shape[1]):
        voc = average_precision(scores[:, c], targets[:, c])
        assert voc == pytest.approx(slow_voc_ap(scores[:, c].tolist(), targets[:, c].tolist()), abs=1e-12)
        assert voc >= average_precision(scores[:, c], targets[:, c], mode="sklearn") - 1e-12
        per_class.append(voc)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * np.mean(per_class), abs=1e-10)


def test_ap_extremes():
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert average_precision([0.9, 0.8, 0.1], [0, 0, 1]) == pytest.approx(1 / 3)
    # A single positive among identical scores: sklearn sees one threshold with precision 1/3.
    assert average_precision([0.5, 0.5, 0.5], [0, 1, 0], mode="sklearn") == pytest.approx(1 / 3)


def test_class_chunking_does_not_change_results(monkeypatch):
    scores, targets = random_problem(7, n=30, c=9, ties=True)
    full = mean_average_precision(scores, targets)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 30 * 2)  # two classes per chunk
    assert mean_average_precision(scores, targets) == pytest.approx(full, abs=1e-12)


def test_torch_inputs_of_any_dtype():
    scores, targets = random_problem(3)
    ref = mean_average_precision(scores, targets)
    t_scores = torch.tensor(scores, dtype=torch.float32, requires_grad=True)
    assert mean_average_precision(t_scores, torch.tensor(targets, dtype=torch.bool)) == pytest.approx(ref, abs=1e-5)
    assert mean_average_precision(t_scores.bfloat16(), torch.tensor(targets).float()) > 0
    assert mean_average_precision(scores.tolist(), targets.astype(bool)) == pytest.approx(ref)


# --------------------------------------------------------------------------- threshold metrics

# Four images, three classes. At 0.5 (strict): class 0 TP2 FP1; class 1 TP0 FP1 FN2 (0.5 is not > 0.5);
# class 2 TP2. Per-class P = (2/3, 0, 1), R = (1, 0, 1), F1 = (0.8, 0, 1).
HAND_SCORES = np.array([[0.9, 0.8, 0.1], [0.6, 0.2, 0.7], [0.3, 0.4, 0.55], [0.51, 0.5, 0.2]])
HAND_TARGETS = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 1], [0, 1, 0]])


def test_threshold_metrics_hand_computed():
    m = threshold_metrics(HAND_SCORES, HAND_TARGETS)
    expected = dict(CP=500 / 9, CR=200 / 3, CF1=60.0, CF1_harmonic=2000 / 33, OP=200 / 3, OR=200 / 3, OF1=200 / 3)
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v), k
    # The two CF1 conventions differ here (the paper's table has the same kind of gap: 79.8 vs 80.1).
    assert abs(m["CF1"] - m["CF1_harmonic"]) > 0.5


def test_top1_hand_computed():
    # Top-1 keeps c0, c2, c2, c0: class 0 TP1 FP1 FN1; class 1 nothing; class 2 TP2.
    m = threshold_metrics(HAND_SCORES, HAND_TARGETS, top_k=1)
    assert m["CP"] == pytest.approx(50.0)
    assert m["CR"] == pytest.approx(50.0)
    assert m["CF1"] == pytest.approx(50.0)
    assert m["OP"] == pytest.approx(75.0)
    assert m["OR"] == pytest.approx(50.0)
    assert m["OF1"] == pytest.approx(60.0)


def test_threshold_is_strict():
    s = np.array([[0.5, 0.7], [0.2, 0.7]])
    y = np.array([[1, 1], [0, 1]])
    assert threshold_metrics(s, y)["OR"] == pytest.approx(200 / 3)  # the 0.5 positive is missed
    assert threshold_metrics(s, y, threshold=0.49)["OR"] == pytest.approx(100.0)


@pytest.mark.parametrize("seed", range(3))
def test_threshold_metrics_match_sklearn_macro_micro(seed, sklearn_metrics):
    scores, targets = random_problem(seed, n=50, c=5)
    m = threshold_metrics(scores, targets, threshold=0.4)
    pred = (scores > 0.4).astype(int)
    kw = dict(y_true=targets, y_pred=pred, zero_division=0)
    assert m["CP"] == pytest.approx(100 * sklearn_metrics.precision_score(average="macro", **kw))
    assert m["CR"] == pytest.approx(100 * sklearn_metrics.recall_score(average="macro", **kw))
    assert m["CF1"] == pytest.approx(100 * sklearn_metrics.f1_score(average="macro", **kw))
    assert m["OP"] == pytest.approx(100 * sklearn_metrics.precision_score(average="micro", **kw))
    assert m["OR"] == pytest.approx(100 * sklearn_metrics.recall_score(average="micro", **kw))
    assert m["OF1"] == pytest.approx(100 * sklearn_metrics.f1_score(average="micro", **kw))


@pytest.mark.parametrize("top_k", [None, 1, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_threshold_metrics_match_slow_reference(top_k, ties):
    scores, targets = random_problem(11, n=30, c=6, ties=ties)
    fast = threshold_metrics(scores, targets, threshold=0.3, top_k=top_k)
    slow = slow_threshold_metrics(scores, targets, 0.3, top_k)
    for k, v in slow.items():
        assert fast[k] == pytest.approx(v, abs=1e-10), k


def test_top_k_keeps_exactly_k_on_ties_and_large_k_is_a_no_op():
    s = np.full((2, 4), 0.9)
    y = np.ones((2, 4))
    m = threshold_metrics(s, y, top_k=2)
    assert m["OP"] == pytest.approx(100.0)
    assert m["OR"] == pytest.approx(50.0)  # 2 of 4 labels per image, not all four tied ones
    assert m["CR"] == pytest.approx(50.0)  # ties go to the lower class index: classes 0, 1 fully recalled
    assert threshold_metrics(HAND_SCORES, HAND_TARGETS, top_k=3) == threshold_metrics(HAND_SCORES, HAND_TARGETS)


# --------------------------------------------------------------------------- classes without positives


def test_class_without_positive_warns_and_is_excluded():
    scores, targets = random_problem(5, c=4)
    targets[:, 2] = 0
    scores[:, 2] = 0.9  # predicted everywhere: false positives that only the O* metrics see
    keep = [0, 1, 3]
    with pytest.warns(NoPositiveClassWarning, match=r"1 of 4 classes .*'cow'"):
        m = mean_average_precision(scores, targets, label_names=["cat", "dog", "cow", "emu"])
    assert m == pytest.approx(mean_average_precision(scores[:, keep], targets[:, keep]))
    with pytest.warns(NoPositiveClassWarning, match=r"indices 2"):
        t = threshold_metrics(scores, targets)
    ref = threshold_metrics(scores[:, keep], targets[:, keep])
    for k in ("CP", "CR", "CF1", "CF1_harmonic", "OR"):
        assert t[k] == pytest.approx(ref[k]), k
    assert t["OP"] < ref["OP"]  # the false positives on class 2 still count overall


def test_no_positive_anywhere_raises():
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(np.random.rand(3, 2), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no class has a positive"):
        threshold_metrics(np.random.rand(3, 2), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no positive"):
        average_precision([0.1, 0.2], [0, 0])


# --------------------------------------------------------------------------- evaluate / format_table


def test_evaluate_report_and_table():
    scores, targets = random_problem(2, n=30, c=4)
    targets[:, 1] = 0
    names = ["a", "b", "c", "d"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = evaluate(scores, targets, label_names=names)
    assert [w.category for w in caught] == [NoPositiveClassWarning]  # warned once, not once per metric
    with pytest.warns(NoPositiveClassWarning):
        assert r["mAP"] == pytest.approx(mean_average_precision(scores, targets))
        assert r["mAP_sklearn"] == pytest.approx(mean_average_precision(scores, targets, mode="sklearn"))
        top3 = threshold_metrics(scores, targets, top_k=3)
    assert all(r[f"{k}_top3"] == pytest.approx(v) for k, v in top3.items())
    assert r["CF1"] == pytest.approx(threshold_metrics(scores[:, [0, 2, 3]], targets[:, [0, 2, 3]])["CF1"])
    assert (r["num_images"], r["num_classes"], r["num_classes_evaluated"]) == (30, 4, 3)
    assert list(r["per_class_AP"]) == names and math.isnan(r["per_class_AP"]["b"])
    assert r["per_class_AP"]["a"] == pytest.approx(100 * average_precision(scores[:, 0], targets[:, 0]))

    targets[:, 1] = 1
    plain = evaluate(scores, targets)
    assert isinstance(plain["per_class_AP"], list) and len(plain["per_class_AP"]) == 4
    table = format_table(plain)
    assert "Top-3" in table and f"{plain['mAP']:.1f}" in table and f"{plain['OF1_top3']:.1f}" in table
    with pytest.raises(ValueError, match="CF1_top3"):
        format_table({k: v for k, v in plain.items() if k != "CF1_top3"})


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "scores, targets, match",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "shape"),
        (np.zeros(3), np.zeros(3), "2-D"),
        (np.array([[0.1, np.nan]]), np.array([[1, 0]]), "NaN"),
        (np.array([[0.1, 0.2]]), np.array([[1, -1]]), "difficult"),
        (np.array([[0.1, 0.2]]), np.array([[1, 0.5]]), "only 0 and 1"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "no images"),
    ],
)
def test_bad_inputs_raise(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        mean_average_precision(scores, targets)


def test_bad_arguments_raise():
    s, y = HAND_SCORES, HAND_TARGETS
    with pytest.raises(ValueError, match="mode"):
        mean_average_precision(s, y, mode="11point")
    with pytest.raises(ValueError, match="label_names has 2 entries"):
        mean_average_precision(s, y, label_names=["a", "b"])
    with pytest.raises(ValueError, match="top_k"):
        threshold_metrics(s, y, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        threshold_metrics(s, y, threshold=float("nan"))
    with pytest.raises(ValueError, match="1-D"):
        average_precision(s, y)
