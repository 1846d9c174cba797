"""Start-up time of the command line and of ``import sadcl``, each in fresh processes.

    python benchmarks/bench_cli_startup.py [--quick] [--rounds N] [--out benchmarks/results/cli_startup.json]

Contenders (wall time of a whole process, from start to exit): the installed ``sadcl`` entry point (the
console script next to this Python; ``python -m sadcl.cli`` where there is none) running ``--version``,
``-h``, ``list``, ``list --json`` and ``info sadcl_coco_448``; and as references ``python -c "import sadcl"``,
``python -c "import torch"`` and ``python -c pass`` (the interpreter alone). The rounds alternate the
contenders (``_common.alternate``); the figure is the median. ``OMP_NUM_THREADS=1`` in the children.

Then where ``import sadcl`` and ``sadcl list`` spend their time: ``python -X importtime``, the modules with the
largest cumulative import time, and whether torch / timm / huggingface_hub were imported at all.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import _common

LIGHT_COMMANDS = {
    "sadcl --version": ["--version"],
    "sadcl -h": ["-h"],
    "sadcl list": ["list"],
    "sadcl list --json": ["list", "--json"],
    "sadcl info sadcl_coco_448": ["info", "sadcl_coco_448"],
}
REFERENCES = {
    'python -c "import sadcl"': ["-c", "import sadcl"],
    'python -c "import torch"': ["-c", "import torch"],
    'python -c "pass"': ["-c", "pass"],
}
TARGET_S = 0.5  # issue 12: the light commands start in under half a second
HEAVY = ("torch", "timm", "huggingface_hub", "torchvision", "safetensors", "numpy", "PIL")
_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def entry_point() -> list[str]:
    """The ``sadcl`` console script of this Python (not a shim on PATH), else ``python -m sadcl.cli``."""
    script = Path(sys.executable).parent / "sadcl"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("sadcl", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "sadcl.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _runner(cmd: list[str]):
    def run() -> None:
        done = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")

    return run


def import_profile(args: list[str], top: int = 12) -> dict[str, Any]:
    """``python -X importtime ARGS``: total, the ``top`` modules by cumulative time (top-level imports only, so
    nothing is counted twice) and which heavy dependencies were imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args], env=_env(), capture_output=True, text=True, timeout=300
    )
    rows = []
    for line in done.stderr.splitlines():
        m = _IMPORTTIME.match(line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2))
    outermost = [r for r in rows if r[3] == min(r[3] for r in rows)] if rows else []
    imported = {r[0] for r in rows}
    return {
        "command": "python -X importtime " + " ".join(args),
        "total_import_s": round(sum(r[2] for r in outermost) / 1e6, 4),
        "top_cumulative": [
            {"module": name, "cumulative_s": round(cum / 1e6, 4), "self_s": round(own / 1e6, 4)}
            for name, own, cum, _ in sorted(outermost, key=lambda r: -r[2])[:top]
        ],
        "heavy_imported": sorted(m for m in HEAVY if m in imported),
        "modules_imported": len(imported),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = _common.parser(__doc__.splitlines()[0], "cli_startup.json")
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 9)
    cli = entry_point()
    fns = {name: _runner(cli + rest) for name, rest in LIGHT_COMMANDS.items()}
    fns.update({name: _runner([sys.executable, *rest]) for name, rest in REFERENCES.items()})
    times = _common.alternate(fns, rounds=rounds, warmup=1)
    results = {name: _common.summary(t) for name, t in times.items()}
    for name in LIGHT_COMMANDS:
        results[name]["under_target"] = results[name]["median_s"] < TARGET_S
    data = _common.result_header(
        "bench_cli_startup.py",
        args,
        argv,
        entry_point=" ".join(cli),
        target_s=TARGET_S,
        rounds=rounds,
        results=results,
        import_profiles={
            "import sadcl": import_profile(["-c", "import sadcl"]),
            "sadcl list": import_profile(["-m", "sadcl.cli", "list"]),
            "import torch": import_profile(["-c", "import torch"]),
        },
    )
    _common.write_json(args.out, data)
    _common.print_table(
        [{"process": n, **{k: v for k, v in r.items() if k != "times_s"}} for n, r in results.items()],
        ["process", "median_s", "min_s", "max_s", "n", "under_target"],
    )
    for name, prof in data["import_profiles"].items():
        top = ", ".join(f"{t['module']} {t['cumulative_s']:.3f}" for t in prof["top_cumulative"][:5])
        print(f"{name}: imports {prof['total_import_s']:.3f} s ({top}); heavy: {prof['heavy_imported'] or 'none'}")
    print(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    main()
