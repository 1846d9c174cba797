"""What a tagging job writes: JSON Lines or CSV files appended a batch at a time, read back to resume; the text
lines and the JSON object of stdout.

A file is written only in whole records: each batch's records go out in one append (``_atomic.append_line``:
a failed write is rolled back), so only a process killed inside that write can leave a torn last record, and
reading the file back finds it (a record is complete when it parses and ends with its newline) and cuts it off
before anything is appended. Scores are written with ``repr`` (every digit of the float), so the same inputs
give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from .._atomic import append_line
from .._text import printable

__all__ = ["Record", "OutputFile", "ExistingOutput", "Writer", "output_file", "StdoutText", "StdoutJson", "SUFFIXES"]

MAX_RECORD_BYTES = 1 << 24  # a line longer than this in a file being resumed was not written by sadcl predict


class Record(NamedTuple):
    """One image's result, as it travels from the process that scored it to the one that writes."""

    image: str  # the path or URL as given or walked
    scores: dict[str, float] | None  # label -> probability, the labels kept (threshold/top-k), best first
    error: str | None = None  # why the image was skipped (--skip-bad); scores is then None
    nan: bool = False  # some score of the image (kept or not) is NaN


def _finite(score: float) -> float | None:
    return score if math.isfinite(score) else None


class OutputFile(ABC):
    """An output file of one format for a model's labels: its header, its records, and reading them back."""

    suffix = ""

    def __init__(self, path: str | os.PathLike, labels: Sequence[str]) -> None:
        self.path, self.labels = Path(path), list(labels)

    def header(self) -> bytes:
        return b""

    @abstractmethod
    def encode(self, records: Sequence[Record]) -> bytes:
        """The records as the bytes appended to the file (whole lines)."""

    @abstractmethod
    def complete_records(self, f: BinaryIO, state: ExistingOutput) -> Iterator[str]:
        """The image of each complete record in ``f``, in order, updating ``state.good_end`` after each."""

    def begins_record(self, head: bytes, offset: int) -> bool:
        """Whether ``head``, the first bytes of a torn tail at ``offset``, can be the start of what this format
        writes there (so that cutting it loses nothing but a torn record)."""
        return True

    def not_ours(self, where: str, why: str) -> ValueError:
        return ValueError(
            f"--output {self.path}: {where} is not a record of `sadcl predict` ({why}); give a new --output, or "
            "--overwrite to replace the file"
        )

    def other_labels(self, what: str) -> ValueError:
        return ValueError(
            f"--resume: --output {self.path} was written for other labels than this model's ({what}); resume "
            "with the same --model/--checkpoint, or give a new --output"
        )


def _lines(f: BinaryIO, path: Path) -> Iterator[bytes]:
    """Lines of ``f`` (each with its newline, the last one possibly without), each at most ``MAX_RECORD_BYTES``."""
    limit = MAX_RECORD_BYTES  # read at call time (a test lowers it)
    while line := f.readline(limit + 1):
        if len(line) > limit:
            raise ValueError(
                f"--output {path} has a line longer than {limit:,} bytes: it was not written by "
                "`sadcl predict`; give a new --output, or --overwrite to replace the file"
            )
        yield line


