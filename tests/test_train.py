"""The fine-tuning loop (sadcl.train): objectives, checkpoints, exact resume, NaN stop, early stopping,
fine-tuning onto a new label set, and `sadcl train` / `sadcl eval` end to end. Tiny model, CPU, seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import write_banded_fashion
from PIL import Image

from sadcl.cli import main
from sadcl.data import MosaicDataset, eval_transform, train_transform
from sadcl.train import checkpoint as ckpt_mod
from sadcl.train import evaluation as evaluation_mod
from sadcl.train.checkpoint import atomic_torch_save, load_training_checkpoint
from sadcl.train.config import TrainConfig
from sadcl.train.data import DataSpec, label_order
from sadcl.train.early_stopping import EarlyStopping
from sadcl.train.ema import ModelEma
from sadcl.train.losses import PrototypeContrastiveLoss
from sadcl.train.models import load_model
from sadcl.train.options import config_from_options, data_specs
from sadcl.train.trainer import NonFiniteLossError, Trainer, train
from sadcl.zoo.loading import HeadChangeWarning
from sadcl.zoo.safetensors_io import read_safetensors

pytestmark = pytest.mark.filterwarnings("ignore::sadcl.metrics.NoPositiveClassWarning")  # 7 val mosaics, 10 classes
SIZE = 32
TINY = dict(hidden_dim=32, ffn_dim=32, proj_dim=16)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from more, and a busy 2-core machine loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """A synthetic Fashion-MNIST in IDX format (as tests/test_mosaic.py): class c items are bright in row band c."""
    return write_banded_fashion(tmp_path_factory.mktemp("fmnist"), 60, 30)


def datasets(root, n_train=16, n_val=7, augment=True):
    tf = train_transform(SIZE) if augment else eval_transform(SIZE)
    return (
        MosaicDataset("train", n_train, 0, transform=tf, root=root),
        MosaicDataset("test", n_val, 1, transform=eval_transform(SIZE), root=root),
    )


def config(out, **kw):
    base = dict(
        output_dir=str(out),
        model="sadcl_tiny",
        model_args=dict(TINY),
        img_size=SIZE,
        epochs=2,
        batch_size=8,
        num_workers=0,
        log_interval=1,
        progress=False,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def read_log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("objective", ["sadcl", "asl"])
def test_one_epoch_writes_checkpoint_weights_and_log(objective, fashion_root, tmp_path):
    train_ds, val_ds = datasets(fashion_root)
    trainer = Trainer(config(tmp_path, objective=objective, epochs=1), train_dataset=train_ds, val_dataset=val_ds)
    head_before = {k: v.clone() for k, v in trainer.model.proj_head.state_dict().items()}
    summary = trainer.fit()

    assert summary["epochs_completed"] == 1 and summary["best"]["epoch"] == 0
    ckpt = load_training_checkpoint(tmp_path)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2
    assert (len(ckpt["banks"]) == 1) == (objective == "sadcl")
    log = read_log(tmp_path)
    steps = [r for r in log if r["event"] == "step"]
    assert len(steps) == 2 and all(r["lr"] > 0 and r["img_per_s"] > 0 for r in steps)
    epoch = next(r for r in log if r["event"] == "epoch")
    assert set(epoch["val"]) == {"raw", "ema"} and 0 <= epoch["val"]["ema"]["mAP"] <= 100
    if objective == "sadcl":
        assert all(r["sample"] > 0 and r["prototype"] > 0 for r in steps)
        assert any(r["event"] == "prototypes" for r in log)
        assert not torch.equal(trainer.model.proj_head.layers[0].weight, head_before["layers.0.weight"])
    else:  # Query2Label baseline: ASL only, the projection head takes no part and stays frozen
        assert all(r["sample"] == 0 and r["prototype"] == 0 and r["loss"] == r["asl"] for r in steps)
        assert_same_state(trainer.model.proj_head.state_dict(), head_before)

    # Publishable weights: the best raw/EMA model with its config, never the memory bank.
    state, meta = read_safetensors(tmp_path / "best.safetensors")
    assert not any("bank" in k for k in state)
    header = json.loads(meta["sadcl"])  # the self-describing header (sadcl.zoo.header)
    assert header["training"]["source"] in ("raw", "ema") and header["config"]["label_names"] == train_ds.label_names
    model = load_model(checkpoint=tmp_path / "best.safetensors")  # variant and labels from the header
    assert model.label_names == train_ds.label_names
    source = trainer.ema.module if summary["best"]["source"] == "ema" else trainer.model
    assert_same_state(model.state_dict(), source.state_dict())


def test_training_lowers_the_loss(fashion_root, tmp_path):
    train_ds, _ = datasets(fashion_root, augment=False)
    cfg = config(
        tmp_path,
        objective="asl",
        gamma_neg=0,
        epochs=6,
        batch_size=4,
        lr=3e-3,
        patience=None,
        model_args=dict(TINY, dropout=0.0),
    )
    summary = train(cfg, train_dataset=train_ds)
    asl = [r["asl"] for r in summary["history"]]  # epoch means (1000 × BCE with γ− = 0)
    assert asl[-1] < 0.9 * asl[0], asl
    assert summary["best"] is None and Path(summary["best_weights"]).is_file()  # no val data: latest EMA


def test_ema_averages_float_state_and_copies_the_rest():
    model = torch.nn.BatchNorm1d(3)
    ema = ModelEma(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(5.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((3,), 0.75 * 1 + 0.25 * 5))
    assert ema.module.num_batches_tracked.item() == 7 and not ema.module.weight.requires_grad


# ----------------------------------------------------------------------------- exact resume
def test_resume_is_bit_exact(fashion_root, tmp_path):
    """Two epochs straight == one epoch, stop, resume, one epoch (dropout and augmentation active)."""
    train_ds, val_ds = datasets(fashion_root)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(config(straight), train_dataset=train_ds, val_dataset=val_ds)
    first = train(config(split, stop_after_epochs=1), train_dataset=train_ds, val_dataset=val_ds)
    assert first["epochs_completed"] == 1
    after_one = load_training_checkpoint(split)

    with pytest.raises(ValueError, match="lr: checkpoint 0.001, now 0.002"):
        Trainer(config(split, resume=str(split / "last.pt"), lr=2e-3), train_dataset=train_ds)
    resumed = TrainConfig.from_checkpoint(split, progress=False)
    assert resumed.resume == str(split / "last.pt") and resumed.output_dir == str(split)
    second = train(resumed, train_dataset=train_ds, val_dataset=val_ds)
    assert second["epochs_completed"] == 2 and len(second["history"]) == 2

    a, b = load_training_checkpoint(straight), load_training_checkpoint(split)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 4
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"], b["ema"])
    assert torch.equal(a["banks"][0], b["banks"][0])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert a["history"][1]["val"] == b["history"][1]["val"]
    # ...and the second epoch did change things (the comparison is not vacuous).
    assert not torch.equal(a["model"]["fc.W"], after_one["model"]["fc.W"])
    assert not torch.equal(a["banks"][0], after_one["banks"][0])
    assert [r["event"] for r in read_log(split)].count("start") == 2  # the log is appended to


@pytest.mark.slow
def test_compiled_forward_trains_like_eager(fashion_root, tmp_path):
    """`compile=True` (torch.compile of the training forward) follows the eager run: the second step's loss
    depends on the first step's gradients, so equal losses mean equal forward and backward."""
    train_ds, _ = datasets(fashion_root, augment=False)
    no_dropout = dict(TINY, dropout=0.0)  # compiled dropout draws other random numbers than eager
    train(config(tmp_path / "eager", epochs=1, model_args=no_dropout), train_dataset=train_ds)
    trainer = Trainer(
        config(tmp_path / "compiled", epochs=1, model_args=no_dropout, compile=True), train_dataset=train_ds
    )
    assert isinstance(trainer.forward_module, torch._dynamo.eval_frame.OptimizedModule)
    trainer.fit()
    losses = {k: [r["loss"] for r in read_log(tmp_path / k) if r["event"] == "step"] for k in ("eager", "compiled")}
    assert len(losses["eager"]) == 2 and np.allclose(losses["eager"], losses["compiled"], rtol=1e-4, atol=0)
    # The checkpoint holds the plain model, not the compiled wrapper.
    eager, compiled = (load_training_checkpoint(tmp_path / k)["model"] for k in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()


# ----------------------------------------------------------------------------- failures
@pytest.mark.parametrize("bad_call,where", [(3, "epoch 1, step 1"), (0, "epoch 0, step 0")])
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(bad_call, where, fashion_root, tmp_path, monkeypatch):
    calls = []
    real = PrototypeContrastiveLoss.forward

    def poisoned(self, *args):
        calls.append(1)
        out = real(self, *args)
        return out * float("nan") if len(calls) > bad_call else out

    monkeypatch.setattr(PrototypeContrastiveLoss, "forward", poisoned)
    train_ds, val_ds = datasets(fashion_root)
    # log_interval 50 > steps per epoch: finiteness is read back only at the end of the epoch.
    trainer = Trainer(config(tmp_path, log_interval=50), train_dataset=train_ds, val_dataset=val_ds)
    with pytest.raises(NonFiniteLossError, match=where) as err:
        trainer.fit()
    assert "prototype" in str(err.value) and "asl" not in str(err.value).split("term(s)")[1].split("became")[0]
    assert read_log(tmp_path)[-1]["event"] == "nonfinite"
    if bad_call == 0:
        assert "no checkpoint had been written yet" in str(err.value)
        assert not (tmp_path / "last.pt").exists()
    else:
        assert "last good checkpoint" in str(err.value)
        kept = load_training_checkpoint(tmp_path)
        assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_atomic_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)
    good = path.read_bytes()
    real_save = torch.save

    def crash(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(10)  # a half-written file, then the "crash"
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_trainer_checkpoint_failure_keeps_previous_epoch(fashion_root, tmp_path, monkeypatch):
    train_ds, val_ds = datasets(fashion_root)
    real_save, calls = torch.save, []

    def fail_second(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", fail_second)
    with pytest.raises(RuntimeError, match="could not write .*last.pt.*disk full"):
        train(config(tmp_path), train_dataset=train_ds, val_dataset=val_ds)
    assert load_training_checkpoint(tmp_path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "config.json", "last.pt", "log.jsonl"]


def test_resume_refuses_other_files(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="not a readable training checkpoint"):
        load_training_checkpoint(tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="not a sadcl training checkpoint"):
        load_training_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_training_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- early stopping
def test_early_stopping_follows_the_authors_rule():
    stop = EarlyStopping(patience=2)
    raw = [10.0, 20.0, 15.0, 15.0, 15.0, 15.0]
    ema = [5.0, 18.0, 19.0, 19.5, 19.8, 19.0]
    decisions = []
    for e, (r, m) in enumerate(zip(raw, ema)):
        stop.update(e, r, m)
        decisions.append(stop.should_stop(e, m))
    # Best overall is raw 20 at epoch 1. Epoch 4 is past the patience but its EMA is a new EMA best: go on.
    # Epoch 5: 5 − 1 > 2 and EMA 19.0 < 19.8: stop.
    assert decisions == [False, False, False, False, False, True]
    assert (stop.best, stop.best_epoch, stop.best_source) == (20.0, 1, "raw")
    assert (stop.best_ema, stop.best_ema_epoch) == (19.8, 4)

    never = EarlyStopping(patience=None)
    for e in range(20):
        never.update(e, 1.0, 1.0)
        assert not never.should_stop(e, 0.0)
    tie = EarlyStopping()
    assert tie.update(0, 5.0, 5.0) == "ema" and tie.update(1, 6.0, 1.0) == "raw" and tie.update(2, 1.0, 1.0) is None


@pytest.mark.slow
def test_trainer_stops_early_and_exports_the_best(fashion_root, tmp_path, monkeypatch):
    """The trainer wiring, with scripted validation results: (raw, EMA) mAP per epoch as in the rule's test."""
    script = iter([10.0, 5.0, 20.0, 18.0, 15.0, 19.0, 15.0, 19.5, 15.0, 19.8, 15.0, 19.0])  # raw, ema, raw, …

    def scripted_metrics(scores, targets, **kwargs):
        assert scores.shape == (7, 10) and targets.shape == (7, 10)
        value = next(script)
        return {key: value for key in evaluation_mod.LOGGED_METRICS} | {"num_images": len(scores)}

    monkeypatch.setattr(evaluation_mod, "compute_metrics", scripted_metrics)
    train_ds, val_ds = datasets(fashion_root)
    summary = train(config(tmp_path, epochs=8, patience=2), train_dataset=train_ds, val_dataset=val_ds)
    assert summary["stopped_early"] and summary["epochs_completed"] == 6
    assert summary["best"] == {"mAP": 20.0, "epoch": 1, "source": "raw"}
    assert [r["epoch"] for r in read_log(tmp_path) if r["event"] == "early_stop"] == [5]
    _, meta = read_safetensors(tmp_path / "best.safetensors")
    assert json.loads(meta["sadcl"])["training"] == {
        "epoch": 1,
        "source": "raw",
        "objective": "sadcl",
        "mAP": 20.0,
        "CF1": 20.0,
        "OF1": 20.0,
        "num_images": 7,
    }


# ----------------------------------------------------------------------------- fine-tuning onto new labels
def test_finetune_from_checkpoint_with_a_different_label_set(fashion_root, tmp_path):
    train_ds, val_ds = datasets(fashion_root)
    train(config(tmp_path / "base", epochs=1), train_dataset=train_ds, val_dataset=val_ds)
    base, _ = read_safetensors(tmp_path / "base" / "best.safetensors")

    # Three new labels (the first three Fashion classes under other names).
    new_train, new_val = datasets(fashion_root)
    for ds in (new_train, new_val):
        ds.label_names = ["top", "trouser", "pullover"]
        ds.targets = ds.targets[:, :3].clone()
    cfg = config(tmp_path / "ft", epochs=1, checkpoint=str(tmp_path / "base" / "best.safetensors"))
    with pytest.warns(HeadChangeWarning, match="10 labels → 3"):
        trainer = Trainer(cfg, train_dataset=new_train, val_dataset=new_val)
    start = trainer.model.state_dict()
    label_specific = {"query_embed.weight", "fc.W", "fc.b", "prototypes"}
    for k, v in base.items():
        if k in label_specific:
            assert start[k].shape[1 if k.startswith("fc.") else 0] == 3  # re-initialised for 3 labels
        else:
            assert torch.equal(start[k], v), k  # everything else starts from the checkpoint
    trainer.fit()
    tuned = load_model(checkpoint=tmp_path / "ft" / "best.safetensors")
    assert tuned.label_names == ["top", "trouser", "pullover"] and tuned.config["hidden_dim"] == TINY["hidden_dim"]


# ----------------------------------------------------------------------------- CLI
def write_csv_dataset(folder: Path, n: int, seed: int, name: str) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        labels = [c for c in ("cat", "dog", "car") if rng.random() < 0.5] or ["cat"]
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{name}_{i}.png")
        rows.append([f"img/{name}_{i}.png", "|".join(labels)])
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "labels"], *rows])
    return path


