"""``sadcl predict``: score a stream of images and write each batch's results as soon as it is scored, to stdout
or to an ``--output`` file that an interrupted job ``--resume``\\ s; split over ``torchrun`` processes."""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import islice

from .._files import not_regular_reason, regular_file
from .._text import one_line, printable
from ..data.images import ImageLoadError
from . import record, shard
from .output import ExistingOutput, Record, StdoutJson, StdoutText, Writer, output_file
from .paths import STDIN, check_folders, iter_images

__all__ = ["JobOptions", "run"]

SHOWN = 5  # images named in the NaN summary


@dataclass
class JobOptions:
    """What ``sadcl predict`` was asked (the command line's options, by their ``dest`` names)."""

    images: Sequence[str]
    model: str | None = None
    checkpoint: str | None = None
    threshold: float | None = None
    top_k: int | None = None
    batch_size: int = 16
    device: str | None = None
    workers: int | None = None
    json: bool = False
    skip_bad: bool = False
    output: str | None = None
    resume: bool = False
    overwrite: bool = False
    recursive: bool = False
    files_from: str | None = None
    null: bool = False
    progress: bool = True


def _inputs(o: JobOptions) -> Iterator[str]:
    """The job's images, in order: the arguments, then the lines of ``--files-from`` (read anew each call)."""
    return iter_images(o.images, o.recursive, o.files_from, o.null)


def _check_inputs(o: JobOptions, group: shard.Group) -> None:
    """Refuse inputs that cannot be read as asked, before the model is loaded."""
    if o.null and o.files_from is None:
        raise ValueError("--null says how the --files-from list separates its names: give --files-from LIST too")
    if not o.images and o.files_from is None:
        raise ValueError("no images given: name image files, folders or URLs, or a list of them with --files-from LIST")
    if o.files_from == STDIN:
        # resuming reads the inputs twice (the file's records, then the rest); each torchrun process reads them all
        if o.resume:
            raise ValueError("--resume reads the inputs again, which --files-from - cannot: give a list file instead")
        if group.world > 1:
            raise ValueError("under torchrun every process reads the inputs: give --files-from a list file, not -")
    elif o.files_from is not None:
        regular_file(o.files_from, "--files-from list", ValueError)
    check_folders(o.images, o.recursive)


def _check_output(o: JobOptions) -> None:
    """Refuse an ``--output`` that cannot be written as asked, before the model is loaded."""
    if o.output is None:
        if o.resume or o.overwrite:
            raise ValueError(f"{'--resume' if o.resume else '--overwrite'} needs --output FILE (.jsonl or .csv)")
        return
    if o.json:
        raise ValueError("--json prints to stdout; with --output the format comes from its extension (.jsonl, .csv)")
    reason = not_regular_reason(o.output)
    if reason not in (None, "file not found"):
        raise ValueError(f"--output {o.output}: {reason}")
    output_file(o.output, [])  # the extension
    if reason is None and not (o.resume or o.overwrite):
        raise FileExistsError(
            f"--output {o.output} exists: pass --resume to continue the job that wrote it, or --overwrite to replace it"
        )
    if reason is not None or o.overwrite:  # a new file: its settings record will be written beside it
        record.check_replaceable(o.output, o.overwrite)