class JsonLines(OutputFile):
    """``.jsonl``: ``{"image": …, "scores": {label: score}}`` per line, or ``{"image": …, "error": …}``."""

    suffix = ".jsonl"

    def encode(self, records: Sequence[Record]) -> bytes:
        lines = []
        for r in records:
            obj: dict = {"image": r.image}
            if r.error is not None:
                obj["error"] = r.error
            else:
                obj["scores"] = {n: _finite(s) for n, s in (r.scores or {}).items()}  # NaN: null (JSON has none)
            lines.append(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")
        # A name with undecodable bytes holds lone surrogates; "backslashreplace" writes each as the JSON escape
        # \udcXX, so the file stays valid UTF-8 and reads back to the same name.
        return "".join(lines).encode("utf-8", "backslashreplace")

    def begins_record(self, head: bytes, offset: int) -> bool:
        start = b'{"image": '
        return head[: len(start)] == start[: len(head)]

    def complete_records(self, f: BinaryIO, state: ExistingOutput) -> Iterator[str]:
        labels = set(self.labels)
        for n, line in enumerate(_lines(f, self.path), start=1):
            if not line.endswith(b"\n"):
                return  # torn: the writer was stopped inside its last append
            try:
                rec = json.loads(line.decode("utf-8"))
            except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                raise self.not_ours(f"line {n}", str(e).split(":")[0]) from None
            keys = set(rec) if isinstance(rec, dict) else set()
            if keys not in ({"image", "scores"}, {"image", "error"}) or not isinstance(rec["image"], str):
                raise self.not_ours(f"line {n}", 'not {"image": …, "scores": …} or {"image": …, "error": …}')
            scores = rec.get("scores", {})
            if not isinstance(scores, dict) or not all(
                isinstance(v, (int, float)) or v is None for v in scores.values()
            ):
                raise self.not_ours(f"line {n}", "scores are not numbers")
            unknown = next((name for name in scores if name not in labels), None)
            if unknown is not None:
                raise self.other_labels(f"line {n} has the label {printable(repr(unknown))}")
            state.good_end += len(line)
            yield rec["image"]


class CsvTable(OutputFile):
    """``.csv`` (RFC 4180, CRLF line ends): ``image``, one column per label in the model's order, ``error``."""

    suffix = ".csv"

    def _row_text(self, rows: Sequence[Sequence[str]]) -> bytes:
        buf = io.StringIO()
        # CRLF line ends make the writer quote a field holding a lone \r as well as \n (with "\n" alone it would
        # leave \r bare, which a reader takes for the end of the record).
        csv.writer(buf, lineterminator="\r\n").writerows(rows)
        # Undecodable bytes of a file name (lone surrogates) are written back as those bytes: the file holds the
        # name exactly as the file system does, and reads back to the same name.
        return buf.getvalue().encode("utf-8", "surrogateescape")

    def header(self) -> bytes:
        return self._row_text([["image", *self.labels, "error"]])

    def begins_record(self, head: bytes, offset: int) -> bool:
        header = self.header()  # before the header is complete, only the header can be torn
        return offset > 0 or head[: len(header)] == header[: len(head)]

    def encode(self, records: Sequence[Record]) -> bytes:
        rows = []
        for r in records:
            scores = r.scores or {}
            cells = ["" if n not in scores else repr(float(scores[n])) for n in self.labels]  # NaN: "nan"
            rows.append([r.image, *cells, r.error or ""])
        return self._row_text(rows)

    def complete_records(self, f: BinaryIO, state: ExistingOutput) -> Iterator[str]:
        pulled = {"end": 0, "newline": True}

        def text() -> Iterator[str]:  # the csv reader pulls one line at a time; note where each ends
            for line in _lines(f, self.path):
                pulled["end"] += len(line)
                pulled["newline"] = line.endswith(b"\n")
                yield line.decode("utf-8", "surrogateescape")

        rows = csv.reader(text(), strict=True)
        expected = ["image", *self.labels, "error"]
        n = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as e:
                if "unexpected end of data" in str(e) or not pulled["newline"]:
                    return  # torn inside a quoted field
                raise self.not_ours(f"record {n + 1}", str(e)) from None
            if not pulled["newline"]:
                return  # torn: the record lacks its line end
            if n == 0:
                if row != expected:
                    raise self._header_mismatch(row, expected)
            elif len(row) != len(expected):
                raise self.not_ours(f"record {n}", f"{len(row)} fields, the header has {len(expected)}")
            state.good_end = pulled["end"]
            if n:
                yield row[0]
            n += 1

    def _header_mismatch(self, row: list[str], expected: list[str]) -> ValueError:
        if row[:1] != ["image"] or row[-1:] != ["error"]:
            return self.not_ours("the header", "its columns are not image, <labels>, error")
        got = row[1:-1]
        if len(got) != len(self.labels):
            return self.other_labels(f"{len(got)} label columns, the model has {len(self.labels)} labels")
        i = next(i for i, (a, b) in enumerate(zip(got, self.labels)) if a != b)
        return self.other_labels(
            f"label column {i + 1} is {printable(repr(got[i]))}, the model's is {printable(repr(self.labels[i]))}"
        )


SUFFIXES = {cls.suffix: cls for cls in (JsonLines, CsvTable)}


def output_file(path: str | os.PathLike, labels: Sequence[str]) -> OutputFile:
    """The output format named by ``path``'s extension; a ``ValueError`` naming ``--output`` for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"--output {path}: unknown format {suffix or '(no extension)'!r}; name the file *.jsonl (JSON Lines) "
            "or *.csv"
        )
    return SUFFIXES[suffix](path, labels)


def hold_lock(path: Path, fd: int) -> None:
    """Take an exclusive advisory lock (POSIX ``flock``) on the open file ``fd`` for the job: a second
    ``sadcl predict`` resuming or replacing the same file (a requeued job while the first still runs) is refused
    instead of interleaving its records. The lock ends when ``fd`` is closed, also when the process dies."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FileExistsError(
            f"--output {path} is being written by another job (it holds the file's lock): wait for it to end or "
            "stop it, or give a new --output"
        ) from None


