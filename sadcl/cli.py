"""The ``sadcl`` command: one thin sub-command per verb, each calling the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ._text import details_of, one_line, printable

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register a sub-command: its help, a function adding its arguments, and the function running it."""

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (arguments, run, help)
        return run

    return wrap


# -- list / info ------------------------------------------------------------------------------------------
@command(
    "list",
    "list the variants and which have published weights",
    lambda p: p.add_argument("--json", action="store_true", help="machine-readable output"),
)
def cmd_list(args: argparse.Namespace) -> int:
    from .zoo import VARIANTS, list_models, list_pretrained

    pretrained = set(list_pretrained())
    rows = [
        dict(name=n, dataset=VARIANTS[n].dataset, img_size=VARIANTS[n].img_size, weights=n in pretrained)
        for n in list_models()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<24}{'dataset':<26}{'size':>6}  weights")
    for r in rows:
        print(f"{r['name']:<24}{r['dataset']:<26}{r['img_size']:>6}  {'yes' if r['weights'] else 'none published'}")
    return 0


@command("info", "print a variant's metadata as JSON", lambda p: p.add_argument("name"))
def cmd_info(args: argparse.Namespace) -> int:
    from .zoo import pretrained_cfg_for
    from .zoo.variants import check_name

    check_name(args.name)
    print(json.dumps(pretrained_cfg_for(args.name), indent=2))
    return 0


