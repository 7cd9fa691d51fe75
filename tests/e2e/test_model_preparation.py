"""The model the server prepares itself: fetched into an empty cache with progress, a fetch
failure shown with what to do, and settings from $XDG_CONFIG_HOME."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.models.catalogue import SMOLLM2_135M
from conftest import end_position, inline, open_document, plain, server_config, status, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Fixed before the fixtures are built: each server below gets its own empty cache.
EMPTY_CACHE = Path(tempfile.mkdtemp(prefix="aipc-empty-cache-"))
OFFLINE_CACHE = Path(tempfile.mkdtemp(prefix="aipc-offline-cache-"))
XDG = Path(tempfile.mkdtemp(prefix="aipc-xdg-"))
# Each holds a fetched model (~190 MB): gone when the test process ends, on every xdist worker
# that imported this module.
for _folder in (EMPTY_CACHE, OFFLINE_CACHE, XDG):
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)
(XDG / "aipc-lsp").mkdir()
# This file replaces the test session's settings (tests/conftest.py): it names the small model too.
(XDG / "aipc-lsp" / "settings.toml").write_text(f'model = "{SMOLLM2_135M.name}"\n[completion]\nmax_lines = 0\n',
                                                encoding="utf-8")
CODE = "def area(width, height):\n    return width"


def _env(**extra: str) -> dict:
    return {**os.environ, **{k: str(v) for k, v in extra.items()}}


@pytest_lsp.fixture(config=server_config(env=_env(AIPC_LSP_CACHE_DIR=EMPTY_CACHE, XDG_CONFIG_HOME=XDG)), scope="module")
async def fresh(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(capabilities=client_capabilities("neovim@v0.11.0")))
    yield
    await lsp_client.shutdown_session()


@pytest.mark.model
async def test_first_use_fetches_the_model_with_progress(fresh: LanguageClient):
    state = await wait_ready(fresh)
    assert state["ready"], state
    assert (EMPTY_CACHE / "models" / SMOLLM2_135M.filename).is_file()
    reports = [plain(r) for token in fresh.progress_reports.values() for r in token]
    kinds = [getattr(r, "kind", None) for r in reports]
    assert kinds[0] == "begin" and kinds[-1] == "end", kinds
    messages = " | ".join(str(getattr(r, "message", "") or "") for r in reports)
    assert "downloading" in messages and "ready" in messages, messages
    # The settings file under $XDG_CONFIG_HOME was read (and its bad value named).
    shown = "\n".join(m.message for m in fresh.messages)
    assert f"{XDG / 'aipc-lsp' / 'settings.toml'}:3: completion.max_lines" in shown, shown
    open_document(fresh, "file:///project/area.py", CODE)
    assert await inline(fresh, "file:///project/area.py", end_position(CODE, "utf-8"))


@pytest_lsp.fixture(config=server_config(env=_env(AIPC_LSP_CACHE_DIR=OFFLINE_CACHE, PIP_NO_INDEX="1")), scope="module")
async def offline(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(capabilities=client_capabilities("neovim@v0.11.0")))
    yield
    await lsp_client.shutdown_session()


async def test_fetch_failure_is_shown_with_what_to_do(offline: LanguageClient):
    state = await wait_ready(offline)
    assert not state["ready"] and state["error"], state
    errors = [m.message for m in offline.messages if m.type == types.MessageType.Error]
    assert len(errors) == 1, offline.messages
    assert "aipc-lsp models fetch" in errors[0] and "model" in errors[0], errors[0]
    # Nothing half-written is left in the cache.
    assert not (OFFLINE_CACHE / "models" / SMOLLM2_135M.filename).exists()
    open_document(offline, "file:///project/area.py", CODE)
    assert await inline(offline, "file:///project/area.py", end_position(CODE, "utf-8")) == []
    assert (await status(offline))["version"]  # still answering
