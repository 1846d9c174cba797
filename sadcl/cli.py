"""The ``sadcl`` command: one thin sub-command per verb, each calling the library."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register a sub-command: its help, a function adding its arguments, and the function running it."""

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (arguments, run, help)
        return run

    return wrap


# -- list / info ------------------------------------------------------------------------------------------
@command("list", "list the variants and which have published weights",
         lambda p: p.add_argument("--json", action="store_true", help="machine-readable output"))
def cmd_list(args: argparse.Namespace) -> int:
    from .zoo import VARIANTS, list_models, list_pretrained

    pretrained = set(list_pretrained())
    rows = [dict(name=n, dataset=VARIANTS[n].dataset, img_size=VARIANTS[n].img_size, weights=n in pretrained)
            for n in list_models()]
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
    from .zoo.variants import _check_name

    _check_name(args.name)
    print(json.dumps(pretrained_cfg_for(args.name), indent=2))
    return 0


# -- predict ----------------------------------------------------------------------------------------------
def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", default="sadcl_fashion_mosaic", help="variant name (default: %(default)s)")
    p.add_argument("--checkpoint", help="a local .safetensors checkpoint instead of the published weights")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="keep labels scoring above this probability")
    g.add_argument("--top-k", type=int, help="keep the k best labels per image")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object {image: {label: score}}")


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _expand_images(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(str(f) for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {item}")
            out.extend(files)
        else:
            out.append(item)
    return out


@command("predict", "per-label scores for images", _predict_args)
def cmd_predict(args: argparse.Namespace) -> int:
    from . import create_model, predict

    images = _expand_images(args.images)
    model = create_model(args.model, pretrained=args.checkpoint is None, checkpoint_path=args.checkpoint)
    results = predict(model, images, threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                      device=args.device, progress=len(images) > args.batch_size and not args.json)
    if args.json:
        print(json.dumps({img: res for img, res in zip(images, results)}, indent=2))
    else:
        for img, res in zip(images, results):
            labels = ", ".join(f"{name} {score:.3f}" for name, score in res.items()) or "(no label above threshold)"
            print(f"{img}: {labels}")
    return 0


# -- entry point --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sadcl", description="SADCL multi-label image classification")
    parser.add_argument("--version", action="version", version=f"sadcl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _, help) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help, description=help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = COMMANDS[args.command][1]
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        # Bad input: one clear line, no traceback (set SADCL_DEBUG=1 for one).
        import os

        if os.environ.get("SADCL_DEBUG"):
            raise
        print(f"sadcl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
