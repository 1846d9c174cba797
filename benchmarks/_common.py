"""Shared helpers of the benchmark scripts: machine record, alternating timings, peak-memory children, JSON.

Timing protocol (every script): warm-up calls first, then ``rounds`` rounds in which every contender runs
once, in an order that rotates from round to round, so a slow phase of a shared machine hits all of them;
the figure is the median over rounds and comparisons are ratios of medians from the same run.

Peak memory protocol (:func:`peak_extra_rss`): each measurement runs in its own child process forked from a
server process (``multiprocessing`` "forkserver") that has only imported the benchmark's modules, so no
allocator cache or earlier peak of another measurement is shared. The child builds
its inputs, runs the workload once (warm-up), resets the kernel's RSS high-water mark
(``/proc/self/clear_refs``), reads its RSS, runs the workload again and reads the high-water mark
(``VmHWM``): *extra peak* = high-water mark − RSS before the run. glibc is told to serve every allocation of
256 KiB or more with ``mmap`` (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the RSS at once and the
high-water mark follows live tensor memory. Without ``/proc`` (not Linux) the child falls back to
``getrusage(RUSAGE_SELF).ru_maxrss`` before/after one run without warm-up.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MMAP_THRESHOLD = 256 * 1024
_MiB = 1024 * 1024


# ----------------------------------------------------------------------------- command line and output
def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: ``--quick``, ``--out``, ``--threads``, ``--rounds``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few rounds: checks that the script works")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / default_out, help="results JSON (written atomically)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's default); use 1 on a machine shared with other jobs",
    )
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (default: per script)")
    return p


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where the figures come from: CPU, cores, load, torch build and threads (and the GPU, if one is used)."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON through a temporary sibling and ``os.replace`` (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def result_header(script: str, args: argparse.Namespace, argv: Sequence[str] | None, **extra: Any) -> dict[str, Any]:
    """The common head of a results file: what ran (``argv``: the parsed arguments, default ``sys.argv[1:]``),
    how, where and when."""
    command = "python benchmarks/" + script + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    return {
        "benchmark": script.removesuffix(".py"),
        "command": command,
        "quick": bool(args.quick),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        **extra,
    }


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned text table of ``rows`` (floats with 4 significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU model: what a results file says the figures ran on."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()


# ----------------------------------------------------------------------------- inputs
def multilabel_targets(B: int, C: int, positives_per_image: float, seed: int = 0) -> torch.Tensor:
    """COCO-like float labels ``[B, C]``: per image ``1 + Poisson(m − 1)`` positives (mean ``m``), drawn without
    replacement from a skewed class frequency (weights ``∝ 1/(c+1)^0.7``, like COCO's dominant classes)."""
    g = torch.Generator().manual_seed(seed)
    counts = 1 + torch.poisson(torch.full((B,), positives_per_image - 1.0), generator=g).long().clamp(max=C - 1)
    weights = 1.0 / torch.arange(1, C + 1, dtype=torch.float64) ** 0.7
    y = torch.zeros(B, C)
    for i, k in enumerate(counts.tolist()):
        y[i, torch.multinomial(weights, k, replacement=False, generator=g)] = 1.0
    return y


# ----------------------------------------------------------------------------- timings
def summary(times: Sequence[float]) -> dict[str, Any]:
    """Median / min / max of a list of seconds, and the raw list."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
        "times_s": [round(t, 6) for t in times],
    }


def alternate(
    fns: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1, sync: Callable[[], None] | None = None
) -> dict[str, list[float]]:
    """Time each callable ``rounds`` times, interleaved: round ``r`` runs them in an order rotated by ``r``.

    ``warmup`` untimed calls of each come first. ``sync`` (e.g. ``torch.cuda.synchronize``) runs before
    each clock read, for asynchronous devices.
    """
    names = list(fns)
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def repeat_min_duration(fn: Callable[[], Any], min_s: float) -> Callable[[], None]:
    """For short workloads: a callable that runs ``fn`` ``n`` times (``n`` chosen once, from one call after
    one warm-up call, so that a call lasts about ``min_s``; at least 1); divide its timings by its ``n``."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(min_s / one))

    def run() -> None:
        for _ in range(n):
            fn()

    run.n = n  # type: ignore[attr-defined]
    return run


# ----------------------------------------------------------------------------- peak memory
def _read_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_bytes() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "reset the peak resident set size to the current RSS" (proc(5))
        return _read_status_kib("VmHWM") is not None
    except OSError:
        return False


def _child(setup: Callable[..., Callable[[], Any]], kwargs: dict[str, Any], threads: int, conn: Any) -> None:
    import gc

    try:
        gc.freeze()  # the imported modules' objects: later collections only scan what the workload made
        torch.set_num_threads(threads)
        run = setup(**kwargs)  # builds the inputs; returns the workload
        if _reset_hwm():
            run()  # warm-up: lazy initialisations are not the workload's memory
            gc.collect()
            _reset_hwm()
            before = _read_status_kib("VmRSS") * 1024
            run()
            peak = _read_status_kib("VmHWM") * 1024
            method = "VmHWM after clear_refs"
        else:
            before = _maxrss_bytes()
            run()
            peak = _maxrss_bytes()
            method = "ru_maxrss"
        conn.send({"extra_peak_bytes": max(peak - before, 0), "rss_before_bytes": before, "method": method})
    except BaseException as e:  # report, never hang the parent
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


_CONTEXT: Any = None


def _context(modules: Sequence[str]) -> Any:
    """The forkserver context; the server is started once, with glibc's mmap threshold fixed and ``modules``
    imported, so that children start in milliseconds. (Python 3.11's forkserver does not preload
    ``"__main__"`` itself and each child re-runs the main script: its imports must already be in the server.)"""
    global _CONTEXT
    if _CONTEXT is None:
        from multiprocessing import forkserver

        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(sorted({"torch", *modules} - {"__main__"}))
        saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)  # read by the server's glibc at start
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["MALLOC_MMAP_THRESHOLD_"]
            else:
                os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
        _CONTEXT = ctx
    return _CONTEXT