@pytest.mark.slow
def test_cli_train_resume_and_eval(tmp_path, capsys):
    train_csv = write_csv_dataset(tmp_path, 8, 0, "train")
    val_csv = write_csv_dataset(tmp_path, 5, 1, "val")
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(train_csv),
        "--val-data",
        str(val_csv),
        "--model",
        "sadcl_tiny",
        "--model-arg",
        "hidden_dim=32",
        "--model-arg",
        "ffn_dim=32",
        "--model-arg",
        "proj_dim=16",
        "--img-size",
        str(SIZE),
        "--epochs",
        "2",
        "--stop-after-epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    assert "epoch 0" in capsys.readouterr().out
    assert load_training_checkpoint(out)["epoch"] == 1
    assert main(["train", "--resume", str(out), "--num-workers", "0", "--no-progress"]) == 0
    assert load_training_checkpoint(out)["epoch"] == 2
    assert main(["train", "--resume", str(out), "--lr", "1"]) == 2
    assert "cannot change on resume: --lr" in capsys.readouterr().err

    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "best.safetensors"),
                "--data",
                str(val_csv),
                "--num-workers",
                "0",
                "--output",
                str(report),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "mAP" in printed and "Top-3" in printed
    results = json.loads(report.read_text())
    assert results["num_images"] == 5 and set(results["per_class_AP"]) == {"car", "cat", "dog"}

    # A label the model does not know is an error naming it.
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("image,labels\nimg/val_0.png,cat|zebra\n")
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "best.safetensors"),
                "--data",
                str(bad_csv),
                "--num-workers",
                "0",
                "--output",
                str(report),
            ]
        )
        == 2
    )
    assert "zebra" in capsys.readouterr().err


