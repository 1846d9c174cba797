"""Every transfer between sadcl and the Hugging Face Hub: downloads with a deadline, their errors, publishing.

Downloads go through :func:`hub_download`, a thin wrapper of the real :func:`huggingface_hub.hf_hub_download`
(so ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``cache_dir`` behave as in every Hub library)
that adds what huggingface_hub lacks:

* an overall deadline per file (``timeout=``, else ``SADCL_DOWNLOAD_TIMEOUT``, else 600 s). huggingface_hub only
  bounds each socket read, so a server trickling a byte every few seconds, or one that never answers and is
  retried, keeps a download going for many minutes. Two event hooks on huggingface_hub's HTTP client (installed
  by wrapping its client factory) enforce the deadline: every request's timeouts are cut to the time left, every
  received chunk checks the clock, and no request starts after the deadline. A worker thread bounds the rest
  (name resolution, a cache lock held by another process): the caller gets its error at the deadline even then;
* failing fast when the endpoint cannot be reached: huggingface_hub retries a refused connection for ~23 s; the
  hooks stop at the first retry of a request that got no answer at all;
* one error mapper, :func:`hub_error_message`: one line naming the file, repository, revision, endpoint and
  cache, and saying what to do.

huggingface_hub writes each download to a uniquely named ``.incomplete`` file and renames it into the cache
only once its size matches, so a download stopped at the deadline leaves nothing that could be loaded.

Publishing (:func:`push_to_hub`, ``sadcl push``) uploads exactly the files ``sadcl export`` recorded in
``config.json`` (:func:`export_manifest`), each checked against its recorded sha256 and size, into a repository
that is private unless ``public=True`` (``--public``) is given.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import httpx2  # the HTTP client of huggingface_hub 2.x (1.x used httpx and leaves .incomplete blobs behind)

from .. import __version__
from .export import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Export,
    ExportError,
    export_manifest,
    export_section,
    parse_export,
    read_export_config,
)
from .weights import COMMIT_RE, ChecksumError, WeightsDownloadError, WeightsRecord, _cache_root, evict, verify_file

__all__ = [
    "DEFAULT_DOWNLOAD_TIMEOUT_S",
    "DOWNLOAD_TIMEOUT_ENV",
    "PublishError",
    "download_deadline",
    "download_timeout",
    "download_export",
    "hub_download",
    "hub_error_message",
    "push_to_hub",
]

DEFAULT_DOWNLOAD_TIMEOUT_S = 600.0
DOWNLOAD_TIMEOUT_ENV = "SADCL_DOWNLOAD_TIMEOUT"
# A request's socket timeouts end this long after the deadline, so that the error raised is the deadline's.
_TIMEOUT_SLACK_S = 0.05
# The worker thread gets this long past the deadline to stop through the hooks before it is abandoned.
_ABANDON_GRACE_S = 0.5


# ----------------------------------------------------------------------------- deadline
def download_timeout(timeout: float | None = None) -> float:
    """The deadline of one download, in seconds: ``timeout``, else ``$SADCL_DOWNLOAD_TIMEOUT``, else 600."""
    if timeout is not None:
        return _positive_seconds(timeout, "timeout", timeout)
    text = os.environ.get(DOWNLOAD_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_DOWNLOAD_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return _positive_seconds(value, DOWNLOAD_TIMEOUT_ENV, text)


def _positive_seconds(value: object, name: str, given: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {given!r}")
    return float(value)


class _DeadlineExceeded(Exception):
    """Raised inside huggingface_hub's client when a download's deadline has passed (not retried by it)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no complete download within {seconds:g} s")
        self.seconds = seconds


class _Unreachable(Exception):
    """Raised instead of retrying a request that got no answer at all (connection refused or failed)."""


