"""A loopback HTTP server that speaks the Hugging Face Hub's file-download protocol.

The Hub cannot be reached from the test machines, and mocking ``hf_hub_download`` would test nothing
of what users run. ``FakeHub`` lets the *real* client talk to ``http://127.0.0.1:<port>`` instead
(see ANCHORS.md, Part 1 (b)). It implements only what ``hf_hub_download`` needs:

* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` answering with ``X-Repo-Commit``,
  ``ETag`` and ``Content-Length`` (regular files), or with a ``302`` to a blob route plus
  ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size`` (LFS files, as the real Hub does);
* the blob route ``/lfs-blobs/{sha256}``, reached through a *different host name* (``localhost``
  when the endpoint uses ``127.0.0.1``): huggingface_hub 2.x follows same-host redirects on HEAD
  and would then read the metadata from the blob's answer, whereas the real Hub redirects to a CDN;
* the Hub's error codes: ``EntryNotFound``, ``RevisionNotFound`` (404) and ``RepoNotFound`` (401);
* ``GET /api/agent-harnesses`` (an empty registry), which huggingface_hub 2.x asks for once per process.

It never sends Xet headers (``X-Xet-Hash``...), which would switch the client to the Xet protocol.
``snapshot_download`` is not supported (it also needs the ``/api/models`` routes).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

__all__ = ["EMPTY_AGENT_REGISTRY", "FakeHub"]

_BLOB_PREFIX = "/lfs-blobs/"
_STALL_MAX_S = 30.0  # a stalled answer ends after this long at the latest (or at stop())
EMPTY_AGENT_REGISTRY = {"standardEnvVars": [], "harnesses": {}}


def _git_blob_sha1(content: bytes) -> str:
    """The git object id of a file: the ETag the Hub sends for files stored in git (not LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _RepoFile:
    """One file of one commit. ``sha256``/``size`` are what the Hub *claims*; ``blob`` is what it serves."""

    sha256: str
    size: int
    git_sha1: str
    lfs: bool
    blob: bytes


@dataclass
class _Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, dict[str, _RepoFile]] = field(default_factory=dict)  # commit -> filename -> file