def peak_extra_rss(
    setup: Callable[..., Callable[[], Any]],
    kwargs: dict[str, Any] | None = None,
    threads: int | None = None,
    repeats: int = 1,
    timeout_s: float = 600,
    preload: Sequence[str] = (),
) -> dict[str, Any]:
    """Extra peak RSS (MiB) of the workload ``setup(**kwargs)()`` in fresh child processes (module docstring).

    ``setup`` must be a module-level function (it is pickled by name). ``preload``: modules the server
    imports at its start, besides ``setup``'s own (only the first call starts the server): list what the
    benchmark script imports. With ``repeats > 1`` the median is reported; the measurements are usually
    identical to the page.
    """
    ctx = _context([*preload, setup.__module__])
    values, method = [], None
    for _ in range(repeats):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(setup, kwargs or {}, threads or torch.get_num_threads(), child))
        proc.start()
        child.close()
        if not parent.poll(timeout_s):
            proc.kill()
            raise TimeoutError(f"peak-memory child for {setup.__name__}({kwargs}) ran over {timeout_s} s")
        out = parent.recv()
        proc.join()
        if "error" in out:
            raise RuntimeError(f"peak-memory child for {setup.__name__}({kwargs}) failed: {out['error']}")
        values.append(out["extra_peak_bytes"])
        method = out["method"]
    return {"extra_peak_mib": statistics.median(values) / _MiB, "all_mib": [v / _MiB for v in values], "method": method}


def _calibration_setup(mib: int) -> Callable[[], Any]:
    def run() -> None:
        t = torch.ones(mib * _MiB // 4)  # touched: fills mib MiB
        del t

    return run


def memory_method_check(mib: int, preload: Sequence[str]) -> dict[str, Any]:
    """Sanity check of :func:`peak_extra_rss`: a workload that allocates and fills ``mib`` MiB.
    ``preload``: as for :func:`peak_extra_rss` (this is usually the call that starts the server)."""
    got = peak_extra_rss(_calibration_setup, {"mib": mib}, threads=1, preload=preload)
    return {
        "allocated_mib": mib,
        "measured_extra_peak_mib": got["extra_peak_mib"],
        "method": got["method"],
        "malloc_mmap_threshold_bytes": MMAP_THRESHOLD,
    }
