"""The run folder: which files a run owns (:data:`RUN_FILES`), refusing a folder holding anything else
before any work, and making it ready to write (stale temporaries, ``overwrite``, a torn log line)."""

from __future__ import annotations

from pathlib import Path

from .._atomic import drop_partial_last_line, remove_stale_temporaries
from .._text import printable
from .config import ConfigError, TrainConfig
from .resume import resume_folder

__all__ = ["RUN_FILES", "check_output", "prepare_output"]

# The files a run writes into its folder (``--overwrite`` replaces these and nothing else).
RUN_FILES = ("last.pt", "best.safetensors", "config.json", "log.jsonl")


def _resumes_in_place(cfg: TrainConfig) -> bool:
    run = resume_folder(cfg)
    return run is not None and run.resolve() == Path(cfg.output_dir).resolve()


def check_output(cfg: TrainConfig) -> None:
    """Refuse an output folder holding anything (an earlier run, other files) unless the run resumes in it
    or ``overwrite`` is set; read-only, so it runs before any work."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError.about("output_dir", f"{out} is a file, not a folder; give a folder for the run")
    if cfg.overwrite or _resumes_in_place(cfg) or not out.is_dir():
        return
    names = sorted(entry.name for entry in out.iterdir())
    if not names:
        return
    names = [n for n in RUN_FILES if n in names] + [n for n in names if n not in RUN_FILES]
    shown = ", ".join(printable(n) for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    run = "last.pt" in names
    replace = f"the files train writes ({', '.join(RUN_FILES)}; other files are kept)"
    raise ConfigError(
        f"output_dir {out} already holds {'a run' if run else 'files'} ({shown}); "
        + (f"continue it with resume='{out}', or " if run else "pick another output_dir, or ")
        + f"set overwrite=True to replace {replace}",
        f"--output {out} already holds {'a run' if run else 'files'} ({shown}); "
        + (f"continue it with --resume {out}, or " if run else "pick another --output, or ")
        + f"pass --overwrite to replace {replace}",
    )


def prepare_output(cfg: TrainConfig) -> None:
    """Make the run folder ready to write (rank 0, once every check passed): remove temporary files our
    interrupted writes left, with ``overwrite`` the earlier run's files (only :data:`RUN_FILES`), and a
    log line torn by a killed process."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, RUN_FILES)
    if cfg.overwrite and not _resumes_in_place(cfg):
        for name in RUN_FILES:
            if (out / name).is_file() or (out / name).is_symlink():
                (out / name).unlink()
    drop_partial_last_line(out / "log.jsonl")