class _Budget:
    """The deadline and fail-fast state of one download, seen by the HTTP hooks through a context variable."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.expired = False
        self.last_url: str | None = None  # for messages about downloads made by others (timm)
        self._unanswered: set[tuple[str, str]] = set()

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        if self.expired or self.remaining() <= 0:
            self.expired = True
            raise _DeadlineExceeded(self.seconds or 0.0)

    def before_request(self, request: httpx2.Request) -> None:
        self.check()
        key = (request.method, str(request.url))
        self.last_url = str(request.url)
        if key in self._unanswered:  # the same request failed without any answer: the endpoint is unreachable
            raise _Unreachable(f"{request.method} {request.url.scheme}://{request.url.netloc.decode()} got no answer")
        self._unanswered.add(key)
        request.extensions["sadcl_budget"] = self
        if self.deadline is not None:
            limit = self.remaining() + _TIMEOUT_SLACK_S
            timeouts = request.extensions.get("timeout") or {}
            request.extensions["timeout"] = {
                name: limit if timeouts.get(name) is None else min(timeouts[name], limit)
                for name in ("connect", "read", "write", "pool")
            }

    def after_response(self, response: httpx2.Response) -> None:
        self._unanswered.discard((response.request.method, str(response.request.url)))
        if self.deadline is not None:
            response.stream = _DeadlineStream(response.stream, self)


_BUDGET: ContextVar[_Budget | None] = ContextVar("sadcl_download_budget", default=None)
_install_lock = threading.Lock()


class _DeadlineStream(httpx2.SyncByteStream):
    """A response body that stops at the deadline: checked on every chunk, and a read timeout past it
    becomes the deadline error (which huggingface_hub does not retry)."""

    def __init__(self, inner: httpx2.SyncByteStream, budget: _Budget) -> None:
        self._inner, self._budget = inner, budget

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._budget.check()
                yield chunk
        except httpx2.TimeoutException as e:
            if self._budget.remaining() <= 0:
                raise _DeadlineExceeded(self._budget.seconds or 0.0) from e
            raise

    def close(self) -> None:
        self._inner.close()


def _on_request(request: httpx2.Request) -> None:
    budget = _BUDGET.get()
    if budget is not None:  # outside hub_download/download_deadline, huggingface_hub behaves as usual
        budget.before_request(request)


def _on_response(response: httpx2.Response) -> None:
    budget = response.request.extensions.get("sadcl_budget")
    if budget is not None:
        budget.after_response(response)


def _install_hooks() -> None:
    """Add the deadline hooks to every client huggingface_hub creates, keeping any user-set client factory."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    with _install_lock:
        current: Callable[[], httpx2.Client] = (
            getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory
        )
        if getattr(current, "_sadcl_deadline_hooks", False):
            return

        def factory() -> httpx2.Client:
            client = current()
            hooks = client.event_hooks
            client.event_hooks = {
                "request": [*hooks["request"], _on_request],
                "response": [*hooks["response"], _on_response],
            }
            return client

        factory._sadcl_deadline_hooks = True  # type: ignore[attr-defined]
        set_client_factory(factory)  # also closes the current client, so the next request uses the hooks


@contextmanager
def _budget_scope(budget: _Budget) -> Iterator[_Budget]:
    _install_hooks()
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


@contextmanager
def download_deadline(what: str, *, timeout: float | None = None) -> Iterator[None]:
    """Every Hub request made in this thread inside the block shares one deadline (``timeout`` seconds, default
    :func:`download_timeout`), a request that got no answer at all is not retried, and a Hub failure becomes
    one :class:`WeightsDownloadError` line about ``what``.

    :func:`hub_download` is the way to download a file; this is for downloads made by others, e.g. timm's
    backbone weights::

        with download_deadline("the ImageNet weights of backbone 'resnet50'"):
            timm.create_model("resnet50", pretrained=True)
    """
    budget = _Budget(download_timeout(timeout))
    try:
        with _budget_scope(budget):
            yield
    except Exception as e:
        if not _is_hub_failure(e):
            raise
        subject = f"{what} ({budget.last_url})" if budget.last_url else what
        raise WeightsDownloadError(hub_error_message(e, what=subject, cache_root=_cache_root(None))) from e