# -- predict ----------------------------------------------------------------------------------------------
def _probability(text: str) -> float:
    """argparse type: a finite number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text!r}")
    return value


def _whole_number(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _whole_number(1)


def _model_source_args(p: argparse.ArgumentParser) -> None:
    """--model / --checkpoint, with one meaning in every command (sadcl.zoo.factory.model_from_args)."""
    p.add_argument(
        "--model",
        metavar="SOURCE",
        help="variant name (published weights), .safetensors file, export folder, local-dir:PATH or "
        "hf-hub:ORG/NAME[@REV] (default: the file given with --checkpoint, else sadcl_fashion_mosaic)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a .safetensors file written by sadcl: it records its architecture, labels and preprocessing",
    )


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "images", nargs="*", help="image files, folders or http(s):// URLs (fetched with a deadline and a 50 MiB limit)"
    )
    p.add_argument(
        "--files-from",
        metavar="LIST",
        help="also the images named in the file LIST, one path, folder or URL per line (- : standard input), read "
        "as they are needed; after the images given as arguments",
    )
    p.add_argument(
        "--null",
        action="store_true",
        help="the --files-from list separates names with NUL bytes, as find -print0 writes them (names may then "
        "hold line breaks)",
    )
    _model_source_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=_probability, help="keep labels scoring above this probability")
    g.add_argument("--top-k", type=_positive_int, help="keep the k best labels per image")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch (per process under torchrun)")
    p.add_argument(
        "--device", help="cpu, cuda, cuda:1 … (default: cpu; under torchrun cuda:LOCAL_RANK if CUDA is there)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object {image: {label: score}} (a skipped image: null; a NaN score: null)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="go on past unreadable images, name each on stderr and exit 1 (default: stop at the first)",
    )
    p.add_argument("--recursive", action="store_true", help="read the images of sub-folders too (sorted, depth first)")
    p.add_argument(
        "--workers",
        type=_whole_number(0),
        help="processes decoding images while the model scores (default: on a GPU all cores but one, at most 16; on "
        "a CPU the cores the model's threads leave free, at most 4, else decoding in place until it takes longer "
        "than scoring; shared by the processes of a node under torchrun; 0: always in place)",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write one record per image to FILE as each batch is scored: .jsonl (JSON Lines) or .csv",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted job that wrote --output (same images, model, --threshold and --top-k: checked "
        "against FILE.job.json): skip the images it holds (no file yet: start one)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (shown on a terminal, with images/s and ETA)",
    )


@command("predict", "per-label scores for images, streamed to stdout or to --output FILE (resumable)", _predict_args)
def cmd_predict(args: argparse.Namespace) -> int:
    from .tagging.job import JobOptions, run  # sadcl.tagging: streaming, output files, resume, torchrun

    return run(JobOptions(**{k: v for k, v in vars(args).items() if k != "command"}))


# -- train / eval -----------------------------------------------------------------------------------------
_LAYOUTS = ("coco2014", "voc2007", "voc2012", "nuswide", "vg500")  # sadcl.data.layouts.LAYOUTS (startup stays light)
_DATA_FORMATS = ("csv", "coco", "voc", "folder", *_LAYOUTS)  # sadcl.train.data.DATA_FORMATS


def _data_args(p: argparse.ArgumentParser, default: Callable[[object], object], training: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        "--data-root",
        default=default(None),
        metavar="PATH",
        help="CSV file | COCO instances JSON | VOC root | labels file | the data root of a paper dataset "
        f"({', '.join(_LAYOUTS)}; see --data-format)",
    )
    g.add_argument(
        "--images",
        default=default(None),
        metavar="DIR",
        help="image folder (coco, folder); root of relative paths (csv; default: the CSV's folder)",
    )
    if training:
        g.add_argument("--val-data", default=default(None), metavar="PATH", help="validation data, same format")
        g.add_argument("--val-images", default=default(None), metavar="DIR")
        g.add_argument(
            "--val-split",
            default=default(None),
            help="split of the validation data (default: voc test, paper datasets val)",
        )
    g.add_argument("--data-format", choices=_DATA_FORMATS, default=default("csv"), help="(default: csv)")
    g.add_argument(
        "--split",
        default=default(None),
        help=f"VOC split (default: {'trainval' if training else 'test'}); train or val for the paper datasets "
        f"(default: {'train' if training else 'val'})",
    )
    g.add_argument("--voc-year", default=default("2007"), help="VOC year (default: 2007)")
    if training:  # evaluation data always takes the model's label order
        g.add_argument(
            "--label-names",
            default=default(None),
            metavar="FILE",
            help="label-name file fixing the label order (csv, folder)",
        )
    g.add_argument("--skip-bad", action="store_true", default=default(False), help="drop unreadable images")


def _train_args(p: argparse.ArgumentParser) -> None:
    # Options default to "not given" (SUPPRESS): TrainConfig holds the recipe's defaults, and a resumed run
    # can tell which settings the user tried to change.
    S = argparse.SUPPRESS
    _data_args(p, lambda _: S, training=True)
    m = p.add_argument_group("model")
    m.add_argument("--model", default=S, help="variant to start from (default: sadcl_coco_448; see `sadcl list`)")
    m.add_argument("--pretrained", action="store_true", default=S, help="start from the variant's published weights")
    m.add_argument("--checkpoint", default=S, metavar="FILE", help="start from a .safetensors checkpoint")
    m.add_argument(
        "--pretrained-backbone",
        action="store_true",
        default=S,
        help="start from an ImageNet backbone only (downloads it through timm)",
    )
    m.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="SADCL constructor override, repeatable (e.g. dropout=0)",
    )
    m.add_argument("--img-size", type=int, default=S, help="training resolution (default: the variant's)")
    o = p.add_argument_group("objective")
    o.add_argument(
        "--objective",
        choices=("sadcl", "asl"),
        default=S,
        help="sadcl: ASL + SSCL + PSCL (default); asl: the Query2Label baseline",
    )
    o.add_argument(
        "--loss-weights", type=float, nargs=3, default=S, metavar=("ASL", "SSCL", "PSCL"), help="(default: 1 100 50)"
    )
    o.add_argument("--gamma-neg", type=float, default=S, help="ASL negative focusing (default: 4)")
    o.add_argument("--sample-temperature", type=float, default=S, help="SSCL temperature (default: 0.2)")
    o.add_argument("--prototype-temperature", type=float, default=S, help="PSCL temperature (default: 0.07)")
    o.add_argument(
        "--official-sample-loss",
        action="store_true",
        default=S,
        help="the authors' SSCL with its label-mask and shift quirks",
    )
    o.add_argument("--memory-threshold", type=float, default=S, help="memory-bank update probability (default: 0.8)")
    o.add_argument("--prototype-threshold", type=float, default=S, help="prototype init probability (default: 0.85)")
    o.add_argument("--prototype-batches", type=int, default=S, help="batches per process for the prototype init")
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=S, help="OneCycle length in epochs (default: 80)")
    t.add_argument("--batch-size", type=int, default=S, help="global batch, split over processes (default: 64)")
    t.add_argument("--eval-batch-size", type=int, default=S, help="per process (default: the training one)")
    t.add_argument("--lr", type=float, default=S, help="peak learning rate (default: 5e-5)")
    t.add_argument("--weight-decay", type=float, default=S, help="(default: 5e-3)")
    t.add_argument("--ema-decay", type=float, default=S, help="(default: 0.9998)")
    t.add_argument("--clip-grad", type=float, default=S, help="max gradient norm (default: none)")
    t.add_argument("--amp", choices=("bf16", "fp16", "none"), default=S, help="CUDA autocast (default: bf16)")
    t.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=S)
    t.add_argument(
        "--compile",
        action="store_true",
        default=S,
        help="torch.compile the training forward (minutes to compile, then faster steps)",
    )
    t.add_argument(
        "--augment",
        choices=("sadcl", "baseline", "none"),
        default=S,
        help="sadcl: multi-scale crop + flip; baseline: cutout + RandAugment (default: by objective)",
    )
    t.add_argument("--no-flip", dest="flip", action="store_false", default=S)
    t.add_argument("--seed", type=int, default=S, help="(default: 1)")
    t.add_argument("--patience", type=int, default=S, help="early-stopping patience in epochs (default: 8)")
    t.add_argument("--no-early-stop", dest="patience", action="store_const", const=None, default=S)
    t.add_argument("--threshold", type=float, default=S, help="score threshold of CP/CR/CF1/OP/OR/OF1 (default: 0.5)")
    r = p.add_argument_group("run")
    r.add_argument("--output", dest="output_dir", default=S, help="run folder (default: runs/sadcl)")
    r.add_argument(
        "--resume",
        default=S,
        metavar="RUN",
        help="continue a run exactly (its folder or last.pt); a finished run exits 0 unchanged",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        default=S,
        help="train into an --output folder that is not empty, replacing the files train writes "
        "(last.pt, best.safetensors, config.json, log.jsonl) and keeping every other file",
    )
    r.add_argument("--stop-after-epochs", type=int, default=S, help="end this run after N epochs (resume later)")
    r.add_argument("--num-workers", type=int, default=S, help="data-loading processes (default: min(4, CPU cores))")
    r.add_argument("--device", default=S, help="cpu, cuda … (default: cuda when available)")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    r.add_argument("--log-interval", type=int, default=S, help="steps between log.jsonl records (default: 50)")


def _print_epoch(record: dict) -> None:
    terms = ", ".join(f"{k} {record[k]:.4g}" for k in ("asl", "sample", "prototype") if record.get(k))
    line = (
        f"epoch {record['epoch']}: loss {record['loss']:.4g} ({terms}) | lr {record['lr']:.3g} | "
        f"{record['img_per_s']:.1f} img/s"
    )
    if "val" in record:
        best = record["best"]
        line += (
            f" | mAP raw {record['val']['raw']['mAP']:.2f} ema {record['val']['ema']['mAP']:.2f}"
            f" | best {best['mAP']:.2f} (epoch {best['epoch']}, {best['source']})"
        )
    print(line, flush=True)


def _mosaics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="folder for the PNGs, <split>.csv and labels.txt")
    p.add_argument(
        "--split",
        choices=("train", "test"),
        default="test",
        help="Fashion-MNIST split the items come from (default: %(default)s)",
    )
    p.add_argument("-n", "--num", type=int, default=1000, help="number of mosaics (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="Fashion-MNIST folder (default: Debian's /usr/share/datasets/fashion-mnist)")


@command("mosaics", "build multi-label Fashion-MNIST 2x2 mosaics (PNG files + CSV)", _mosaics_args)
def cmd_mosaics(args: argparse.Namespace) -> int:
    from .data.mosaic import write_mosaics

    csv_path = write_mosaics(args.out_dir, args.split, args.num, args.seed, root=args.root)
    print(f"wrote {args.num} {args.split} mosaics: {csv_path} (labels: {Path(args.out_dir) / 'labels.txt'})")
    return 0


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Warnings shown as ``sadcl COMMAND: warning: ...``: one line in the command's words (a warning may carry
    its flag-worded text in ``.cli``), no source location."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = getattr(message, "cli", message)
        print(f"sadcl {command}: warning: {one_line(str(text))}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@command(
    "train", "fine-tune SADCL (or the Query2Label baseline) on a multi-label dataset; torchrun for DDP", _train_args
)
def cmd_train(args: argparse.Namespace) -> int:
    from .train.config import ConfigError, RunFinishedError
    from .train.options import config_from_options
    from .train.trainer import train

    options = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        with _one_line_warnings("train"):
            summary = train(config_from_options(options), on_epoch=_print_epoch)
    except RunFinishedError as e:  # nothing to do is not a failure: a re-run (e.g. a requeued job) exits 0
        print(f"sadcl train: {e.cli}")
        return 0
    except ConfigError as e:  # the same message in the command line's words (flags, not keywords)
        raise ValueError(e.cli) from None
    if summary["rank"] != 0:  # under torchrun only rank 0 reports
        return 0
    if summary["best"] is not None:
        b = summary["best"]
        print(f"best mAP {b['mAP']:.2f} at epoch {b['epoch']} ({b['source']})")
    print(f"weights: {summary['best_weights']}\ntraining checkpoint: {summary['checkpoint']}")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    _model_source_args(p)
    _data_args(p, lambda d: d, training=False)
    p.add_argument("--img-size", type=int, help="evaluation resolution (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--num-workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="data-loading processes (default: min(4, CPU cores))",
    )
    p.add_argument("--device", help="cpu, cuda … (default: cuda when available)")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="CUDA autocast (default: bf16)")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold (default: 0.5)")
    p.add_argument("--output", default="eval.json", help="JSON report (default: %(default)s)")


@command("eval", "the paper's metrics (mAP, CP/CR/CF1/OP/OR/OF1, top-3) of a model on a dataset", _eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    from .metrics import format_table
    from .train.config import ConfigError, check_numbers
    from .train.evaluation import evaluate_checkpoint
    from .train.options import data_specs

    try:  # before any model is loaded
        check_numbers(
            {
                "batch_size": args.batch_size,
                "num_workers": args.num_workers,
                "threshold": args.threshold,
                "img_size": args.img_size,
            }
        )
    except ConfigError as e:
        raise ValueError(e.cli) from None
    if args.data is None:
        raise ValueError("give the evaluation data with --data (and --data-format if it is not a CSV file)")
    if args.model is None and args.checkpoint is None:
        raise ValueError("give the model with --checkpoint FILE and/or --model SOURCE (see `sadcl list`)")
    spec = data_specs(
        dict(
            data=args.data,
            images=args.images,
            data_format=args.data_format,
            val_split=None,
            split=args.split or {"voc": "test", **dict.fromkeys(_LAYOUTS, "val")}.get(args.data_format),
            voc_year=args.voc_year,
            skip_bad=args.skip_bad,
        )
    )["data"]
    results = evaluate_checkpoint(
        spec,
        args.model,
        args.checkpoint,
        img_size=args.img_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        amp=args.amp,
        threshold=args.threshold,
    )
    print(format_table(results))
    clean = json.loads(json.dumps(results, default=str), parse_constant=lambda _: None)  # NaN → null
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(clean, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


# -- convert / export / push --------------------------------------------------------------------------------
_ARCH_OVERRIDES = (
    ("backbone", str),
    ("hidden_dim", int),
    ("ffn_dim", int),
    ("num_heads", int),
    ("num_encoder_layers", int),
    ("num_decoder_layers", int),
    ("proj_dim", int),
    ("img_size", int),
    ("num_classes", int),
)


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the authors' SADCL or a Query2Label checkpoint (.pth, .pth.tar, .pkl)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--variant", default="sadcl_coco_448", help="architecture and label set (default: %(default)s)")
    for name, kind in _ARCH_OVERRIDES:
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"override the variant's {name}")
    p.add_argument("--non-strict", action="store_true", help="load what matches and report the rest")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")


@command("convert", "convert an authors'/Query2Label checkpoint to a sadcl .safetensors file", _convert_args)
def cmd_convert(args: argparse.Namespace) -> int:
    from .zoo.convert import convert_checkpoint

    overrides = {name: getattr(args, name) for name, _ in _ARCH_OVERRIDES if getattr(args, name) is not None}
    if (
        os.path.exists(args.output)
        and os.path.exists(args.checkpoint)
        and os.path.samefile(args.output, args.checkpoint)
    ):
        raise ValueError(f"the output {args.output} is the checkpoint being converted; name another file")
    result = convert_checkpoint(
        args.checkpoint, args.output, args.variant, strict=not args.non_strict, overwrite=args.overwrite, **overrides
    )
    print(result["report"])
    print(f"wrote {result['path']}\nsha256 {result['sha256']}\nsize {result['size']}")
    return 0


def _read_metrics(text: str | None) -> dict | None:
    """``--metrics``: a JSON object ``{"mAP": 85.6, …}`` given inline or as a file."""
    if text is None:
        return None
    metrics = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise ValueError(f"--metrics must be a JSON object of numbers (in percent), got {text!r}")
    return metrics


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="variant name (published weights), .safetensors file written by sadcl, export "
        "folder, local-dir:PATH or hf-hub:ORG/NAME[@REV]",
    )
    p.add_argument(
        "output_dir", help="a new or empty folder to write model.safetensors, config.json and README.md into"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the export files in a non-empty folder (nothing else in it is touched)",
    )
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs pip install 'sadcl[onnx]')")
    p.add_argument("--metrics", help="results of these weights: inline JSON or a JSON file, e.g. '{\"mAP\": 85.6}'")
    p.add_argument("--recipe", help="how the weights were obtained (free text for the model card)")
    p.add_argument("--repo-id", help="the Hub repository this export is for (used in the card's usage snippet)")
    p.add_argument("--license", help="Hub licence id for the model card, e.g. apache-2.0")


@command("export", "write a model as safetensors + config.json + model card (+ ONNX), ready for the Hub", _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    from .zoo.export import export_model
    from .zoo.factory import model_from_args

    if args.onnx:
        _require_extra("onnx")  # before anything is loaded or written
    model = model_from_args(args.model)
    config = export_model(
        model,
        args.output_dir,
        metrics=_read_metrics(args.metrics),
        recipe=args.recipe,
        repo_id=args.repo_id,
        license=args.license,
        onnx=args.onnx,
        overwrite=args.overwrite,
    )
    info = config["sadcl"]
    print(
        f"wrote {', '.join(sorted(['config.json', *info['files']]))} to {args.output_dir}\n"
        f"sha256 {info['weights']['sha256']}"
    )
    return 0


def _push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", help="a folder written by `sadcl export`")
    p.add_argument("repo_id", help="Hub repository, ORG/NAME (created if needed)")
    p.add_argument("--token", help="Hub write token (default: the saved login / HF_TOKEN)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--public",
        action="store_true",
        help="publish publicly: create the repository as public, or push into an existing public one "
        "(default: a new repository is private, and a public one is refused)",
    )
    g.add_argument("--private", action="store_true", help="the default; accepted for compatibility")
    p.add_argument("--revision", help="an existing branch to push to (default: main)")
    p.add_argument("--message", help="commit message")


@command(
    "push", "upload the files of an export folder (private by default) and print its weights.json record", _push_args
)
def cmd_push(args: argparse.Namespace) -> int:
    from .zoo.hub import push_to_hub

    push_to_hub(
        args.export_dir,
        args.repo_id,
        token=args.token,
        public=args.public,
        revision=args.revision,
        commit_message=args.message,
    )
    return 0


# -- reproduce ----------------------------------------------------------------------------------------------
def _reproduce_args(p: argparse.ArgumentParser) -> None:
    from .reproduce.recipes import DATASETS  # plain data: no torch at `sadcl --help`

    p.add_argument("dataset", metavar="DATASET", choices=tuple(DATASETS), help=f"one of {', '.join(DATASETS)}")
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="the dataset as released (README); a --dry-run without it plans with the release's counts",
    )
    p.add_argument("--output", dest="output_dir", metavar="RUN", help="run folder (default: runs/reproduce-DATASET)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and a GPU time/memory estimate; write nothing"
    )
    p.add_argument("--init", metavar="FILE", help="voc2007/voc2012: the COCO model `sadcl reproduce coco2014` wrote")
    p.add_argument(
        "--repo-id",
        metavar="ORG/NAME",
        help="Hub repository in the printed record and push command (nothing is uploaded)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --output folder holding another run or other files (replaces only plan.json, "
        "eval.json and the files train and export write in step1/, step2/, export/)",
    )
    p.add_argument("--verify-images", action="store_true", help="decode every image first (minutes on COCO)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="drop listed images that are missing or unreadable instead of stopping: decided once before step 1 "
        "(every image decoded) and recorded in RUN/plan.json, which a rerun reuses; they are counted in the data "
        "report (NUS-WIDE copies often lack dead Flickr links)",
    )
    p.add_argument("--stop-after-epochs", type=int, metavar="N", help="end after N epochs; rerun to continue")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    o = p.add_argument_group("overrides (smaller GPUs, smoke tests): any of them makes it not the paper's recipe")
    o.add_argument("--epochs", type=int, help="OneCycle length of each step (paper: 80, early stopping)")
    o.add_argument("--batch-size", type=int, help="global batch (paper: 64)")
    o.add_argument("--model", metavar="VARIANT", help="another architecture, e.g. sadcl_tiny (paper: ResNet-101)")
    o.add_argument("--img-size", type=int, help="resolution (paper: the variant's, 448 or 576)")
    o.add_argument("--amp", choices=("bf16", "fp16", "none"), help="CUDA autocast (recipe: bf16)")
    o.add_argument(
        "--no-pretrained-backbone",
        dest="pretrained_backbone",
        action="store_false",
        default=None,
        help="random initialisation instead of the ImageNet backbone (smoke tests only)",
    )
    o.add_argument("--patience", type=int, help="early-stopping patience in epochs (paper: 8)")
    r = p.add_argument_group("run settings (the recipe unchanged)")
    r.add_argument("--num-workers", type=int, help="data-loading processes (default: min(4, CPU cores))")
    r.add_argument("--device", help="cpu, cuda … (default: cuda when available)")


@command(
    "reproduce",
    "reproduce a paper checkpoint: both training steps, evaluation next to the paper's numbers, export",
    _reproduce_args,
)
def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce.run import reproduce
    from .train.config import ConfigError

    options = {k: v for k, v in vars(args).items() if k not in ("command", "dataset", "data_root")}
    try:
        with _one_line_warnings("reproduce"):
            reproduce(
                args.dataset, args.data_root, say=lambda line: print(line, flush=True), on_epoch=_print_epoch, **options
            )
    except ConfigError as e:  # the same message in the command line's words (flags, not keywords)
        raise ValueError(e.cli) from None
    return 0


# -- explain / plot-embeddings (need pip install 'sadcl[viz]') -----------------------------------------------
def _model_args(p: argparse.ArgumentParser) -> None:
    _model_source_args(p)
    p.add_argument("--device", help="cpu, cuda … (default: cpu)")


def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file")
    _model_args(p)
    p.add_argument(
        "--label",
        dest="labels",
        action="append",
        metavar="LABEL",
        help="label whose attention map to draw, repeatable (default: the --top-k best-scoring)",
    )
    p.add_argument("--top-k", type=int, default=3, help="labels drawn without --label (default: %(default)s)")
    p.add_argument("-o", "--output", default="explain.png", help="image file to write (default: %(default)s)")


@command("explain", "draw the category-related attention maps of an image's labels", _explain_args)
def cmd_explain(args: argparse.Namespace) -> int:
    from .viz import explain, save_figure
    from .zoo.factory import model_from_args

    model = model_from_args(args.model, args.checkpoint)
    fig = explain(model, args.image, args.labels, top_k=args.top_k, device=args.device)
    print(f"wrote {save_figure(fig, args.output)}: {', '.join(ax.get_title() for ax in fig.axes if ax.get_title())}")
    return 0


def _plot_embeddings_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="CSV", help="CSV file of images and labels (columns image, labels)")
    src.add_argument("--mosaics", type=int, metavar="N", help="N Fashion-MNIST test mosaics built on the fly")
    p.add_argument("--images", metavar="DIR", help="root of the CSV's relative image paths (default: its folder)")
    p.add_argument("-n", "--num", type=int, default=2000, help="at most this many images (default: %(default)s)")
    p.add_argument(
        "--method",
        choices=("pca", "tsne"),
        default="pca",
        help="2-D reduction; tsne needs scikit-learn (default: %(default)s)",
    )
    p.add_argument(
        "--raw", action="store_true", help="plot the decoder's label-level embeddings h instead of their projections"
    )
    p.add_argument("--seed", type=int, default=0, help="mosaic and t-SNE seed (default: %(default)s)")
    p.add_argument("-o", "--output", default="embeddings.png", help="image file to write (default: %(default)s)")


@command(
    "plot-embeddings", "plot label-level embeddings of positive labels with the class prototypes", _plot_embeddings_args
)
def cmd_plot_embeddings(args: argparse.Namespace) -> int:
    from .inference import preprocess
    from .viz import plot_embeddings, save_figure
    from .zoo.factory import model_from_args

    model = model_from_args(args.model, args.checkpoint)

    def transform(img):  # the inference preprocessing of the model (its size, mean and std)
        return preprocess(img, model.pretrained_cfg)

    if args.mosaics is not None:
        from .data.mosaic import FASHION_LABELS, MosaicDataset

        if model.label_names != list(FASHION_LABELS):
            raise ValueError(
                f"--mosaics needs a model with the Fashion-MNIST labels; {args.model!r} has "
                f"{model.num_classes} other labels: use --data CSV"
            )
        dataset = MosaicDataset("test", args.mosaics, args.seed, transform=transform)
    else:
        from .data.datasets import CSVDataset

        dataset = CSVDataset(args.data, image_root=args.images, label_names=model.label_names, transform=transform)
    fig = plot_embeddings(
        model, dataset, n=args.num, method=args.method, projected=not args.raw, device=args.device, seed=args.seed
    )
    print(f"wrote {save_figure(fig, args.output)}: {fig.axes[0].get_title()}")
    return 0


# -- errors: one line in the CLI's words ----------------------------------------------------------------------
# Optional modules: import name → (distribution, the sadcl extra in pyproject.toml that installs it, or None).
_OPTIONAL_MODULES = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "matplotlib": ("matplotlib", "viz"),
    "sklearn": ("scikit-learn", None),
}


def _install_hint(module: str | None) -> str | None:
    """``pip install 'sadcl[EXTRA]'`` (or the bare distribution) for an optional module, else None."""
    dist, extra = _OPTIONAL_MODULES.get((module or "").split(".")[0], (None, None))
    if dist is None:
        return None
    return f"pip install 'sadcl[{extra}]'" if extra else f"pip install {dist}"


def _require_extra(*modules: str) -> None:
    """Import optional modules now, so that a missing one stops a command before it has written anything."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"{module} is not installed ({e}): {_install_hint(module)}", name=module) from e


