"""sadcl.viz: attention overlays, the attention-on-cell check, embedding plots, and their CLI commands."""

from __future__ import annotations

import csv
import sys

import needs
import numpy as np
import pytest
import torch
from PIL import Image

import sadcl
from sadcl import viz
from sadcl.cli import main
from sadcl.data.mosaic import FASHION_LABELS, ITEM, load_fashion_mnist
from sadcl.inference import attention_maps, preprocess
from sadcl.viz import measure
from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import save_safetensors

# save_figure writes at 100 dpi: an attention panel (3 in) is 300 px, an embedding plot (8 x 6.5 in) 800 x 650 px.
# The packaged model measured 0.857 / 0.987 (n=300, seed 0; 0.863 / 0.979 on n=2000); chance is 0.25 / 0.25.
MEAN_SHARE_MIN = 0.7
TOP_CELL_MIN = 0.9


def png_size(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return sadcl.create_model("sadcl_tiny").eval()


@pytest.fixture
def tiny_checkpoint(tiny, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_safetensors(export_state_dict(tiny), path, checkpoint_metadata(tiny))
    return path


@pytest.fixture
def rgb_image(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


class PairDataset(torch.utils.data.Dataset):
    """(preprocessed image, target) pairs with the model's label names, like the package's datasets."""

    def __init__(self, model, targets):
        g = torch.Generator().manual_seed(1)
        size = model.pretrained_cfg["input_size"]
        self.x = torch.randn(len(targets), *size, generator=g)
        self.targets = torch.as_tensor(targets, dtype=torch.float32)
        self.label_names = model.label_names

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


# -- overlay_attention / explain ----------------------------------------------------------------------------
@needs.matplotlib
@pytest.mark.slow
def test_overlay_attention_array_and_dict(tiny, rgb_image, tmp_path):
    maps = attention_maps(tiny, rgb_image)[0]  # [20, h, w]
    fig = viz.overlay_attention(rgb_image, maps[:3], tiny.label_names[:3], scores=[0.9, 0.5, 0.1])
    assert [ax.get_title() for ax in fig.axes] == ["aeroplane 0.90", "bicycle 0.50", "bird 0.10"]
    viz.save_figure(fig, tmp_path / "a.png")
    assert png_size(tmp_path / "a.png") == (900, 300)
    # A dict picks panels by name; 5 panels wrap to 2 rows of 4 (the 3 unused axes are hidden).
    named = dict(zip(tiny.label_names, maps))
    fig = viz.overlay_attention(
        Image.open(rgb_image), named, ["dog", "cat", "person", "car", "bus"], scores={"dog": 0.25}
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == ["dog 0.25", "cat", "person", "car", "bus"] and titles[5:] == ["", "", ""]
    viz.save_figure(fig, tmp_path / "sub" / "b.png")
    assert png_size(tmp_path / "sub" / "b.png") == (1200, 600)


@needs.matplotlib
def test_overlay_upsamples_the_map_to_the_image(tmp_path):
    image = np.zeros((40, 60), np.uint8)  # grayscale arrays are accepted too
    peak = torch.zeros(1, 2, 2)
    peak[0, 1, 0] = 1.0  # all attention on the bottom-left position
    fig = viz.overlay_attention(image, peak, ["x"])
    overlay = fig.axes[0].get_images()[1].get_array()
    assert overlay.shape == (40, 60)
    assert overlay[30:, :30].mean() > 3 * overlay[:20, 30:].mean()  # bottom-left bright, top-right dark


@needs.matplotlib
def test_overlay_bad_input(tiny, rgb_image):
    maps = torch.rand(3, 2, 2)
    with pytest.raises(ValueError, match="2 labels for 3 maps"):
        viz.overlay_attention(rgb_image, maps, ["a", "b"])
    with pytest.raises(ValueError, match=r"no attention map for label\(s\) \['zebra'\]"):
        viz.overlay_attention(rgb_image, {"a": maps[0]}, ["zebra"])
    with pytest.raises(ValueError, match="labels are required"):
        viz.overlay_attention(rgb_image, maps)


@needs.matplotlib
def test_explain_top_k_follows_scores(tiny, rgb_image):
    with torch.no_grad():
        scores = torch.sigmoid(tiny(preprocess(rgb_image, tiny.pretrained_cfg)[None]))[0]
    best = [tiny.label_names[i] for i in scores.argsort(descending=True)[:2]]
    fig = viz.explain(tiny, rgb_image, top_k=2)
    assert [ax.get_title().rsplit(" ", 1)[0] for ax in fig.axes] == best
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['zebra'\].*valid labels: aeroplane, bicycle"):
        viz.explain(tiny, rgb_image, ["dog", "zebra"])


def test_missing_matplotlib_is_a_clear_error(tiny, rgb_image, tmp_path, monkeypatch, capsys, tiny_checkpoint):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is absent
    with pytest.raises(ImportError, match=r"pip install 'sadcl\[viz\]'"):
        viz.overlay_attention(rgb_image, torch.rand(1, 2, 2), ["a"])
    with pytest.raises(viz.MissingDependencyError):
        viz.plot_embeddings(tiny, PairDataset(tiny, np.eye(20)[:2]))
    out = tmp_path / "x.png"
    assert (
        main(["explain", "--model", "sadcl_tiny", "--checkpoint", str(tiny_checkpoint), str(rgb_image), "-o", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("sadcl explain: error:") and "pip install 'sadcl[viz]'" in err and not out.exists()


# -- attention on the item's cell ---------------------------------------------------------------------------
def test_cell_shares_split_attention_exactly():
    uniform3 = torch.full((1, 3, 3), 1 / 9)  # an odd grid: the middle row/column is split in halves
    assert torch.allclose(viz.cell_shares(uniform3), torch.full((1, 4), 0.25))
    one = torch.zeros(4, 4)
    one[3, 1] = 1.0  # a 4x4 grid: position (3, 1) lies in the bottom-left cell (row-major index 2)
    assert viz.cell_shares(one).tolist() == [0.0, 0.0, 1.0, 0.0]
    maps = torch.rand(5, 7, 2, 2)
    maps /= maps.sum((-1, -2), keepdim=True)
    assert torch.allclose(viz.cell_shares(maps), maps.flatten(-2))  # one position per cell: the identity
    assert torch.allclose(
        viz.cell_shares(torch.softmax(torch.randn(6, 5, 3).flatten(1), 1).view(6, 5, 3)).sum(-1), torch.ones(6)
    )


@needs.fashion_mnist
def test_attention_on_cell_maps_positions_to_the_right_cell(monkeypatch):
    """A model whose every query attends to the bright cells must score a share of 1 on the item's cell."""
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny", label_names=list(FASHION_LABELS), img_size=56).eval()

    def forward_attention(x):
        gray = x.mean(1, keepdim=True)
        ink = torch.nn.functional.avg_pool2d(gray - gray.amin((2, 3), keepdim=True), ITEM)  # black → 0
        maps = ink / ink.sum((-1, -2), keepdim=True)  # [B, 1, 2, 2]: mass only on the filled cell
        return None, maps.expand(-1, model.num_classes, -1, -1)

    monkeypatch.setattr(model, "forward_attention", forward_attention)
    res = viz.attention_on_cell(model, n=40, seed=3)
    assert res["mean_share"] == pytest.approx(1.0) and res["top_cell_rate"] == 1.0
    assert res["n"] == 40 and res["chance"] == 0.25 and set(res["per_label"]) <= set(FASHION_LABELS)


@needs.fashion_mnist
def test_single_item_mosaics_hold_one_item():
    images, classes, cells = measure._single_item_mosaics(20, seed=1, split="test", root=None)
    src, src_labels = load_fashion_mnist("test")
    for img, cls, cell in zip(images, classes, cells):
        r, c = divmod(int(cell), 2)
        inside = img[r * ITEM : (r + 1) * ITEM, c * ITEM : (c + 1) * ITEM]
        assert img.sum() == inside.sum() > 0  # nothing outside the item's cell
        assert any((inside == src[i]).all() for i in np.flatnonzero(src_labels == cls))


def test_attention_on_cell_requires_fashion_labels(tiny):
    with pytest.raises(ValueError, match="Fashion-MNIST labels"):
        viz.attention_on_cell(tiny, n=4)


@needs.fashion_mnist
@pytest.mark.slow
def test_packaged_model_attends_to_the_item():
    """The paper's claim, measured: the present label's query looks at the object (chance is 0.25)."""
    model = sadcl.create_model("sadcl_fashion_mosaic", pretrained=True)
    res = viz.attention_on_cell(model, n=300, seed=0)
    assert res["feature_grid"] == (2, 2)
    assert res["mean_share"] > MEAN_SHARE_MIN, res
    assert res["top_cell_rate"] > TOP_CELL_MIN, res


# -- embeddings ---------------------------------------------------------------------------------------------
def test_label_embeddings_keep_positive_labels_only(tiny):
    targets = np.zeros((5, 20), np.float32)
    targets[0, [3, 7]] = 1
    targets[2, 0] = 1
    targets[3, [1, 2, 19]] = 1  # image 1 and 4 have no label
    ds = PairDataset(tiny, targets)
    emb, lab, protos = viz.label_embeddings(tiny, ds, n=10, batch_size=2)
    assert emb.shape == (6, 32) and protos.shape == (20, 32)  # proj_dim of sadcl_tiny
    assert lab.tolist() == [3, 7, 0, 1, 2, 19]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)  # the contrastive space is the unit sphere
    with torch.no_grad():
        h = tiny.forward_features(ds.x[3:4])[0]
        assert np.allclose(emb[3:], torch.nn.functional.normalize(tiny.project(h[[1, 2, 19]]), dim=-1), atol=1e-5)
        first = tiny.forward_features(ds.x[:1])[0, [3, 7]]
    raw, lab_raw, protos_raw = viz.label_embeddings(tiny, ds, n=1, projected=False)
    assert raw.shape == (2, 64) and lab_raw.tolist() == [3, 7]
    assert np.allclose(protos_raw, tiny.prototypes.detach().numpy())
    assert np.allclose(raw, first, atol=1e-5)


def test_label_embeddings_bad_dataset(tiny):
    ds = PairDataset(tiny, np.zeros((2, 20)))
    with pytest.raises(ValueError, match="no positive label"):
        viz.label_embeddings(tiny, ds)
    ds.label_names = list(reversed(tiny.label_names))
    with pytest.raises(ValueError, match="label_names=model.label_names"):
        viz.label_embeddings(tiny, ds)


@needs.sklearn
@pytest.mark.slow
def test_embed_2d_pca_and_tsne():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(50, 2)) * [5.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(6, 2)))[0].T  # a 2-D plane inside 6-D
    pts, extra = plane @ basis + 3.0, rng.normal(size=(4, 2)) @ basis + 3.0
    xy, exy = viz.embed_2d(pts, extra)
    # PCA on planar data keeps every distance, for the extra points too (same transform).
    both, both_xy = np.vstack([pts, extra]), np.vstack([xy, exy])
    d = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    assert np.allclose(d(both), d(both_xy), atol=1e-8)
    assert xy[:, 0].var() > xy[:, 1].var()  # first axis = most variance
    txy, texy = viz.embed_2d(pts[:20], extra, method="tsne")
    assert txy.shape == (20, 2) and texy.shape == (4, 2) and np.isfinite(txy).all()
    with pytest.raises(ValueError, match="'pca' or 'tsne'"):
        viz.embed_2d(pts, method="umap")


@needs.matplotlib
def test_plot_embeddings_writes_a_png(tiny, tmp_path):
    targets = np.eye(20, dtype=np.float32)[[0, 1, 2, 0, 1, 5]]
    fig = viz.plot_embeddings(tiny, PairDataset(tiny, targets), n=6)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["aeroplane", "bicycle", "bird", "bus", "prototype"]
    points, stars = ax.collections
    assert len(points.get_offsets()) == 6 and len(stars.get_offsets()) == 4
    viz.save_figure(fig, tmp_path / "e.png")
    assert png_size(tmp_path / "e.png") == (800, 650)
    fig = viz.plot_embeddings(tiny, PairDataset(tiny, targets), method="tsne", projected=False)
    assert "label-level h" in fig.axes[0].get_title()


# -- the commands -------------------------------------------------------------------------------------------
@needs.matplotlib
def test_explain_command(tiny_checkpoint, rgb_image, tmp_path, capsys):
    out = tmp_path / "explain.png"
    base = ["explain", "--model", "sadcl_tiny", "--checkpoint", str(tiny_checkpoint), str(rgb_image)]
    assert main([*base, "--top-k", "2", "-o", str(out)]) == 0
    assert png_size(out) == (600, 300) and str(out) in capsys.readouterr().out
    assert main([*base, "--label", "dog", "--label", "cat", "--label", "car", "-o", str(out)]) == 0
    assert png_size(out) == (900, 300)
    assert main([*base, "--label", "zebra", "-o", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err
    assert "'zebra'" in err and "valid labels: aeroplane" in err and not (tmp_path / "no.png").exists()


@needs.matplotlib
def test_plot_embeddings_command(tiny_checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [("a.png", "dog|cat"), ("b.png", "person"), ("c.png", "dog")]
    for name, _ in rows:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    with open(tmp_path / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "labels"), *rows])
    out = tmp_path / "emb.png"
    assert (
        main(
            [
                "plot-embeddings",
                "--model",
                "sadcl_tiny",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(tmp_path / "data.csv"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert png_size(out) == (800, 650) and "4 positive labels" in capsys.readouterr().out


@needs.matplotlib
@needs.fashion_mnist
def test_plot_embeddings_command_on_mosaics(tmp_path, capsys):
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_fashion_mosaic")
    ckpt = tmp_path / "fashion.safetensors"
    save_safetensors(export_state_dict(model), ckpt, checkpoint_metadata(model))
    out = tmp_path / "emb.png"
    assert (
        main(
            [
                "plot-embeddings",
                "--model",
                "sadcl_fashion_mosaic",
                "--checkpoint",
                str(ckpt),
                "--mosaics",
                "12",
                "--raw",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert png_size(out) == (800, 650)
    with pytest.raises(SystemExit):  # argparse rejects it before anything runs
        main(["plot-embeddings", "--checkpoint", str(ckpt), "--mosaics", "4", "--method", "umap", "-o", str(out)])
    assert "--method" in capsys.readouterr().err


def test_plot_embeddings_command_mosaics_need_fashion_labels(tiny_checkpoint, tmp_path, capsys):
    assert (
        main(
            [
                "plot-embeddings",
                "--model",
                "sadcl_tiny",
                "--checkpoint",
                str(tiny_checkpoint),
                "--mosaics",
                "4",
                "-o",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    assert "Fashion-MNIST" in capsys.readouterr().err
