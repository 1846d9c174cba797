"""The write side of the Hub API, added to a running ``FakeHub``: what ``HfApi.create_repo`` and
``HfApi.upload_folder`` call in huggingface_hub 2.4.0 (read from its source: ``hf_api.py``,
``_commit_api.py``, ``_upload_pipeline.py``; ``hf_xet`` is a dependency, so ``upload_folder`` takes the
pipelined path).

Endpoints:

* ``POST /api/repos/create`` ``{"name", "organization", "type"?, "visibility"?}`` → ``200 {"url"}``, or
  ``409 {"error", "url"}`` when the repo exists (``exist_ok=True`` accepts it). A new repo gets an initial
  commit holding ``.gitattributes``, as on the Hub.
* ``POST /api/validate-yaml`` ``{"content", "repoType"}`` → ``200 {"errors": [], "warnings": []}``, or
  ``400`` with ``errors`` when the README's front matter is not a YAML mapping (``upload_folder`` checks
  ``README.md`` before anything else).
* ``POST /api/models/{repo}/preupload/{revision}`` ``{"files": [{"path", "sample", "size"}]}`` →
  ``{"files": [{"path", "uploadMode": "regular", "shouldIgnore": false, "oid"}]}``; ``oid`` is the git
  blob id of the file already at that revision, which lets the client skip unchanged files.
* ``POST /api/models/{repo}/commit/{revision}``, ndjson: a ``header`` line (``summary``, ``description``,
  ``parentCommit``?) then ``file`` lines (``path``, base64 ``content``) → ``{"success", "commitOid", "commitUrl"}``.
* ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{revision}`` (``repo_info``) →
  ``{"id", "sha", "private", "siblings"}``: ``upload_folder`` asks for it when nothing changed, and
  ``create_repo(exist_ok=True)`` when creation is refused with 401/403.

Every file is requested inline (``uploadMode: regular``): answering ``lfs`` would send the client to the
Xet protocol, which cannot be served locally. Committed files are published with ``FakeHub.add_file``,
so ``hf_hub_download`` serves them at the new commit; files matching the Hub's default LFS patterns
(``.gitattributes``) are served as LFS files (302 to the blob host), as the Hub does. Writes need an
``Authorization: Bearer …`` header (401 otherwise), like the Hub.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlsplit

from hubserver import FakeHub

__all__ = ["Commit", "HubUploads"]

GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.bin",
        "*.ckpt",
        "*.h5",
        "*.msgpack",
        "*.onnx",
        "*.pt",
        "*.pth",
        "*.safetensors",
        "*.tar",
        "*.zip",
    )
)
_LFS_PATTERNS = tuple(line.split()[0] for line in GITATTRIBUTES.splitlines())
_REPO_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<action>preupload|commit|revision)/(?P<rev>.+))?$")

Answer = tuple[int, dict[str, str], bytes]


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _json(status: int, payload: object, **headers: str) -> Answer:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()


@dataclass
class Commit:
    """One commit received through ``/commit``: what the tests inspect."""

    repo_id: str
    revision: str
    oid: str
    summary: str
    files: dict[str, bytes] = field(default_factory=dict)


class HubUploads:
    """Serve the upload API on a running :class:`FakeHub` (``HubUploads(hub).install()``)."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.private: dict[str, bool] = {}  # repos created through the API -> private?
        self.heads: dict[tuple[str, str], str] = {}  # (repo, branch) -> commit
        self.trees: dict[str, dict[str, str]] = {}  # commit -> path -> git oid
        self.commits: list[Commit] = []
        self.refuse_create: int | None = None  # an HTTP status to answer every repo creation with (e.g. 403)
        self._lock = threading.Lock()

    def install(self) -> HubUploads:
        server = self.hub._server
        if server is None:
            raise RuntimeError("start the FakeHub before installing the upload API")
        # FakeHub builds its handler class in start(); the server looks the class up for every request,
        # so extending it on a running server takes effect for the next connection.
        server.RequestHandlerClass = _with_write_api(server.RequestHandlerClass, self)
        return self

    # ------------------------------------------------------------------ routing
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Answer | None:
        """Answer a write-API request, or return None to leave it to FakeHub (downloads)."""
        path = urlsplit(raw_path).path
        if method == "POST" and path == "/api/repos/create":
            return self._authorised(headers) or self._create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        route = _REPO_ROUTE.match(path)
        if route is None:
            return None
        repo_id, action = unquote(route["repo"]), route["action"]
        revision = unquote(route["rev"]) if route["rev"] else "main"
        if method == "GET" and action in (None, "revision"):
            return self._repo_info(repo_id, revision)
        if method == "POST" and action == "preupload":
            return self._authorised(headers) or self._preupload(repo_id, revision, json.loads(body))
        if method == "POST" and action == "commit":
            return self._authorised(headers) or self._commit(repo_id, revision, body)
        return None

    @staticmethod
    def _authorised(headers: dict[str, str]) -> Answer | None:
        if not headers.get("authorization", "").startswith("Bearer "):
            return _json(
                401,
                {"error": "Invalid credentials in Authorization header"},
                **{"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        return None

    def _head(self, repo_id: str, revision: str) -> tuple[str | None, Answer | None]:
        if repo_id not in self.private:
            return None, _json(
                404,
                {"error": "Repository not found"},
                **{"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            )
        commit = self.heads.get((repo_id, revision), revision if revision in self.trees else None)
        if commit is None:
            return None, _json(
                404,
                {"error": f"Invalid rev id: {revision}"},
                **{"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"},
            )
        return commit, None

    # ------------------------------------------------------------------ endpoints
    def _create(self, payload: dict) -> Answer:
        if self.refuse_create is not None:
            message = "You don't have the rights to create a model under this namespace"
            return _json(self.refuse_create, {"error": message}, **{"X-Error-Message": message})
        if payload.get("type") not in (None, "model") or not payload.get("organization"):
            return _json(400, {"error": "FakeHub creates model repos named org/name only"})
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        with self._lock:
            if repo_id in self.private:
                return _json(409, {"error": "You already created this model repo", "url": url})
            self.private[repo_id] = payload.get("visibility") == "private"
            self._store(repo_id, "main", None, "initial commit", {".gitattributes": GITATTRIBUTES.encode()})
        return _json(200, {"url": url, "name": repo_id})

    @staticmethod
    def _validate_yaml(payload: dict) -> Answer:
        import yaml

        content = payload.get("content", "")
        if content.startswith("---\n"):
            front, sep, _ = content[4:].partition("\n---")
            try:
                data = yaml.safe_load(front) if sep else None
            except yaml.YAMLError as e:
                return _json(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
            if not isinstance(data, dict):
                return _json(400, {"errors": [{"message": "the front matter must be a YAML mapping"}], "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> Answer:
        with self._lock:
            commit, error = self._head(repo_id, revision)
            if error:
                return error
            tree = self.trees[commit]
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": tree.get(f["path"])}
                for f in payload["files"]
            ]
        return _json(200, {"files": files, "commitOid": commit})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> Answer:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return _json(400, {"error": "a commit starts with a header line"})
        header, files = lines[0]["value"], {}
        for line in lines[1:]:
            value = line.get("value", {})
            if line.get("key") != "file" or value.get("encoding") != "base64":
                return _json(
                    400,
                    {
                        "error": f"FakeHub accepts inline base64 files only, got {line.get('key')!r} "
                        f"for {value.get('path')!r}"
                    },
                )
            files[value["path"]] = base64.b64decode(value["content"])
        if not files:
            return _json(400, {"error": "empty commit"})
        with self._lock:
            parent, error = self._head(repo_id, revision)
            if error:
                return error
            if header.get("parentCommit") not in (None, parent):
                return _json(412, {"error": f"parent commit {header['parentCommit']} is not the head {parent}"})
            oid = self._store(repo_id, revision, parent, header.get("summary", ""), files)
        url = f"{self.hub.endpoint}/{repo_id}/commit/{oid}"
        return _json(200, {"success": True, "commitOid": oid, "commitUrl": url, "hookOutput": ""})

    def _repo_info(self, repo_id: str, revision: str) -> Answer:
        with self._lock:
            commit, error = self._head(repo_id, revision)
            if error:
                return error
            siblings = [{"rfilename": path} for path in sorted(self.trees[commit])]
            return _json(200, {"id": repo_id, "sha": commit, "private": self.private[repo_id], "siblings": siblings})

    # ------------------------------------------------------------------ storage
    def _store(self, repo_id: str, branch: str, parent: str | None, summary: str, files: dict[str, bytes]) -> str:
        """Record a commit and publish its files on the FakeHub (caller holds the lock)."""
        seed = json.dumps([repo_id, parent, summary, sorted((p, _git_oid(c)) for p, c in files.items())])
        oid = hashlib.sha1(seed.encode()).hexdigest()
        tree = dict(self.trees.get(parent, {}))
        for path, content in files.items():
            # add_file with a new commit copies the branch's previous files into it, as a git commit would.
            self.hub.add_file(
                repo_id,
                path,
                content,
                revision=branch,
                commit=oid,
                lfs=any(fnmatch.fnmatch(path, p) for p in _LFS_PATTERNS),
            )
            tree[path] = _git_oid(content)
        self.trees[oid] = tree
        self.heads[(repo_id, branch)] = oid
        self.commits.append(Commit(repo_id, branch, oid, summary, dict(files)))
        return oid


def _with_write_api(base: type[BaseHTTPRequestHandler], uploads: HubUploads) -> type[BaseHTTPRequestHandler]:
    class Handler(base):  # type: ignore[valid-type, misc]
        def _write_api(self) -> bool:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer = uploads.handle(self.command, self.path, headers, body)
            if answer is None:
                return False
            uploads.hub.requests.append((self.command, self.path))
            uploads.hub.request_headers.append(headers)
            status, out_headers, payload = answer
            self.send_response(status)
            for name, value in out_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return True

        def do_GET(self) -> None:
            if not self._write_api():
                super().do_GET()

        def do_POST(self) -> None:
            if not self._write_api():
                uploads.hub.requests.append((self.command, self.path))
                self.send_response(404)
                self.send_header("X-Error-Message", f"FakeHub does not serve POST {self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

    return Handler