def _network_types() -> tuple[type, ...]:
    """Connection failures of the HTTP clients already imported (one that is not imported raised nothing)."""
    import socket
    import urllib.error

    types: list[type] = [ConnectionError, socket.gaierror, urllib.error.URLError]
    for httpx in ("httpx", "httpx2"):  # huggingface_hub 2.x talks through httpx2
        if httpx in sys.modules:
            types.append(sys.modules[httpx].TransportError)
    if "requests" in sys.modules:
        types += [sys.modules["requests"].exceptions.ConnectionError, sys.modules["requests"].exceptions.Timeout]
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.errors import OfflineModeIsEnabled

        types.append(OfflineModeIsEnabled)
    return tuple(types)


def _endpoint(error: BaseException) -> str:
    """``scheme://host[:port]`` the failed request went to (the Hub endpoint when the error does not say)."""
    from urllib.parse import urlsplit

    try:
        url = getattr(getattr(error, "request", None), "url", None)  # httpx: RuntimeError when unset
    except RuntimeError:
        url = None
    if url:
        parts = urlsplit(str(url))
        if parts.hostname:  # no user:password@ from the URL
            return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    hub = sys.modules.get("huggingface_hub.constants")
    return getattr(hub, "ENDPOINT", None) or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _network_message(error: BaseException) -> str | None:
    """One line for a connection failure reaching ``main``: the endpoint and the ``HF_HUB_OFFLINE`` setting.

    sadcl's own errors already say what failed, so only foreign errors (and what they wrap) are rewritten."""
    from urllib.error import HTTPError  # an answer (404 …), not a connection failure

    if type(error).__module__.split(".")[0] == "sadcl":
        return None
    network, seen, current = _network_types(), 0, error
    while current is not None and seen < 10:  # bounded: a cause chain can be cyclic
        if isinstance(current, network) and not isinstance(current, HTTPError):
            break
        current, seen = current.__cause__ or current.__context__, seen + 1
    else:
        return None
    endpoint, reason = _endpoint(current), one_line(f"{type(current).__name__}: {current}", 160)
    hub = sys.modules.get("huggingface_hub.constants")
    offline = getattr(hub, "HF_HUB_OFFLINE", None)
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")
    if offline:
        return (
            f"cannot reach {endpoint} ({reason}): HF_HUB_OFFLINE=1 is set (offline mode); unset it to use the "
            "network, or use files already in the local cache"
        )
    return (
        f"cannot reach {endpoint} ({reason}); HF_HUB_OFFLINE is not set: check the network and HF_ENDPOINT, "
        "or set HF_HUB_OFFLINE=1 to use only files already in the local cache"
    )


