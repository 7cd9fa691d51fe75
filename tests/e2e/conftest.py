"""Shared pieces of the end-to-end tests: the real server over stdio, the real default model."""

from __future__ import annotations

import asyncio
import sys

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from aipc_lsp.lsp_client import plain  # noqa: F401  (tests import it from here)
from waiting import until

SERVER = [sys.executable, "-m", "aipc_lsp", "serve", "-v"]


def server_config(*extra: str, env: dict | None = None) -> ClientServerConfig:
    return ClientServerConfig(server_command=[*SERVER, *extra], server_env=env)


def open_document(client: LanguageClient, uri: str, text: str, version: int = 1, language: str = "python") -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))


def replace_document(client: LanguageClient, uri: str, text: str, version: int) -> None:
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))


def end_position(text: str, encoding: str = "utf-16") -> types.Position:
    """The position at the end of `text` in the given position encoding."""
    lines = text.split("\n")
    last = lines[-1]
    units = {"utf-8": len(last.encode("utf-8")), "utf-16": len(last.encode("utf-16-le")) // 2,
             "utf-32": len(last)}[encoding]
    return types.Position(line=len(lines) - 1, character=units)


async def inline(client: LanguageClient, uri: str, position: types.Position) -> list[str]:
    result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
    items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
    return [item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value for item in items]


# Two unrelated snippets: a real model completes each, and differently.
STACK = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
READER = "import json\n\n\ndef load_settings(path):\n    with open(path) as handle:\n        return json."


async def two_real_suggestions(client: LanguageClient, reader_text: str = READER) -> tuple[str, str]:
    """Inline suggestions for STACK and a JSON reader; each real (non-blank) and not the same."""
    open_document(client, "file:///project/stack.py", STACK)
    open_document(client, "file:///project/reader.py", reader_text)
    stack = await inline(client, "file:///project/stack.py", end_position(STACK, "utf-8"))
    reader = await inline(client, "file:///project/reader.py", end_position(reader_text, "utf-8"))
    assert len(stack) == 1 and stack[0].strip(), stack
    assert len(reader) == 1 and reader[0].strip(), reader
    assert stack[0] != reader[0]
    return stack[0], reader[0]


async def status(client: LanguageClient) -> dict:
    return plain(await client.protocol.send_request_async("aipc/status", {}))


async def wait_ready(client: LanguageClient, timeout: float = 180) -> dict:
    """Wait until the model is loaded (the first start may fetch it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await status(client)
        if state["ready"] or state["error"]:
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"model not ready after {timeout}s: {state}")
        await asyncio.sleep(0.2)


async def configure(client: LanguageClient, aipc: dict) -> None:
    """Replace the client's `aipc` settings, tell the server (it pulls them) and wait until they took effect."""
    applied = (await status(client))["settingsApplied"]
    client.set_configuration({"aipc": aipc})
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    await until(lambda: _settings_applied_since(client, applied), "the settings to take effect")


async def _settings_applied_since(client: LanguageClient, applied: int) -> bool:
    return (await status(client))["settingsApplied"] > applied


async def busy(client: LanguageClient) -> bool:
    """Whether any slot is generating."""
    return any(slot["busy"] for slot in (await status(client))["slots"])


async def cancelled(client: LanguageClient) -> int:
    """Generations the slots stopped because they were told to (cancel, supersede, a change)."""
    return sum(slot["cancelled"] for slot in (await status(client))["slots"])


async def cancel_and_expect_slot_free(client: LanguageClient, request, msg_id, within: float = 30.0) -> None:
    """Send $/cancelRequest for a running request: it must answer -32800, and the slot must be
    freed by the cancel (its generation stopped and counted as cancelled), not by the generation
    ending by itself. `within`: how long the slot may take to be free before the test fails."""
    import pytest

    before = await cancelled(client)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
    with pytest.raises(Exception) as error:
        await asyncio.wait_for(asyncio.wrap_future(request), within)
    assert getattr(error.value, "code", None) == -32800, error.value
    await until(lambda: _free(client), "the slot to be free after $/cancelRequest", timeout=within)
    assert await cancelled(client) > before, "the generation ran to its end instead of stopping"


async def _free(client: LanguageClient) -> bool:
    return not await busy(client)
