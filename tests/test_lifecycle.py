"""The acceptance journey of a model (issue: one model lifecycle).

Fine-tune the shipped default model on a user's own label set (four Fashion-MNIST classes under new names, so
both the label set and the normalisation differ from the ImageNet defaults), then use the result through every
door: the in-memory model, ``create_model(variant, checkpoint_path=...)``, ``create_model(<file>)``,
``sadcl predict --checkpoint`` (with and without ``--model``), ``sadcl eval``, ``sadcl export`` then
``create_model(<folder>)``, ``sadcl push`` then ``hf-hub:`` through the loopback Hub, ``timm.create_model``
(``hf-hub:`` and ``local-dir:``) with timm's own transform, ``torch.hub.load`` and ONNX Runtime on the export.
The scores on the same real images must agree within 1e-5 and carry the same label names everywhere.
The same for an authors' checkpoint converted with ``sadcl convert``.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import needs
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import sadcl
from sadcl.cli import main
from sadcl.data.images import load_image
from sadcl.data.mosaic import write_mosaics
from sadcl.metrics import evaluate as compute_metrics
from sadcl.train.options import config_from_options
from sadcl.train.trainer import Trainer
from sadcl.zoo.factory import ModelSourceError
from sadcl.zoo.loading import HeadChangeWarning

ROOT = Path(__file__).resolve().parent.parent
# The module fixture trains a model on real Fashion-MNIST mosaics: slow, and skipped without the data.
pytestmark = [needs.fashion_mnist, pytest.mark.slow]
# The user's own labels: four Fashion-MNIST classes under new names, in a new order.
MINE = {"Dress": "frock", "T-shirt/top": "tee", "Trouser": "pants", "Pullover": "jumper"}
REPO = "me/my-fashion-tagger"
TOKEN = "hf_test_write_token"
TOL = 1e-5


def _write_custom_csv(src_csv: Path, out_csv: Path) -> None:
    with open(src_csv, newline="") as f, open(out_csv, "w", newline="") as g:
        rows = list(csv.DictReader(f))
        w = csv.writer(g)
        w.writerow(["image", "labels"])
        for r in rows:
            w.writerow([r["image"], "|".join(MINE[n] for n in r["labels"].split("|") if n in MINE)])


def _odd_images(folder: Path, sources: list[Path]) -> list[Path]:
    """Real photos as users have them: odd sizes, grayscale, palette, opaque RGBA, JPEG."""
    out = []
    for i, p in enumerate(sources):
        img = Image.open(p).convert("RGB")
        kind = i % 5
        if kind == 0:
            img = img.resize((61, 47), Image.Resampling.BICUBIC)
        elif kind == 1:
            img = img.convert("L")
        elif kind == 2:
            img = img.resize((73, 90)).convert("P")
        elif kind == 3:
            img = img.convert("RGBA")  # fully opaque: timm's convert("RGB") and sadcl's loader agree
        path = folder / f"photo{i}.{'jpg' if kind == 4 else 'png'}"
        img.save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """Fine-tune sadcl_fashion_mosaic for a few steps on the custom label set; keep the in-memory model."""
    tmp = tmp_path_factory.mktemp("journey")
    data = tmp / "data"
    for split, n, seed in (("train", 32, 0), ("test", 16, 1)):
        write_mosaics(data, split, n, seed)
        _write_custom_csv(data / f"{split}.csv", data / f"my_{split}.csv")
    (data / "my_labels.txt").write_text("".join(f"{n}\n" for n in MINE.values()))
    options = dict(
        data=str(data / "my_train.csv"),
        val_data=str(data / "my_test.csv"),
        label_names=str(data / "my_labels.txt"),
        model="sadcl_fashion_mosaic",
        pretrained=True,
        epochs=1,
        batch_size=8,
        num_workers=0,
        output_dir=str(tmp / "run"),
        progress=False,
        log_interval=1,
        lr=1e-4,
        seed=3,
    )
    with pytest.warns(HeadChangeWarning, match="10 labels → 4"):  # asked for: a new label set
        trainer = Trainer(config_from_options(options))
    summary = trainer.fit()
    net = trainer.ema.module if summary["best"]["source"] == "ema" else trainer.model
    photos = _odd_images(tmp, sorted((data / "test").glob("*.png"))[:10])
    net = net.cpu().eval()
    reference = sadcl.predict(net, photos)
    return dict(
        tmp=tmp,
        data=data,
        net=net,
        best=tmp / "run" / "best.safetensors",
        photos=photos,
        reference=reference,
        labels=list(MINE.values()),
    )


def assert_same_scores(results, reference, labels):
    assert len(results) == len(reference)
    for got, want in zip(results, reference):
        assert sorted(got) == sorted(labels)  # the user's label names, not VOC's or Fashion's
        for name in labels:
            assert abs(got[name] - want[name]) <= TOL, (name, got[name], want[name])


def predict_cli(capsys, *args) -> list[dict[str, float]]:
    capsys.readouterr()
    assert main(["predict", *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    return list(out.values())


def test_the_fine_tuned_model_describes_itself(journey):
    net = journey["net"]
    assert net.label_names == journey["labels"]
    assert net.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # the default model's normalisation, not ImageNet's
    header = json.loads(sadcl.zoo.safetensors_io.read_safetensors(journey["best"])[1]["sadcl"])
    assert header["config"]["label_names"] == journey["labels"]
    assert header["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and header["preprocessing"]["crop_mode"] == "squash"
    assert header["variant"] == "sadcl_fashion_mosaic" and header["sadcl_version"] == sadcl.__version__


def test_python_factory_paths_agree(journey):
    ref, labels, best = journey["reference"], journey["labels"], journey["best"]
    assert_same_scores(sadcl.predict(sadcl.create_model(best), journey["photos"]), ref, labels)
    explicit = sadcl.create_model("sadcl_fashion_mosaic", checkpoint_path=best, label_names=labels)
    assert_same_scores(sadcl.predict(explicit, journey["photos"]), ref, labels)
    # Naming the variant without asking for the file's labels is an error naming both, never a silent reset.
    with pytest.raises(ModelSourceError, match=r"records 4 labels \(frock.*sadcl_fashion_mosaic has 10"):
        sadcl.create_model("sadcl_fashion_mosaic", checkpoint_path=best)


def test_cli_predict_and_eval_agree(journey, capsys):
    ref, labels, best, photos = journey["reference"], journey["labels"], journey["best"], journey["photos"]
    paths = [str(p) for p in photos]
    assert_same_scores(predict_cli(capsys, "--checkpoint", str(best), *paths), ref, labels)
    assert_same_scores(predict_cli(capsys, "--model", str(best), *paths), ref, labels)
    capsys.readouterr()
    assert main(["predict", "--model", "sadcl_fashion_mosaic", "--checkpoint", str(best), paths[0]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records 4 labels" in err[0] and "sadcl_fashion_mosaic" in err[0]

    # sadcl eval: the paper's table from the same preprocessing as predict (a wrong mean/std would move mAP).
    data, out = journey["data"], journey["tmp"] / "eval.json"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(best),
                "--data",
                str(data / "my_test.csv"),
                "--num-workers",
                "0",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    scores = torch.tensor(
        [
            [r[n] for n in labels]
            for r in sadcl.predict(journey["net"], sorted(str(p) for p in (data / "test").glob("*.png")))
        ]
    )
    targets = torch.zeros(len(scores), len(labels))
    with open(data / "my_test.csv", newline="") as f:
        for i, row in enumerate(sorted(csv.DictReader(f), key=lambda r: r["image"])):
            for name in filter(None, row["labels"].split("|")):
                targets[i, labels.index(name)] = 1
    assert report["mAP"] == pytest.approx(compute_metrics(scores, targets)["mAP"], abs=1e-3)


def test_timm_preprocessing_is_sadcls(journey):
    """timm's own data config and transform give sadcl's tensors (squash resize, no crop)."""
    net = journey["net"]
    cfg = timm.data.resolve_model_data_config(net)
    assert cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "squash" and cfg["mean"] == (0.5, 0.5, 0.5)
    timm_tf = timm.data.create_transform(**cfg)
    ours = sadcl.create_transform(net)
    for p in journey["photos"]:
        a = timm_tf(Image.open(p).convert("RGB"))
        b = ours(load_image(p))
        assert a.shape == b.shape == (3, 56, 56)
        assert torch.allclose(a, b, atol=1e-6), p.name


@needs.onnx  # the journey ends in ONNX Runtime
def test_export_push_and_load_elsewhere(journey, capsys, hub_uploads, tmp_path):
    ref, labels, best, photos = journey["reference"], journey["labels"], journey["best"], journey["photos"]
    out = tmp_path / "export"
    assert main(["export", str(best), str(out), "--onnx", "--repo-id", REPO]) == 0
    assert_same_scores(sadcl.predict(sadcl.create_model(out), photos), ref, labels)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["label_names"] == labels

    assert main(["push", str(out), REPO, "--token", TOKEN]) == 0
    hub = sadcl.create_model(f"hf-hub:{REPO}")
    assert_same_scores(sadcl.predict(hub, photos), ref, labels)

    # timm, with timm's own preprocessing, from the Hub and from the folder
    for name in (f"hf-hub:{REPO}", f"local-dir:{out}"):
        model = timm.create_model(name, pretrained=True).eval()
        assert model.label_names == labels
        tf = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in photos])
        with torch.no_grad():
            probs = torch.sigmoid(model(x))
        got = [dict(zip(model.label_names, row)) for row in probs.tolist()]
        assert_same_scores(got, ref, labels)

    # ONNX Runtime on the export's model.onnx, fed sadcl's preprocessing
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tf = sadcl.create_transform(hub)
    x = torch.stack([tf(load_image(p)) for p in photos]).numpy()
    logits = session.run(["logits"], {"images": x})[0]
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert_same_scores([dict(zip(labels, row)) for row in probs.tolist()], ref, labels)


def test_torch_hub_loads_the_checkpoint(journey):
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadChangeWarning)  # the file's own labels: nothing re-initialised
        model = torch.hub.load(
            str(ROOT),
            "sadcl_fashion_mosaic",
            source="local",
            checkpoint_path=str(journey["best"]),
            label_names=journey["labels"],
        )
    assert_same_scores(sadcl.predict(model, journey["photos"]), journey["reference"], journey["labels"])


def test_a_converted_authors_checkpoint_takes_every_path(tmp_path, capsys, fake_hub):
    from test_convert import authors_state_dict, training_checkpoint

    torch.manual_seed(5)
    source = sadcl.create_model("sadcl_tiny").eval()
    pth = tmp_path / "authors.pth"
    torch.save(training_checkpoint(authors_state_dict(source)), pth)
    converted = tmp_path / "converted.safetensors"
    assert main(["convert", str(pth), str(converted), "--variant", "sadcl_tiny"]) == 0
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (50 + i, 70, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    photos = [tmp_path / f"img{i}.png" for i in range(4)]
    labels = source.label_names
    ref = sadcl.predict(source, photos)
    assert_same_scores(sadcl.predict(sadcl.create_model(converted), photos), ref, labels)
    assert_same_scores(sadcl.predict(sadcl.create_model("sadcl_tiny", checkpoint_path=converted), photos), ref, labels)
    paths = [str(p) for p in photos]
    assert_same_scores(predict_cli(capsys, "--checkpoint", str(converted), *paths), ref, labels)
    assert_same_scores(
        predict_cli(capsys, "--model", "sadcl_tiny", "--checkpoint", str(converted), *paths), ref, labels
    )
    out = tmp_path / "export"
    assert main(["export", str(converted), str(out)]) == 0
    for name in ("config.json", "model.safetensors"):
        fake_hub.add_file("authors/sadcl-tiny", name, (out / name).read_bytes(), lfs=name.endswith(".safetensors"))
    for model in (
        sadcl.create_model("hf-hub:authors/sadcl-tiny"),
        timm.create_model("hf-hub:authors/sadcl-tiny", pretrained=True),
        timm.create_model(f"local-dir:{out}", pretrained=True),
    ):
        assert_same_scores(sadcl.predict(model, photos), ref, labels)