_PLAIN_ERRORS = (ValueError, OSError, RuntimeError, TypeError, ImportError)  # their message says it all


def _describe(error: BaseException) -> str:
    """The message of an exception reaching ``main`` (possibly multi-line; cut later)."""
    network = _network_message(error)
    if network is not None:
        return network
    text = str(error)
    hint = _install_hint(error.name) if isinstance(error, ImportError) else None
    if hint and "pip install" not in text:
        return f"{error.name} is not installed: {hint}"
    ours = type(error).__module__.split(".")[0] == "sadcl"
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text, ours = error.args[0], ours or " " in error.args[0]  # a sentence, not a bare key from a bug
    if not text.strip():
        text = "(no message)"
    if ours or (isinstance(error, _PLAIN_ERRORS) and text != "(no message)"):
        return text
    return f"{type(error).__name__}: {text} (SADCL_DEBUG=1 shows the traceback)"


# Library keywords the command line spells differently, keyword[=value] → option dest[=value]; a value of
# None matches any value and keeps it.
_RENAMED_KEYWORDS = {
    ("checkpoint_path", None): ("checkpoint", None),
    ("strict", "False"): ("non_strict", "True"),
    ("strict", "True"): ("non_strict", "False"),
}
_ENVIRONMENT_KEYWORDS = {"cache_dir": "HF_HUB_CACHE=DIR"}  # no option: the environment is the CLI's way
_LITERAL_WORDS = {"HF_HUB_CACHE/cache_dir": "HF_HUB_CACHE"}
# `keyword=value` in prose (not inside a path, URL query or name): value a placeholder <file>, ..., or a word.
_KEYWORD = re.compile(r"(?<![\w?&/.-])([a-z][a-z0-9_]*)=(<[^<>\s]*>|\.\.\.|[\w.+-]+)?")
# Code in a message (`…` spans, calls like create_model(…, checkpoint_path=…)) keeps Python's words.
_CODE = re.compile(r"`[^`]*`|\b[\w.]+\((?:[^()]|\([^()]*\))*\)")