class FakeHub:
    """A Hub look-alike on ``127.0.0.1:<free port>``, served from a daemon thread.

    Usage::

        with FakeHub() as hub:
            commit = hub.add_file("org/repo", "model.safetensors", data)
            # point huggingface_hub at hub.endpoint, then call hf_hub_download(...)
            hub.requests  # [("HEAD", "/org/repo/resolve/<commit>/model.safetensors"), ("GET", ...)]
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        # The LFS redirect must leave the endpoint's origin (see module docstring).
        self.blob_host = "localhost" if host == "127.0.0.1" else "127.0.0.1"
        self.requests: list[tuple[str, str]] = []  # (method, raw path), in arrival order
        self.request_headers: list[dict[str, str]] = []  # headers of each request (lower-case names), same order
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 -> served bytes (shared by files with equal content)
        self._lock = threading.Lock()
        self._commit_counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.stall: str | None = None  # see stall_answers()
        self.trickle_interval = 0.5
        self._released = threading.Event()  # set by stop(): ends stalled answers

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeHub:
        """Bind a free port and serve in a daemon thread. Idempotent."""
        if self._server is None:
            self._released.clear()
            self._server = ThreadingHTTPServer((self.host, 0), _make_handler(self))
            self._server.daemon_threads = True
            # A short poll interval keeps stop() (called by every test's teardown) fast.
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.02,), name="FakeHub", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket, so that later connections are refused. Idempotent."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeHub is not running: call start() or use it as a context manager")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """The value for ``HF_ENDPOINT`` / ``huggingface_hub.constants.ENDPOINT``."""
        return f"http://{self.host}:{self.port}"

    def stall_answers(self, mode: str | None, *, interval: float = 0.5) -> None:
        """Behave like a dead or slow server: ``"silent"`` accepts connections but never answers, ``"trickle"``
        sends every body one byte per ``interval`` seconds, ``None`` serves normally again. A stalled answer
        ends when the client goes away, at :meth:`stop`, or after 30 s."""
        if mode not in (None, "silent", "trickle"):
            raise ValueError(f"mode must be None, 'silent' or 'trickle', got {mode!r}")
        self.stall, self.trickle_interval = mode, interval

    # ------------------------------------------------------------------ content
    def add_file(
        self,
        repo_id: str,
        filename: str,
        content: bytes,
        *,
        revision: str = "main",
        commit: str | None = None,
        lfs: bool = True,
    ) -> str:
        """Publish ``content`` as ``filename`` in ``repo_id`` at ``revision``; return the commit sha.

        With ``commit=None`` the file joins the commit ``revision`` already points to (a new commit is
        generated for a new revision). With a new ``commit``, the revision moves to it and keeps the
        files of its previous commit, as a git push would.
        """
        content = bytes(content)
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            previous = repo.refs.get(revision)
            if commit is None:
                seed = f"{repo_id}@{revision}#{next(self._commit_counter)}"
                commit = previous or hashlib.sha1(seed.encode()).hexdigest()
            if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
                raise ValueError(f"commit must be 40 lower-case hex characters, got {commit!r}")
            if commit not in repo.commits:
                repo.commits[commit] = dict(repo.commits[previous]) if previous else {}
            sha256 = hashlib.sha256(content).hexdigest()
            repo.commits[commit][filename] = _RepoFile(sha256, len(content), _git_blob_sha1(content), lfs, content)
            if lfs:
                self._blobs[sha256] = content
            repo.refs[revision] = commit
        return commit

    def _file(self, repo_id: str, filename: str, revision: str = "main") -> _RepoFile:
        try:
            repo = self._repos[repo_id]
            return repo.commits[repo.refs.get(revision, revision)][filename]
        except KeyError:
            raise KeyError(f"FakeHub has no {filename!r} in {repo_id!r} at {revision!r}") from None

    def _set_served_bytes(self, repo_id: str, filename: str, revision: str, data: bytes) -> None:
        with self._lock:
            f = self._file(repo_id, filename, revision)
            f.blob = data
            if f.lfs:
                self._blobs[f.sha256] = data

    def corrupt(self, repo_id: str, filename: str, *, revision: str = "main") -> None:
        """Flip the bits of the served bytes, keeping the size and the advertised sha256/size headers."""
        f = self._file(repo_id, filename, revision)
        self._set_served_bytes(repo_id, filename, revision, bytes(b ^ 0xFF for b in f.blob))

    def truncate(self, repo_id: str, filename: str, *, revision: str = "main", keep: int | None = None) -> None:
        """Serve only the first ``keep`` bytes (default: half) while still advertising the full size."""
        f = self._file(repo_id, filename, revision)
        keep = f.size // 2 if keep is None else keep
        self._set_served_bytes(repo_id, filename, revision, f.blob[:keep])

    def restore(self, repo_id: str, filename: str, content: bytes, *, revision: str = "main") -> None:
        """Serve ``content`` again (undo ``corrupt``/``truncate``); it must match the advertised sha256."""
        if hashlib.sha256(content).hexdigest() != self._file(repo_id, filename, revision).sha256:
            raise ValueError("restore() needs the originally published content")
        self._set_served_bytes(repo_id, filename, revision, bytes(content))

    # ------------------------------------------------------------------ routing
    def _resolve(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """Answer ``/{repo_id}/resolve/{revision}/{filename}``: (status, headers, body)."""
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        repo_id, revision, filename = unquote(repo_id), unquote(revision), unquote(filename)
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                # The Hub answers 401 (not 404) so as not to reveal whether a private repo exists.
                return 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""
            commit = repo.refs.get(revision, revision if revision in repo.commits else None)
            if commit is None:
                return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b""
            f = repo.commits[commit].get(filename)
            if f is None:
                # X-Repo-Commit lets the client cache the absence under .no_exist/<commit>/.
                return (
                    404,
                    {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit},
                    b"",
                )
            headers = {"X-Repo-Commit": commit, "ETag": f'"{f.git_sha1}"'}
            if f.lfs:
                headers.update(self._lfs_headers(f))
                headers["Location"] = f"http://{self.blob_host}:{self.port}{_BLOB_PREFIX}{f.sha256}"
                return 302, headers, b""
            return 200, headers, f.blob

    def _blob(self, path: str) -> tuple[int, dict[str, str], bytes]:
        sha256 = path[len(_BLOB_PREFIX) :]
        with self._lock:
            owner = next(
                (
                    (c, f)
                    for r in self._repos.values()
                    for c, files in r.commits.items()
                    for f in files.values()
                    if f.lfs and f.sha256 == sha256
                ),
                None,
            )
            if owner is None:
                return 404, {}, b""
            commit, f = owner
            # Commit and linked headers on the blob too: a client that did follow the redirect still works.
            headers = {"X-Repo-Commit": commit, "ETag": f'"{sha256}"', **self._lfs_headers(f)}
            return 200, headers, self._blobs[sha256]

    @staticmethod
    def _lfs_headers(f: _RepoFile) -> dict[str, str]:
        return {"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)}

    def handle(self, method: str, raw_path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.requests.append((method, raw_path))
            self.request_headers.append({name.lower(): value for name, value in headers.items()})
        path = urlsplit(raw_path).path
        if path == "/api/agent-harnesses":
            # huggingface_hub 2.x fetches this registry once per process (for its User-Agent) unless
            # $HF_HOME/.agent_harnesses.json is fresh; an empty registry means "no agent detected".
            return 200, {"Content-Type": "application/json"}, json.dumps(EMPTY_AGENT_REGISTRY).encode()
        if path.startswith(_BLOB_PREFIX):
            return self._blob(path)
        if "/resolve/" in path:
            return self._resolve(path)
        return 404, {"X-Error-Message": f"FakeHub does not serve {path}"}, b""


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a stopped server cannot keep answering on a pooled
        # keep-alive connection (ANCHORS.md Part 1 (b)).
        protocol_version = "HTTP/1.0"

        def _answer(self, with_body: bool) -> None:
            if hub.stall == "silent":
                with hub._lock:
                    hub.requests.append((self.command, self.path))
                hub._released.wait(_STALL_MAX_S)
                return  # the connection closes without an answer
            status, headers, body = hub.handle(self.command, self.path, dict(self.headers.items()))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body and body and hub.stall == "trickle":
                started = time.monotonic()
                for i in range(len(body)):
                    if hub._released.wait(hub.trickle_interval) or time.monotonic() - started > _STALL_MAX_S:
                        return
                    try:
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
            elif with_body and body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # http.server dispatches on the method name
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

    return Handler
