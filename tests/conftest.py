"""Shared pytest fixtures.

Hub fixtures: ``fake_hub`` points the real ``huggingface_hub`` client at a loopback ``FakeHub`` with
an empty, per-test cache; ``hub_offline`` switches ``HF_HUB_OFFLINE`` on or off. Both patch the
already-imported ``huggingface_hub.constants`` (read at call time in huggingface_hub 2.x) *and* the
environment, so that subprocesses started by a test (CLI, ``torch.hub``) see the same settings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make `hubserver` importable from test modules

from hubserver import EMPTY_AGENT_REGISTRY, FakeHub

# Short timeouts: every test keeps its server up (or is offline / pinned), so a slow answer is a bug.
_HUB_TIMEOUT_S = 5


def _reset_hub_session() -> None:
    """Drop huggingface_hub's shared HTTP client, so proxy settings and pooled connections start fresh."""
    from huggingface_hub.utils import close_session

    close_session()


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache (``HF_HUB_CACHE``) inside a fresh ``HF_HOME`` holding no token.

    The fresh ``HF_HOME`` also holds an empty agent-harness registry, which huggingface_hub 2.x
    would otherwise fetch from the endpoint once per process (an extra request in the server log).
    """
    from huggingface_hub import constants

    home, cache = tmp_path / "hf-home", tmp_path / "hf-cache"
    home.mkdir()
    registry = home / ".agent_harnesses.json"
    registry.write_text(json.dumps(EMPTY_AGENT_REGISTRY))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(registry), raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def fake_hub(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running ``FakeHub`` that ``hf_hub_download`` talks to, online, with no token and an empty cache."""
    from huggingface_hub import constants

    with FakeHub() as hub:
        endpoint = hub.endpoint
        # hf_hub_url() formats the template and only rewrites URLs that start with ENDPOINT: patch both.
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", _HUB_TIMEOUT_S)
        monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", _HUB_TIMEOUT_S)
        # Never send a token of the developer's machine (hf_cache already moved HF_HOME away from it).
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
        for name, value in {
            "HF_ENDPOINT": endpoint,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_ETAG_TIMEOUT": str(_HUB_TIMEOUT_S),
            "HF_HUB_DOWNLOAD_TIMEOUT": str(_HUB_TIMEOUT_S),
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }.items():
            monkeypatch.setenv(name, value)
        _reset_hub_session()  # the shared client read the proxy environment when it was created
        try:
            yield hub
        finally:
            _reset_hub_session()


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Return ``set_offline(flag)``: turn huggingface_hub's offline mode (``HF_HUB_OFFLINE``) on or off.

    huggingface_hub 2.x checks ``constants.HF_HUB_OFFLINE`` on every request; 0.x cached its HTTP
    session, hence the session reset. The environment variable is for subprocesses.
    """
    from huggingface_hub import constants

    def set_offline(flag: bool = True) -> None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", flag)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if flag else "0")
        _reset_hub_session()

    return set_offline


# -- upload side (appended for sadcl.zoo.hub.push_to_hub) ----------------------------------------------------
from hubupload import HubUploads  # noqa: E402  (after the sys.path insert above)


@pytest.fixture
def hub_uploads(fake_hub: FakeHub) -> HubUploads:
    """The write API that ``HfApi.create_repo``/``upload_folder`` use, on the running ``fake_hub``
    (see tests/hubupload.py); pushed files are then downloadable from ``fake_hub``."""
    return HubUploads(fake_hub).install()


# -- broken weights --------------------------------------------------------------------------------------------
@pytest.fixture
def nan_logits(monkeypatch: pytest.MonkeyPatch) -> Callable[[object], None]:
    """``nan_logits(index)``: from then on in the test, ``SADCL.forward`` returns its logits with ``out[index]``
    set to NaN (as broken weights or a zero ``std`` would make them), e.g. ``0``: every batch's first image."""
    import math

    from sadcl.model import SADCL

    def patch(index: object) -> None:
        forward = SADCL.forward

        def broken(self, x):
            out = forward(self, x).clone()
            out[index] = math.nan
            return out

        monkeypatch.setattr(SADCL, "forward", broken)

    return patch


# -- markers ---------------------------------------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that talks to the loopback ``FakeHub`` is a ``network`` test (a sandbox without sockets
    deselects them all with ``-m "not network"``); the few that start their own server are marked by hand."""
    for item in items:
        if "fake_hub" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.network)