def _cli_words(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with the library's keyword arguments (``checkpoint_path=<file>``, ``strict=False``) written as
    the options of the command ``parser`` parses (``--checkpoint FILE``, ``--non-strict``); a keyword the
    command has no option for stays as it is."""
    options = {a.dest: a for a in parser._actions if a.option_strings}

    def option(m: re.Match) -> str:
        keyword, value = m.group(1), m.group(2)
        if value is None or value == "..." or value.startswith("<"):
            value = None
        renamed = _RENAMED_KEYWORDS.get((keyword, value)) or _RENAMED_KEYWORDS.get((keyword, None))
        if renamed:
            keyword, value = renamed[0], renamed[1] if renamed[1] is not None else value
        if keyword in _ENVIRONMENT_KEYWORDS:
            return _ENVIRONMENT_KEYWORDS[keyword]
        action = options.get(keyword)
        if action is None:
            return m.group(0)
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # a switch
            return {None: flag, "True": flag, "False": f"no {flag}"}.get(value, m.group(0))
        metavar = action.metavar or keyword.upper()
        return f"{flag} {value or (' '.join(metavar) if isinstance(metavar, tuple) else metavar)}"

    for python, cli in _LITERAL_WORDS.items():
        message = message.replace(python, cli)
    out, start = [], 0
    for code in _CODE.finditer(message):
        out += [_KEYWORD.sub(option, message[start : code.start()]), code.group(0)]
        start = code.end()
    return "".join(out) + _KEYWORD.sub(option, message[start:])


def _report(error: BaseException, command: str, parser: argparse.ArgumentParser, verbose: bool) -> None:
    """Print ``error`` to stderr: one line, or with ``--verbose`` the full message and its details."""
    try:
        message = _cli_words(_describe(error), parser)
    except Exception:  # a message that cannot even be formatted still gets its line
        message = f"{type(error).__name__} (SADCL_DEBUG=1 shows the traceback)"
    details = [d for d in (details_of(error), *getattr(error, "__notes__", ())) if isinstance(d, str)]
    if verbose:
        lines = [printable(line) for text in (message, *details) for line in str(text).splitlines()]
        print(f"sadcl {command}: error: " + "\n".join(lines), file=sys.stderr)
        return
    line = one_line(message)
    if details and "--verbose" not in line:
        line += " (--verbose shows the details)"
    print(f"sadcl {command}: error: {line}", file=sys.stderr)


# -- entry point --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose errors are the one line of every other failure (the usage stays behind ``--help``)."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="sadcl", description="SADCL multi-label image classification")
    parser.add_argument("--version", action="version", version=f"sadcl {__version__}")
    parser.add_argument("--verbose", action="store_true", help="on error, print the full message and its details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}
    for name, (add_arguments, _, help) in COMMANDS.items():
        p = parser.commands[name] = sub.add_parser(name, help=help, description=help)
        add_arguments(p)
        # Also after the command; SUPPRESS keeps a --verbose given before it.
        p.add_argument(
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="on error, print the full message and its details",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser: "sadcl predict: error: … (see sadcl predict --help)"
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    verbose = args.verbose
    del args.verbose  # not an option of the command (train hands every option to its config)
    run = COMMANDS[args.command][1]
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sadcl list | head -1`: the reader is gone, nothing left to say
        if hasattr(sys.stdout, "fileno"):
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            except (OSError, ValueError):
                pass
        return 141
    except Exception as e:  # any failure: one line naming it, never a traceback (SADCL_DEBUG=1 shows one)
        if os.environ.get("SADCL_DEBUG"):
            raise
        _report(e, args.command, parser.commands[args.command], verbose)
        return 2


if __name__ == "__main__":
    sys.exit(main())
