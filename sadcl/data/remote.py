"""Images named by an ``http://`` or ``https://`` URL: fetched with ``requests``, bounded in time and size.

What a URL may cost is bounded before anything is decoded:

* only ``http`` and ``https`` (``file://``, ``ftp://`` … are refused, also as a redirect target: requests
  follows redirects over http(s) only), at most ``MAX_REDIRECTS`` redirects;
* a connect timeout and a read timeout (no data for that long), and an overall deadline: the transfer runs in a
  worker thread, so the caller gets its error at the deadline even from a server that sends one byte at a time
  or a host name that takes minutes to resolve;
* at most ``MAX_BYTES`` of body: a larger ``Content-Length`` is refused without reading the body, and a body
  without one (chunked) is streamed and dropped as soon as it passes the limit;
* the bytes then meet the same pixel limit (``PIL.Image.MAX_IMAGE_PIXELS``) as a file, before decoding.

Every failure is an :class:`RemoteImageError` (an :class:`~sadcl.data.images.ImageLoadError`, so
``skip_bad`` skips it like an unreadable file) whose one-line message names the URL.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from PIL import Image

from .images import ImageLoadError, load_image

SCHEMES = ("http", "https")
MAX_BYTES = 50 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
DEADLINE_S = 60.0
MAX_REDIRECTS = 5
_CHUNK = 16 * 1024  # small: a compressed chunk a server sends anyway decodes to at most ~1000x this
# "scheme://" at the start: a URL, not a file name (a one-letter scheme would be a Windows drive).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]*@")


class RemoteImageError(ImageLoadError):
    """An image URL could not be fetched (refused scheme, HTTP error, timeout, deadline, size limit) or is not
    an image; the message names the URL."""


def is_url(item: object) -> bool:
    """True for a string of the form ``scheme://…`` (any scheme: those other than http(s) are refused later)."""
    return isinstance(item, str) and _URL.match(item) is not None


def shown(text: str) -> str:
    """``text`` (a URL, or a message quoting one) without any ``user:password@`` part of a URL (a regex, so a
    malformed URL is cleaned too)."""
    return _USERINFO.sub(r"\1", text)


def _mib(n: int) -> str:
    return (f"{n / 2**20:.1f}".rstrip("0").rstrip(".") + " MiB") if n >= 2**20 else f"{n} bytes"


def fetch_bytes(
    url: str, *, max_bytes: int | None = None, deadline: float | None = None, timeout: tuple[float, float] | None = None
) -> bytes:
    """The body of ``url`` (http/https only), at most ``max_bytes`` long, within ``deadline`` seconds.

    ``timeout`` is requests' ``(connect, read)`` pair. Defaults (read at each call): ``MAX_BYTES``,
    ``DEADLINE_S``, ``(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)`` of this module. Raises :class:`RemoteImageError`
    naming the URL.
    """
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    deadline = DEADLINE_S if deadline is None else deadline
    timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S) if timeout is None else timeout
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise RemoteImageError(
            f"cannot fetch image {shown(url)}: only http:// and https:// URLs are fetched, not {scheme}://; "
            "give a local image by its path"
        )
    state: dict[str, Any] = {}
    stop = threading.Event()
    worker = threading.Thread(
        target=_transfer, args=(url, max_bytes, timeout, stop, state), name="sadcl-fetch", daemon=True
    )
    worker.start()
    worker.join(deadline)
    if worker.is_alive():  # past the deadline: the worker stops (and closes its connection) at its next read
        stop.set()
        raise RemoteImageError(
            f"cannot fetch image {shown(url)}: not complete within the {deadline:g} s deadline "
            "(the server is too slow or does not answer)"
        )
    if "error" in state:
        raise RemoteImageError(shown(f"cannot fetch image {url}: {state['error']}")) from state.get("cause")
    return state["body"]