def _device(o: JobOptions, group: shard.Group) -> str | None:
    """One GPU per process under torchrun (``cuda:LOCAL_RANK``) unless ``--device`` says otherwise."""
    if group.world > 1 and o.device in (None, "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{group.local_rank}"
    return o.device


def _workers(o: JobOptions, group: shard.Group, device: str | None) -> int | None:
    """``--workers``; by default :func:`sadcl.iter_predict`'s choice, but under torchrun each process takes its
    share of it (the processes of a node share its cores); a share of none leaves the choice to
    :func:`sadcl.iter_predict` (decode in place, hand over to workers only when decoding dominates)."""
    if o.workers is not None or group.local_world == 1:
        return o.workers
    from ..data.stream import default_workers

    return default_workers(device or "cpu") // group.local_world or None


def _image_name(item: object) -> str:
    """How records name an input: a path as given or walked; a URL without its ``user:password@`` (an output
    file is shared more readily than a command line)."""
    from ..data.remote import is_url, shown

    text = str(item)
    return shown(text) if is_url(text) else text


def _records(predictions: Iterable[list], o: JobOptions) -> Iterator[Record]:
    """Records of every prediction: all scores are asked of :func:`sadcl.iter_predict` (so that a NaN that
    ``--top-k`` would hide is still reported), ``--threshold``/``--top-k`` applied here, as it would."""
    from ..inference import selected

    for batch in predictions:
        for p in batch:
            if p.error is not None:
                yield Record(_image_name(p.image), None, p.error)
            else:
                nan = any(math.isnan(s) for s in p.scores.values())
                yield Record(_image_name(p.image), selected(p.scores.items(), o.threshold, o.top_k), None, nan)


class _Count(threading.Thread):
    """Counts the inputs (without keeping them) so that the progress bar can show an ETA."""

    def __init__(self, o: JobOptions) -> None:
        super().__init__(name="sadcl-count-images", daemon=True)
        self.o, self.total, self.stopped = o, None, threading.Event()

    def run(self) -> None:
        n = 0
        try:
            for _ in _inputs(self.o):
                if self.stopped.is_set():
                    return
                n += 1
        except OSError:  # the job itself reports an unreadable folder
            return
        self.total = n


class _Report:
    """Rank 0's side of the job: the output, the progress bar, the messages and the exit code."""

    def __init__(
        self,
        o: JobOptions,
        labels: list[str],
        done: int,
        existing: ExistingOutput | None,
        drop: int = 0,
        settings: dict | None = None,
    ) -> None:
        """``settings``: the job's settings record, written beside a new ``--output`` before its first record."""
        self.o, self.done_before, self.new, self.skipped, self.nan, self.nan_names = o, done, 0, 0, 0, []
        self.drop = drop  # records at the start that the file already holds (see _run)
        self.writer = None
        if o.output is not None:
            output = o.output
            on_start = None if settings is None else lambda: record.write(output, settings)
            self.writer = Writer(
                output_file(o.output, labels), existing=existing, overwrite=o.overwrite, on_start=on_start
            )
        self.stdout = None if o.output is not None else StdoutJson() if o.json else StdoutText()
        self.bar, self.count = None, None
        if o.progress and sys.stderr.isatty() and not (o.json and o.output is None):
            from tqdm import tqdm

            self.bar = tqdm(desc="predict", unit="image", initial=done, file=sys.stderr, dynamic_ncols=True)
            if o.files_from != STDIN:  # a list read from standard input is read once: no count, no ETA
                self.count = _Count(o)
                self.count.start()

    def say(self, text: str, file=None) -> None:
        """Print ``text`` (whole lines) without tearing the progress bar."""
        file = file or sys.stderr
        if self.bar is None:
            file.write(text)
            file.flush()
            return
        with self.bar.external_write_mode(file=file):
            file.write(text)
            file.flush()

    def add(self, records: list[Record]) -> None:
        if self.drop:
            records, self.drop = records[self.drop :], max(0, self.drop - len(records))
        if not records:
            return
        if self.writer is not None:
            self.writer.write(records)
        else:
            self.say(self.stdout.encode(records), sys.stdout)
        for r in records:
            if r.error is not None:
                self.skipped += 1
                self.say(f"sadcl predict: skipped: {one_line(r.error)}\n")
            elif r.nan:
                self.nan += 1
                if len(self.nan_names) < SHOWN:
                    self.nan_names.append(printable(r.image))
        self.new += len(records)
        if self.bar is not None:
            if self.bar.total is None and self.count is not None and self.count.total is not None:
                self.bar.total = self.count.total
            self.bar.update(len(records))

    def _close_bar(self) -> None:
        if self.bar is not None:
            if self.count is not None:
                self.count.stopped.set()
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        """Release the output's lock; the bar is closed."""
        self._close_bar()
        if self.writer is not None:
            self.writer.close()

    def interrupted(self) -> None:
        """Ctrl-C: say how to go on (the records written so far are whole)."""
        self._close_bar()
        if self.o.output is not None:
            total = self.done_before + self.new
            self.say(
                f"sadcl predict: stopped with {total} images in {printable(self.o.output)}; the same command with "
                "--resume continues the job\n"
            )

    def finish(self) -> int:
        self._close_bar()
        if self.stdout is not None:
            self.say(self.stdout.close(), sys.stdout)
        scored = self.new - self.skipped
        if self.nan:
            from ..inference import non_finite_message

            self.say(f"sadcl predict: warning: {non_finite_message(self.nan_names, self.nan, scored)}\n")
        if self.o.output is not None:
            path = printable(self.o.output)
            total = self.done_before + self.new
            if self.new == 0:
                self.say(f"{path}: holds all {total} images already; nothing to do\n", sys.stdout)
            else:
                skipped = f", {self.skipped} skipped" if self.skipped else ""
                resumed = f" ({self.new} new)" if self.done_before else ""
                self.say(f"{path}: {total} images{resumed}{skipped}\n", sys.stdout)
        return 1 if self.skipped or self.nan else 0


def _resume(
    o: JobOptions, labels: list[str], settings: dict | None, inputs: Iterator[str]
) -> tuple[int, ExistingOutput | None]:
    """Rank 0: check the settings record of the ``--output`` being resumed against ``settings`` (the job's now),
    then its records against the inputs, consuming one input per record; cut a torn last record. Returns the
    number of records and the file (None: no file yet)."""
    if o.output is None or not o.resume or not os.path.exists(o.output):
        return 0, None
    try:
        recorded = record.read(o.output)
    except record.NotOurs as e:
        raise ValueError(f"--resume: {e}; start over with --overwrite") from None
    # An empty file holds no record to mix up (a job stopped between emptying it and its first batch): its
    # settings record, if any, is replaced by this job's.
    empty = os.path.getsize(o.output) == 0
    if recorded is not None and settings is not None and not empty:
        record.compare(o.output, recorded, settings)  # before the records are read: a refusal costs nothing
    existing = ExistingOutput(output_file(o.output, labels))
    try:
        done, existing = _check_records(o, existing, inputs)
    except BaseException:
        existing.close()
        raise
    if settings is not None and (recorded is None or (empty and record.difference(recorded, settings))):
        if done == 0:  # nothing to mix up yet: the job is this one from its first record on
            record.write(o.output, settings)
        else:
            print(
                f"sadcl predict: warning: --resume: {printable(o.output)} has no settings record "
                f"({printable(record.record_path(o.output))}; written by an older sadcl?): its weights, preprocessing, "
                "--threshold and --top-k could not be verified, only its labels and images",
                file=sys.stderr,
            )
    return done, existing


def _check_records(o: JobOptions, existing: ExistingOutput, inputs: Iterator[str]) -> tuple[int, ExistingOutput]:
    done = 0
    for done, image in enumerate(existing.images(), start=1):
        given = next(inputs, None)
        given = None if given is None else _image_name(given)
        if given is None:
            raise ValueError(
                f"--resume: --output {o.output} holds {done} or more records but there are only {done - 1} "
                "images: the inputs changed since the job started; give the same images, or a new --output"
            )
        if given != image:
            raise ValueError(
                f"--resume: record {done} of --output {o.output} is {printable(repr(image))} but image {done} is "
                f"now {printable(repr(given))}: the inputs changed since the job started; give the same images "
                "(and --recursive as before), or a new --output"
            )
    cut = existing.drop_torn_tail()
    if cut:
        print(
            f"sadcl predict: --resume: cut a torn last record ({cut} bytes) from {printable(o.output)}: a job was "
            "stopped while writing it; its image is scored again",
            file=sys.stderr,
        )
    return done, existing


def run(o: JobOptions) -> int:
    """Run the job; the exit code: 0 all done, 1 done but some images skipped or with NaN scores. Errors raise
    (one line each); under torchrun only rank 0 raises, the other processes return 2 quietly."""
    group = shard.join()
    finished = False
    try:
        code = _run(o, group)
        finished = True
        return code
    except shard.PeerFailed:
        return 2
    finally:
        shard.leave(group, finished)


def _run(o: JobOptions, group: shard.Group) -> int:
    from ..zoo.factory import model_from_args

    model, error = None, None
    try:
        _check_output(o)  # the cheap checks first: a refused --output costs no model loading
        _check_inputs(o, group)
        model = model_from_args(o.model, o.checkpoint)
    except Exception as e:
        error = e
    shard.settle(group, error)  # every rank checked before rank 0 creates --output
    labels = list(model.label_names)

    done, existing, settings, error = 0, None, None, None
    if group.is_main:
        try:
            if o.output is not None:  # what decides the records' content, recorded beside them
                settings = record.settings(
                    model,
                    output=o.output,
                    model_arg=o.model,
                    checkpoint=o.checkpoint,
                    threshold=o.threshold,
                    top_k=o.top_k,
                )
            done, existing = _resume(o, labels, settings, _inputs(o))
        except Exception as e:
            error = e
    report = None
    try:
        shard.settle(group, error)
        done = shard.broadcast(group, done)
        # Batches start where they started in the interrupted job (a multiple of --batch-size): the same images
        # batched together give the same scores to the last bit. The few images of a batch the file holds in
        # part are scored again and their records dropped, never written twice.
        redo = done % o.batch_size
        inputs = islice(_inputs(o), done - redo, None)
        report = _Report(o, labels, done, existing, drop=redo, settings=settings) if group.is_main else None
        try:
            _score(o, group, model, inputs, report)
        except ImageLoadError as e:  # without --skip-bad the first unreadable image stops the job
            raise ImageLoadError(f"{e}; {_after_bad_image(o, report)}") from None
        return report.finish() if report is not None else 0
    finally:  # the output's lock is released, whatever happened
        if report is not None:
            report.close()
        if existing is not None:
            existing.close()


def _after_bad_image(o: JobOptions, report: _Report | None) -> str:
    """What to do when an image stopped the job: the images already written are kept."""
    hint = "fix or remove it, or pass --skip-bad to go on past unreadable images"
    kept = 0 if report is None else report.done_before + report.new
    if o.output is None or not kept:
        return hint
    return f"{hint}; the first {kept} images are in {printable(o.output)}: the same command with --resume continues"


def _score(o: JobOptions, group: shard.Group, model, inputs: Iterator[str], report: _Report | None) -> None:
    """Score this rank's batches of ``inputs``; rank 0 hands each round's records to ``report``."""
    from ..inference import NonFiniteScoreWarning, iter_predict

    mine = shard.dealt(inputs, o.batch_size, group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteScoreWarning)  # counted over the whole job by the report
        device = _device(o, group)
        workers = _workers(o, group, device)
        predictions = iter_predict(
            model, mine, batch_size=o.batch_size, device=device, workers=workers, skip_bad=o.skip_bad
        )
        batches = shard.chunks(_records(predictions, o), o.batch_size)
        try:
            with closing(shard.rounds(batches, o.batch_size, group)) as rounds:
                for records in rounds:
                    report.add(records)
        except KeyboardInterrupt:
            if report is not None:
                report.interrupted()
            raise
        finally:
            predictions.close()  # ends the decoding workers now (also on an error or Ctrl-C)
