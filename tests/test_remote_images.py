"""Image URLs (``sadcl.predict`` and ``sadcl predict``): fetched from a loopback server with ``requests``,
bounded in time and size, only http(s), one line naming the URL on failure, ``--skip-bad`` skipping it."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sadcl
from sadcl.cli import main
from sadcl.data import remote
from sadcl.data.images import ImageLoadError
from sadcl.data.remote import RemoteImageError, fetch_bytes, fetch_image, is_url
from sadcl.inference import ImageSkippedWarning

CHUNK = 64 * 1024
STREAM_CHUNKS = 400  # 25 MiB offered by the endless routes, far beyond what a test lets the client read


def _png(seed: int = 0, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class ImageServer:
    """A loopback HTTP server (127.0.0.1, daemon thread) with one route per case; every handler loop is bounded
    and stops when the client goes away. ``sent[path]`` counts the body bytes written for each route."""

    def __init__(self) -> None:
        self.png = _png()
        self.sent: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                try:
                    server.route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what the size and time limits are for

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def _send(self, h: BaseHTTPRequestHandler, path: str, data: bytes) -> None:
        h.wfile.write(data)
        h.wfile.flush()
        self.sent[path] = self.sent.get(path, 0) + len(data)

    def route(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        if path == "/good.png":
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Content-Length", str(len(self.png)))
            h.end_headers()
            self._send(h, path, self.png)
        elif path == "/declared-huge.png":  # announces 1 GiB, would send it all if read
            h.send_response(200)
            h.send_header("Content-Length", str(2**30))
            h.end_headers()
            for _ in range(STREAM_CHUNKS):
                self._send(h, path, b"\0" * CHUNK)
        elif path == "/chunked-huge.png":  # no length: chunked, endless as far as the client can tell
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for _ in range(STREAM_CHUNKS):
                self._send(h, path, b"%x\r\n" % CHUNK + b"\0" * CHUNK + b"\r\n")
        elif path == "/slow.png":  # one byte every 0.1 s: each read is quick, the whole never ends in time
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            for _ in range(100):
                self._send(h, path, b"\0")
                time.sleep(0.1)
        elif path == "/page.html":
            body = b"<html><body>not an image</body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            self._send(h, path, body)
        elif path == "/to-file":
            h.send_response(302)
            h.send_header("Location", "file:///etc/passwd")
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            h.send_error(404)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with ImageServer() as s:
        yield s


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny").eval()
    from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
    from sadcl.zoo.safetensors_io import save_safetensors

    path = tmp_path / "tiny.safetensors"
    save_safetensors(export_state_dict(model), path, checkpoint_metadata(model))
    return model, path


def _one_line(err: str, prefix: str, *needles: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


# -- the fetcher ---------------------------------------------------------------------------------------------
@pytest.mark.network
def test_good_url_gives_the_same_pixels_as_the_file(server, tmp_path):
    (tmp_path / "good.png").write_bytes(server.png)
    from sadcl.data.images import load_image

    fetched = fetch_image(server.url("/good.png"))
    assert fetched.mode == "RGB" and np.array_equal(np.asarray(fetched), np.asarray(load_image(tmp_path / "good.png")))


@pytest.mark.network
def test_http_error_names_the_url_and_status(server):
    url = server.url("/missing.png")
    with pytest.raises(RemoteImageError, match=r"cannot fetch image .*/missing\.png: the server answered 404"):
        fetch_bytes(url)


@pytest.mark.network
def test_declared_length_over_the_limit_is_refused_unread(server):
    url = server.url("/declared-huge.png")
    with pytest.raises(
        RemoteImageError, match=r"declared-huge\.png: the server announces 1024 MiB, more than the 1 MiB limit"
    ):
        fetch_bytes(url, max_bytes=2**20)
    # the client never read the body: the server is stopped by the closed connection, far from its 25 MiB
    assert server.sent.get("/declared-huge.png", 0) < STREAM_CHUNKS * CHUNK


@pytest.mark.network
def test_chunked_body_over_the_limit_is_stopped_there(server):
    url = server.url("/chunked-huge.png")
    with pytest.raises(RemoteImageError, match=r"chunked-huge\.png: larger than the 1 MiB limit; stopped reading"):
        fetch_bytes(url, max_bytes=2**20)
    time.sleep(0.2)  # let the server notice the closed connection
    assert server.sent.get("/chunked-huge.png", 0) < STREAM_CHUNKS * (CHUNK + 16)


@pytest.mark.network
def test_slow_server_stops_at_the_deadline(server):
    url = server.url("/slow.png")
    start = time.monotonic()
    with pytest.raises(RemoteImageError, match=r"slow\.png: not complete within the 0\.5 s deadline"):
        fetch_bytes(url, deadline=0.5, timeout=(5, 5))  # each byte comes well within the read timeout
    assert time.monotonic() - start < 2.0


@pytest.mark.network
def test_read_timeout_names_the_url(server):
    with pytest.raises(RemoteImageError, match=r"slow\.png: the server sent nothing for 0\.05 s"):
        fetch_bytes(server.url("/slow.png"), deadline=5, timeout=(5, 0.05))


@pytest.mark.network
def test_non_image_body_is_not_an_image(server):
    with pytest.raises(RemoteImageError, match=r"cannot load image .*/page\.html: not a recognised image file"):
        fetch_image(server.url("/page.html"))


@pytest.mark.network
def test_pixel_limit_applies_to_urls(server, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 40x40 PNG now declares too many pixels
    with pytest.raises(RemoteImageError, match=r"good\.png: it declares more pixels than PIL\.Image\.MAX_IMAGE_PIXELS"):
        fetch_image(server.url("/good.png"))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1/x"])
def test_only_http_and_https_are_fetched(url):
    scheme = url.split(":")[0]
    with pytest.raises(RemoteImageError, match=f"only http:// and https:// URLs are fetched, not {scheme}://"):
        fetch_bytes(url)


@pytest.mark.network
def test_redirect_to_another_scheme_is_refused(server):
    with pytest.raises(RemoteImageError, match=r"/to-file: refused: .*file:///etc/passwd"):
        fetch_bytes(server.url("/to-file"))


def test_refused_connection_names_the_url():
    with socket.socket() as sock:  # a port nothing listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.png"
    with pytest.raises(RemoteImageError, match=rf"cannot fetch image {re.escape(url)}: ConnectionError: .*refused"):
        fetch_bytes(url, deadline=5)


def test_malformed_url_is_one_error_naming_it():
    with pytest.raises(RemoteImageError, match=r"cannot fetch image http://\[::1/x\.png: "):
        fetch_bytes("http://[::1/x.png", deadline=5)


def test_credentials_are_not_shown():
    with pytest.raises(RemoteImageError) as info:
        fetch_bytes("ftp://user:secret@127.0.0.1/x.png")
    assert "secret" not in str(info.value) and "ftp://127.0.0.1/x.png" in str(info.value)
    with pytest.raises(RemoteImageError) as info:
        fetch_bytes("http://user:secret@127.0.0.1:notaport/x.png", deadline=5)
    assert "secret" not in str(info.value) and "http://127.0.0.1:notaport/x.png" in str(info.value)


def test_what_counts_as_a_url(tmp_path):
    assert is_url("https://example.org/a.png") and is_url("ftp://x") and is_url("file:///a")
    assert not is_url("C://images/a.png") and not is_url("a.png") and not is_url(tmp_path)
    assert issubclass(RemoteImageError, ImageLoadError)  # skip_bad and the CLI treat it as an unreadable image


@pytest.mark.network
def test_library_predict_takes_urls_and_skips_bad_ones(server, tiny, tmp_path):
    model, _ = tiny
    (tmp_path / "good.png").write_bytes(server.png)
    good, missing = server.url("/good.png"), server.url("/missing.png")
    assert sadcl.predict(model, good)[0] == pytest.approx(sadcl.predict(model, tmp_path / "good.png")[0], abs=1e-6)
    with pytest.raises(RemoteImageError, match="missing.png"):
        sadcl.predict(model, [good, missing])
    with pytest.warns(ImageSkippedWarning, match=r"missing\.png: the server answered 404"):
        results = sadcl.predict(model, [missing, good], skip_bad=True)
    assert results[0] is None and results[1] is not None


# -- the command line ----------------------------------------------------------------------------------------
@pytest.mark.network
def test_cli_predict_url(server, tiny, capsys):
    _, ckpt = tiny
    url = server.url("/good.png")
    assert main(["predict", "--checkpoint", str(ckpt), "--top-k", "1", "--json", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == [url] and len(out[url]) == 1


@pytest.mark.network
def test_cli_bad_url_is_one_line_naming_it(server, tiny, capsys, tmp_path, monkeypatch):
    _, ckpt = tiny
    before = sorted(p.name for p in Path(tmp_path).iterdir())
    assert main(["predict", "--checkpoint", str(ckpt), server.url("/missing.png")]) == 2
    captured = capsys.readouterr()
    _one_line(captured.err, "sadcl predict: error: cannot fetch image ", "/missing.png", "404")
    assert captured.out == ""

    assert main(["predict", "--checkpoint", str(ckpt), "file:///etc/passwd"]) == 2
    _one_line(capsys.readouterr().err, "sadcl predict: error: ", "file:///etc/passwd", "only http:// and https://")

    monkeypatch.setattr(remote, "DEADLINE_S", 0.5)  # the module's default deadline, as predict uses it
    assert main(["predict", "--checkpoint", str(ckpt), server.url("/slow.png")]) == 2
    _one_line(capsys.readouterr().err, "sadcl predict: error: ", "/slow.png", "0.5 s deadline")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == before  # nothing written


@pytest.mark.network
def test_cli_skip_bad_skips_a_failed_url(server, tiny, capsys):
    _, ckpt = tiny
    good, missing = server.url("/good.png"), server.url("/missing.png")
    assert main(["predict", "--checkpoint", str(ckpt), "--top-k", "1", "--skip-bad", missing, good]) == 1
    captured = capsys.readouterr()
    assert [line.split(": ")[0] for line in captured.out.splitlines()] == [good]
    _one_line(captured.err, "sadcl predict: skipped: cannot fetch image ", "/missing.png", "404")