def _transfer(url: str, max_bytes: int, timeout: tuple[float, float], stop: threading.Event, state: dict) -> None:
    """Worker thread: GET ``url`` into ``state["body"]``, or the reason it failed into ``state["error"]``."""
    import requests  # here: importing requests costs ~0.3 s, paid only when a URL is given
    import urllib3

    from .. import __version__

    headers = {"User-Agent": f"sadcl/{__version__}", "Accept-Encoding": "identity"}
    try:
        with requests.Session() as session:
            session.max_redirects = MAX_REDIRECTS
            with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
                if stop.is_set():  # the caller gave up while this request was being made
                    return
                if response.status_code >= 400:
                    state["error"] = f"the server answered {response.status_code} {response.reason or ''}".rstrip()
                    return
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    state["error"] = (
                        f"the server announces {_mib(int(declared))}, more than the {_mib(max_bytes)} limit; "
                        "nothing was downloaded"
                    )
                    return
                body = bytearray()
                for chunk in _chunks(response):
                    if stop.is_set():
                        return
                    body += chunk
                    if len(body) > max_bytes:
                        state["error"] = f"larger than the {_mib(max_bytes)} limit; stopped reading there"
                        return
                state["body"] = bytes(body)
    except requests.exceptions.ConnectTimeout:
        state["error"] = f"no connection within {timeout[0]:g} s"
    except (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
        state["error"] = f"the server sent nothing for {timeout[1]:g} s"
    except requests.exceptions.TooManyRedirects:
        state["error"] = f"more than {MAX_REDIRECTS} redirects"
    except requests.exceptions.InvalidSchema as e:  # a redirect to file://, ftp:// …
        state["error"] = f"refused: {e}"
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        state["error"], state["cause"] = f"{type(e).__name__}: {_reason(e)}", e
    except BaseException as e:  # never a silent thread death: the caller reports it
        state["error"], state["cause"] = f"{type(e).__name__}: {e}", e


def _chunks(response: Any) -> Iterator[bytes]:
    """The body in pieces, each returned as soon as the socket has data (urllib3 2's ``read1``): a server that
    drips bytes cannot keep one read going past the deadline. Older urllib3: requests' fixed-size chunks."""
    raw = response.raw
    if not hasattr(raw, "read1"):
        yield from response.iter_content(_CHUNK)
        return
    while True:
        chunk = raw.read1(_CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


def _reason(error: BaseException) -> str:
    """The innermost message of a requests/urllib3 error (the outer ones repeat the URL and pool details)."""
    inner: BaseException = error
    for _ in range(5):  # bounded: cause chains can be cyclic
        wrapped = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None
        context = inner.__context__ if isinstance(inner.__context__, OSError) else None  # the socket's own error
        nxt = wrapped or getattr(inner, "reason", None) or inner.__cause__ or context
        if not isinstance(nxt, BaseException):
            break
        inner = nxt
    return str(inner) or type(inner).__name__


def fetch_image(url: str, **limits: Any) -> Image.Image:
    """The image at ``url`` upright in 8-bit RGB, as :func:`~sadcl.data.images.load_image` gives a file.

    ``limits``: the keywords of :func:`fetch_bytes`. Raises :class:`RemoteImageError` naming the URL.
    """
    data = fetch_bytes(url, **limits)
    name = shown(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # as load_image does for files
            with Image.open(io.BytesIO(data)) as opened:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and opened.width * opened.height > limit:
                    raise Image.DecompressionBombError(name)
                opened.load()  # decode now: truncation and corruption surface here
                image = load_image(opened)  # EXIF orientation and RGB: one home for both
                return image.copy() if image is opened else image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RemoteImageError(
            f"cannot load image {name}: it declares more pixels than PIL.Image.MAX_IMAGE_PIXELS "
            f"({Image.MAX_IMAGE_PIXELS}), possibly a decompression bomb, so it was not decoded"
        ) from None
    except ImageLoadError as e:
        raise RemoteImageError(str(e).replace("<PIL image>", name)) from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        reason = "not a recognised image file" if isinstance(e, Image.UnidentifiedImageError) else str(e)
        raise RemoteImageError(f"cannot load image {name}: {reason or type(e).__name__}") from e