# ----------------------------------------------------------------------------- download
def hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    what: str,
    instead: str | None = None,
    if_missing: str | None = None,
) -> Path:
    """Download (or find in the Hub cache) one file, within an overall deadline; the one way sadcl downloads.

    Args:
        repo_id, filename, revision, cache_dir: as for :func:`huggingface_hub.hf_hub_download`.
        timeout: overall deadline in seconds (default ``$SADCL_DOWNLOAD_TIMEOUT``, else 600 s).
        what: what the file is, for messages (``"the checkpoint of 'sadcl_coco_448'"``).
        instead: what the user can do without the download (``"pass checkpoint_path=<file>"``).
        if_missing: what a missing repository/revision/file means here and what to do.

    Returns:
        The path of the complete file in the Hub cache (not yet checked against any sha256: callers do that).

    Raises:
        WeightsDownloadError: one line from :func:`hub_error_message`; the original error is its ``__cause__``.
    """
    from huggingface_hub import hf_hub_download

    seconds = download_timeout(timeout)
    budget = _Budget(seconds)
    outcome: dict[str, Any] = {}

    def work() -> None:  # in a thread of its own, so that the caller's wait is bounded whatever blocks
        try:
            with _budget_scope(budget):
                outcome["path"] = hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    library_name="sadcl",
                    library_version=__version__,
                )
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=work, name=f"sadcl-download:{repo_id}/{filename}", daemon=True)
    worker.start()
    abandoned = True
    try:
        worker.join(budget.remaining() + _ABANDON_GRACE_S)
        abandoned = worker.is_alive()
    finally:
        if abandoned:  # past the deadline (or interrupted): the hooks stop its next request or chunk
            budget.expired = True
    error = _DeadlineExceeded(seconds) if abandoned else outcome.get("error")
    if error is None:
        return Path(outcome["path"])
    message = hub_error_message(
        error,
        what=what,
        repo_id=repo_id,
        filename=filename,
        revision=revision,
        cache_root=_cache_root(cache_dir),
        instead=instead,
        if_missing=if_missing,
    )
    raise WeightsDownloadError(message) from error


def _is_hub_failure(error: BaseException) -> bool:
    """True for the errors a Hub download raises (huggingface_hub's, the HTTP client's, the deadline's)."""
    from huggingface_hub import errors

    return isinstance(
        error,
        (
            _DeadlineExceeded,
            _Unreachable,
            httpx2.TransportError,
            errors.HfHubHTTPError,
            errors.LocalEntryNotFoundError,
            errors.OfflineModeIsEnabled,
        ),
    ) or (isinstance(error, OSError) and "Consistency check failed" in str(error))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _network_reason(error: BaseException | None) -> str | None:
    """Why the endpoint could not be reached, when ``error`` (or its cause) is a network failure."""
    import httpx2

    while error is not None:
        if isinstance(error, _Unreachable):
            return "no answer: the connection was refused, failed or timed out"
        if isinstance(error, httpx2.ProxyError):
            return f"the proxy failed: {_first_line(error)}"
        if isinstance(error, httpx2.ConnectTimeout):
            return "connecting timed out"
        if isinstance(error, (httpx2.ConnectError, httpx2.NetworkError, ConnectionError)):
            return f"connection failed: {_first_line(error)}"
        if isinstance(error, httpx2.TimeoutException):
            return "the request timed out"
        error = error.__cause__
    return None


