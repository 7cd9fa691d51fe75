"""Bad settings and a missing model: a clear message, defaults, and a server that keeps answering."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.bench.corpus import corpus_text
from conftest import configure, end_position, inline, open_document, server_config, status, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")
DATA = Path(__file__).parent / "data"
CODE = "def area(width, height):\n    return width"


async def _start(client: LanguageClient, init_options: dict) -> None:
    await client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"), initialization_options=init_options))


async def _messages(client: LanguageClient, count: int = 1, timeout: float = 30) -> list[str]:
    for _ in range(int(timeout / 0.05)):
        if len(client.messages) >= count:
            break
        await asyncio.sleep(0.05)
    return [m.message for m in client.messages]


@pytest_lsp.fixture(config=server_config("--config", str(DATA / "bad_values.toml")), scope="module")
async def bad_values(lsp_client: LanguageClient):
    await _start(lsp_client, {"completion": {"temperature": "hot", "contextTokens": 4096}, "engine": "teapot",
                              "maxLines": 3, "openvino": {"kvCacheMb": 256, "kvCacheTokens": 1024}})
    yield
    await lsp_client.shutdown_session()


@pytest.mark.model
async def test_bad_values_are_named_and_defaults_serve(bad_values: LanguageClient):
    messages = "\n".join(await _messages(bad_values))
    settings_file = str(DATA / "bad_values.toml")
    assert f"{settings_file}:4: completion.max_lines" in messages, messages
    assert f"{settings_file}:5: completion.colour: unknown setting" in messages, messages
    assert "initializationOptions: completion.temperature" in messages, messages
    assert "initializationOptions: engine: 'teapot' is not one of openvino" in messages, messages
    assert "initializationOptions: max_lines: unknown setting" in messages, messages
    assert "initializationOptions: openvino.kv_cache_mb: renamed: use openvino.kv_cache_tokens" in messages, messages
    state = await wait_ready(bad_values)
    assert state["ready"] and state["engine"] == "openvino", state
    uri = "file:///project/area.py"
    open_document(bad_values, uri, CODE)
    result = await inline(bad_values, uri, end_position(CODE, "utf-8"))
    assert result and result[0].strip()

    # A KV cache of 1024 tokens and a prompt budget of 4096: the prompt is cut to what the cache
    # leaves room for (before, a prompt past the cache's end got an empty answer without a word).
    long_uri, long_text = "file:///project/long.py", corpus_text()[:14000] + "\n\ndef area(width, height):\n    return width"
    open_document(bad_values, long_uri, long_text)
    result = await inline(bad_values, long_uri, end_position(long_text, "utf-8"))
    assert result and result[0].strip(), result  # uncut, the prompt (~3.5k tokens) would not fit


@pytest_lsp.fixture(config=server_config("--config", str(DATA / "invalid_syntax.toml")), scope="module")
async def invalid_toml(lsp_client: LanguageClient):
    await _start(lsp_client, {"model": str(DATA / "no-such-model.gguf")})
    yield
    await lsp_client.shutdown_session()


@pytest.mark.model  # it ends by loading the model it is given at run time
async def test_invalid_toml_and_missing_model_are_shown_and_requests_still_answered(invalid_toml: LanguageClient):
    messages = await _messages(invalid_toml, count=2)
    joined = "\n".join(messages)
    assert f"{DATA / 'invalid_syntax.toml'}:2: invalid TOML" in joined, joined
    errors = [m for m in invalid_toml.messages if m.type == types.MessageType.Error]
    assert errors, joined
    assert "no-such-model.gguf" in errors[0].message and "does not exist" in errors[0].message
    assert "model" in errors[0].message  # says which setting to fix
    state = await status(invalid_toml)
    assert not state["ready"] and "no-such-model.gguf" in state["error"]
    uri = "file:///project/area.py"
    open_document(invalid_toml, uri, CODE)
    assert await inline(invalid_toml, uri, end_position(CODE, "utf-8")) == []
    result = await invalid_toml.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end_position(CODE, "utf-8")))
    assert len(result.items) == 0
    # Fixing the setting at run time brings the model up without a restart.
    await configure(invalid_toml, {"model": "smollm2-135m"})
    state = await wait_ready(invalid_toml)
    assert state["ready"], state
    assert (await inline(invalid_toml, uri, end_position(CODE, "utf-8")))