def test_options_to_config_and_clear_errors(tmp_path):
    cfg = config_from_options(
        {"data": "a.csv", "val_data": "b.csv", "lr": 1e-4, "model_args": ["dropout=0"], "patience": None}
    )
    assert cfg.data == DataSpec("a.csv") and cfg.val_data.path == "b.csv" and cfg.lr == 1e-4
    assert cfg.model_args == {"dropout": 0} and cfg.patience is None and cfg.epochs == 80  # recipe defaults
    assert cfg.augment == "sadcl" and TrainConfig(objective="asl").augment == "baseline"
    voc = data_specs({"data": "VOC2012", "val_data": "VOC2007", "data_format": "voc"})
    assert (voc["data"].split, voc["val_data"].split) == ("trainval", "test")
    for options, needle in [
        ({"images": "img"}, "--images was given without --data"),
        ({"data": "x.json", "data_format": "coco"}, "needs the COCO image folder"),
        ({"data": "x.csv", "model_args": ["dropout"]}, "KEY=VALUE"),
        ({"data": "x.csv", "model_args": ["depth=3"]}, "'depth' is not a SADCL constructor keyword"),
        ({"data": "x.csv", "objective": "simclr"}, "objective must be"),
        ({"lr": 1e-3}, "no training data"),
    ]:
        with pytest.raises(ValueError, match=needle):
            config_from_options(options)


def test_label_order_between_data_and_model():
    assert label_order(["a", "b"], ["a", "b"], "data") is None
    assert label_order(["b", "c", "a"], ["a", "b", "c"], "data") == [1, 2, 0]  # dataset column i ← model output
    with pytest.raises(ValueError, match=r"model lacks: \['zebra'\]; model labels absent from the data: \['b'\]"):
        label_order(["a", "zebra"], ["a", "b"], "val.csv")