def hub_error_message(
    error: BaseException,
    *,
    what: str,
    cache_root: Path,
    repo_id: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
    instead: str | None = None,
    if_missing: str | None = None,
) -> str:
    """One line for any failure of a Hub download: what was fetched, from where, why it failed, what to do.

    ``repo_id``/``filename``/``revision`` name the file when known (always, for :func:`hub_download`).
    """
    from huggingface_hub import constants, errors

    endpoint = constants.ENDPOINT
    subject = (
        what if repo_id is None else (f"{what} ({filename} in Hub repo {repo_id!r} at revision {revision or 'main'})")
    )
    repo = f"repository {repo_id!r}" if repo_id else "the repository"
    alternative = f", or {instead}" if instead else ""
    missing = f" {if_missing}" if if_missing else ""
    offline_hint = "set HF_HUB_OFFLINE=1 to use only the files already in the cache"
    cause = error.__cause__
    status = getattr(getattr(error, "response", None), "status_code", None)

    if isinstance(error, _DeadlineExceeded):
        return (
            f"cannot download {subject} from {endpoint}: it did not complete within the {error.seconds:g} s "
            f"download deadline (the server is too slow or does not answer), so nothing was stored in the cache "
            f"directory {cache_root}. Allow more time with {DOWNLOAD_TIMEOUT_ENV}=<seconds>, check the network, "
            f"or {offline_hint}{alternative}."
        )
    if isinstance(error, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)) and constants.is_offline_mode():
        return (
            f"cannot load {subject}: HF_HUB_OFFLINE is set and the file is not in the cache directory "
            f"{cache_root}. Download it once with network access (unset HF_HUB_OFFLINE), point "
            f"HF_HUB_CACHE/cache_dir at a cache that holds it{alternative}."
        )
    reason = _network_reason(error)
    if reason is not None:
        return (
            f"cannot download {subject}: the Hub at {endpoint} cannot be reached ({reason}) and the file is not "
            f"in the cache directory {cache_root}. Check the network (HF_ENDPOINT, proxies), or {offline_hint}"
            f"{alternative}."
        )
    if isinstance(error, errors.LocalEntryNotFoundError):  # the HEAD request failed for another reason
        if isinstance(cause, errors.HfHubHTTPError):
            code = getattr(getattr(cause, "response", None), "status_code", "?")
            why = f"the Hub at {endpoint} answered HTTP {code}"
        elif isinstance(cause, errors.FileMetadataError):
            why = f"{endpoint} does not answer like a Hugging Face Hub (check HF_ENDPOINT and proxies)"
        else:
            why = f"the Hub at {endpoint} could not be asked ({_first_line(cause or error)})"
        return (
            f"cannot download {subject}: {why} and the file is not in the cache directory {cache_root}. "
            f"Try again later, or {offline_hint}{alternative}."
        )
    if isinstance(error, errors.GatedRepoError):
        return (
            f"cannot download {subject}: {repo} on {endpoint} is gated: accept its conditions "
            f"on its Hub page and log in (hf auth login or HF_TOKEN){alternative}."
        )
    if isinstance(error, errors.RepositoryNotFoundError):
        return (
            f"cannot download {subject}: {repo} was not found on {endpoint} (it does not "
            f"exist, or it is private and no valid token was sent). Check HF_ENDPOINT and your token.{missing}"
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return (
            f"cannot download {subject}: revision {revision or 'main'} does not exist in {repo} on {endpoint}.{missing}"
        )
    if isinstance(error, errors.RemoteEntryNotFoundError):
        name = repr(filename) if filename else "of that name"
        return f"cannot download {subject}: the repository has no file {name} at that revision on {endpoint}.{missing}"
    if isinstance(error, OSError) and "Consistency check failed" in str(error):
        return (
            f"the download of {subject} was incomplete (the file is shorter than announced), so nothing was "
            f"stored in the cache directory {cache_root}. Run again; if it persists, check your proxy."
        )
    if isinstance(error, errors.HfHubHTTPError) and status is not None:
        return (
            f"cannot download {subject}: the Hub at {endpoint} answered HTTP {status} "
            f"({_first_line(error)}). Try again later, or {offline_hint}{alternative}."
        )
    return (
        f"cannot download {subject} from {endpoint} into the cache directory {cache_root}: "
        f"{type(error).__name__}: {_first_line(error)}"
    )


# ----------------------------------------------------------------------------- publishing
class PublishError(RuntimeError):
    """An export folder could not be pushed to the Hub (nothing, or nothing more, was uploaded)."""


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise PublishError(f"export folder not found: {folder}")
    try:
        return read_export_config(folder / CONFIG_NAME)
    except ExportError as e:
        raise PublishError(f"{e}; push a folder written by `sadcl export MODEL DIR`") from None


def _publish_error_message(folder: Path, repo_id: str, endpoint: str, error: BaseException) -> str:
    from huggingface_hub import constants, errors

    head = f"could not push {folder} to {repo_id} on {endpoint}"
    if isinstance(error, errors.OfflineModeIsEnabled) or constants.is_offline_mode():
        return f"{head}: HF_HUB_OFFLINE is set, and publishing needs the network; unset HF_HUB_OFFLINE and run again"
    reason = _network_reason(error)
    if reason is not None:
        return (
            f"{head}: the Hub cannot be reached ({reason}). Check the network (HF_ENDPOINT, proxies) and "
            "run again; nothing was published"
        )
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        return (
            f"{head}: HTTP {status}, the Hub refused the token ({_first_line(error)}). Log in with "
            "`hf auth login` or pass a write token that may write to this repository (token=<token>)"
        )
    if status is not None:
        return f"{head}: HTTP {status} ({_first_line(error)})"
    return f"{head}: {type(error).__name__}: {_first_line(error)}"


def push_to_hub(
    export_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    public: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Upload exactly the files of an export folder to the Hub; return (and print) its ``weights.json`` record.

    Only the files the export's ``config.json`` lists (:func:`export_manifest`) are uploaded, each checked
    against its recorded sha256 and size first; anything else in the folder (a ``.env``, notes) stays local.
    The file list is printed before uploading. A new repository is created private unless ``public=True``;
    pushing into an existing public repository also needs ``public=True``. The commit goes to ``revision``
    (an existing branch; default ``main``), and the record pins it.

    Returns:
        ``{"hf_hub_id", "filename", "revision", "sha256", "size"}``, valid as a :class:`WeightsRecord`.

    Raises:
        PublishError: not an export, a file differs from its record, or the Hub refused or cannot be reached.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(export_dir).expanduser()
    config = _read_config(folder)
    try:
        manifest = export_manifest(config, folder)
    except ExportError as e:
        raise PublishError(str(e)) from None
    operations = []
    for name, record in manifest.items():
        path = folder / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise PublishError(
                f"{folder} is not a complete export: {name} is missing; run `sadcl export` again"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise PublishError(f"{path} is not a regular file (a link or special file); refusing to publish it")
        op = CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        if record is not None and (
            op.upload_info.size != record["size"] or op.upload_info.sha256.hex() != record["sha256"]
        ):
            raise PublishError(
                f"{path} changed since `sadcl export` wrote it (its size or sha256 differs from "
                f"{CONFIG_NAME}); run `sadcl export` again"
            )
        operations.append(op)
    weights = manifest[WEIGHTS_NAME]
    assert weights is not None  # export_manifest always records the weights

    api = HfApi(token=token)
    where = f"{api.endpoint}/{repo_id}"
    print(
        f"Publishing {len(operations)} files from {folder} to {where} "
        f"({'public' if public else 'private'} if the repository is new):"
    )
    for op in operations:
        print(f"  {op.path_in_repo} ({op.upload_info.size} bytes)")
    message = commit_message or f"Upload SADCL export ({export_section(config).get('variant') or 'sadcl'})"
    try:
        # Uploads may take long: no deadline, but a request that got no answer at all is not retried.
        with _budget_scope(_Budget(None)):
            api.create_repo(repo_id, private=not public, exist_ok=True, repo_type="model")
            if not public and not api.repo_info(repo_id, repo_type="model").private:
                raise PublishError(
                    f"Hub repository {repo_id} on {api.endpoint} is public: pass public=True "
                    "to publish into it, or choose another repository"
                )
            info = api.create_commit(repo_id, operations, commit_message=message, revision=revision, repo_type="model")
    except PublishError:
        raise
    except Exception as e:  # every Hub failure becomes one line; the original stays as __cause__
        raise PublishError(_publish_error_message(folder, repo_id, api.endpoint, e)) from e

    record = dict(
        hf_hub_id=repo_id, filename=WEIGHTS_NAME, revision=info.oid, sha256=weights["sha256"], size=weights["size"]
    )
    WeightsRecord(**record)  # validates: a pinned 40-hex commit, a sha256, a size
    name = export_section(config).get("variant") or repo_id.split("/")[-1]
    print(f"Pushed {folder} to {where} at commit {info.oid}. Record for weights.json:")
    print(json.dumps({name: record}, indent=2))
    return record


# ----------------------------------------------------------------------------- exports on the Hub
def download_export(
    repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None
) -> tuple[Export, str | None]:
    """Fetch ``config.json`` and the weights of an export on the Hub (same commit), verify them; (export, commit)."""
    config_path = hub_download(
        repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir, what=f"the SADCL export hf-hub:{repo_id}"
    )
    # The cache stores files under snapshots/<commit>/: take the weights from the config's commit,
    # even if the branch moves between the two downloads.
    commit = config_path.parent.name if COMMIT_RE.fullmatch(config_path.parent.name) else None
    where = f"hf-hub:{repo_id}@{commit or revision or 'main'}"
    config = read_export_config(config_path)
    parse_export(config, where, config_path)  # validate before downloading the weights
    weights_path = hub_download(
        repo_id,
        WEIGHTS_NAME,
        revision=commit or revision,
        cache_dir=cache_dir,
        what=f"the SADCL export hf-hub:{repo_id}",
    )
    export = parse_export(config, where, weights_path)
    index_dir = weights_path.parents[2] if weights_path.parent.parent.name == "snapshots" else None
    try:
        verify_file(weights_path, export.weights["sha256"], export.weights["size"], index_dir=index_dir)
    except ChecksumError as e:
        if index_dir is not None:
            evict(weights_path, index_dir)
        raise ChecksumError(
            f"{where}: the downloaded {WEIGHTS_NAME} is corrupt ({e}); it was removed from the "
            "cache, run again to download it afresh."
        ) from None
    return export, commit
