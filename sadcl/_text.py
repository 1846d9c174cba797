"""Text from files shown to people: control characters made visible, long messages made one short line.

Label names, file names and error messages come from files a user may not have written. Printed raw, an
ESC sequence can rewrite the terminal, a newline can forge an output line and a bidi override can make a
name read backwards. :func:`printable` shows every such character as an escape instead; machine formats
(JSON) keep the exact text and escape it themselves.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable", "one_line", "with_details", "details_of", "MAX_LINE"]

MAX_LINE = 500  # characters of an error message shown without --verbose

# Categories never shown as themselves: controls (C0, DEL, C1), format characters (bidi overrides and
# isolates, zero-width characters, BOM), line/paragraph separators and lone surrogates (undecodable bytes of
# a file name; printing them would raise UnicodeEncodeError).
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: object) -> str:
    """``text`` (``str()`` of it) with every control, format, separator and surrogate character escaped as
    ``\\n``, ``\\t``, ``\\x1b``, ``\\u202e`` …, so that printing it cannot move the cursor, start a line, colour
    or reorder the terminal. Other characters (accents, CJK, emoji) are kept; backslashes are not doubled
    (the result is for reading, not for parsing back)."""
    text = str(text)
    if text.isprintable():  # fast path: the common case has nothing to escape
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _HIDDEN else ch for ch in text)


def one_line(message: str, limit: int = MAX_LINE) -> str:
    """A message as one printable line of at most about ``limit`` characters.

    A re-raised worker traceback (``Caught X in DataLoader worker process N. Original Traceback …``) becomes
    its last line, the original error; other multi-line messages are joined with ``" | "``. A longer result
    keeps its head and its tail (where messages say what to do) around a note that ``--verbose`` shows all.
    """
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if any(
        line.startswith("Traceback (most recent call last)") or line.startswith("Original Traceback") for line in lines
    ):
        lines = lines[-1:]
    text = printable(" | ".join(lines))
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 4
    cut = len(text) - head - tail
    return f"{text[:head]} … [{cut} characters cut; --verbose shows the full message] … {text[-tail:]}"


def with_details(error: BaseException, details: str) -> BaseException:
    """Attach long supporting text (a key list, a full report) to ``error`` and return it.

    The ``sadcl`` command prints the message on one line and ``error.details`` only under ``--verbose``;
    Python callers read it as ``error.details``. Use: ``raise with_details(ValueError(short), full_listing)``.
    """
    error.details = details  # type: ignore[attr-defined]
    return error


def details_of(error: BaseException) -> str | None:
    """The text attached by :func:`with_details`, or None."""
    details = getattr(error, "details", None)
    return details if isinstance(details, str) and details else None