class ExistingOutput:
    """An output file being resumed: its complete records, read as a stream, and where they end. It holds the
    file's lock from the first read on (:meth:`close` releases it; a :class:`Writer` takes it over)."""

    def __init__(self, out: OutputFile) -> None:
        self.out, self.good_end, self.size, self.fd = out, 0, 0, None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def images(self) -> Iterator[str]:
        """The image of each complete record, in order (the CSV header is not a record)."""
        if self.fd is None:
            fd = os.open(self.out.path, os.O_RDONLY)
            hold_lock(self.out.path, fd)  # closes fd when refused
            self.fd = fd
        with open(self.out.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            yield from self.out.complete_records(f, self)

    @property
    def has_header(self) -> bool:
        return self.good_end > 0

    def drop_torn_tail(self) -> int:
        """Cut the file after its last complete record (call once :meth:`images` is exhausted); returns the
        number of bytes cut."""
        cut = self.size - self.good_end
        if cut <= 0:
            return 0
        with open(self.out.path, "rb") as f:
            f.seek(self.good_end)
            head = f.read(64)
        if not self.out.begins_record(head, self.good_end):  # text someone else wrote: never cut it
            raise self.out.not_ours(
                "its last line",
                "it has no line end and does not begin like a record (a stopped job leaves the start of one)",
            )
        os.truncate(self.out.path, self.good_end)
        return cut


class Writer:
    """Appends records to an output file; the file is created (or, with ``overwrite``, emptied) only by the first
    batch, so a job that fails before its first result leaves what was there untouched."""

    def __init__(
        self,
        out: OutputFile,
        *,
        existing: ExistingOutput | None = None,
        overwrite: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """``existing``: the file being resumed (appended to; its header written if it has none yet).
        ``on_start``: called once the file is created or emptied (and locked), before its first record."""
        self.out, self.overwrite, self.existing, self.on_start = out, overwrite, existing, on_start
        self.started = existing is not None
        self.needs_header = not (existing is not None and existing.has_header)
        self.fd: int | None = None  # holds the file's lock once this writer created or emptied it

    def close(self) -> None:
        """Release the file's lock (the records are written already)."""
        if self.existing is not None:
            self.existing.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        data = self.out.encode(records)
        if not self.started:
            self._start()
            self.started = True
        if self.needs_header:
            data, self.needs_header = self.out.header() + data, False
        append_line(self.out.path, data)

    def _start(self) -> None:
        path = self.out.path
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (0 if self.overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            raise FileExistsError(
                f"--output {path} appeared while the job started; pass --resume to continue it or --overwrite to "
                "replace it"
            ) from None
        hold_lock(path, fd)  # before emptying it: never under a job still writing it
        self.fd = fd
        os.ftruncate(fd, 0)
        if self.on_start is not None:  # after emptying: the old records never sit beside the new job's settings
            self.on_start()


class StdoutText:
    """``IMAGE: label score, …`` per image, as :command:`sadcl predict` prints without ``--output``; names from
    files are escaped (they reach a terminal)."""

    def encode(self, records: Sequence[Record]) -> str:
        lines = []
        for r in records:
            if r.error is None:
                labels = ", ".join(f"{printable(n)} {s:.3f}" for n, s in (r.scores or {}).items())
                lines.append(f"{printable(r.image)}: {labels or '(no label above threshold)'}\n")
        return "".join(lines)

    def close(self) -> str:
        return ""


class StdoutJson:
    """One JSON object ``{image: {label: score} | null}`` (``--json``), the same text as ``json.dumps(…,
    indent=2)`` of the whole, printed a batch at a time."""

    def __init__(self) -> None:
        self.opened = False

    def encode(self, records: Sequence[Record]) -> str:
        parts = []
        for r in records:
            value = None if r.scores is None else {n: _finite(s) for n, s in r.scores.items()}
            entry = json.dumps({r.image: value}, indent=2, allow_nan=False)[2:-2]  # without the braces
            parts.append(("{\n" if not self.opened else ",\n") + entry)
            self.opened = True
        return "".join(parts)

    def close(self) -> str:
        return "\n}\n" if self.opened else ""
