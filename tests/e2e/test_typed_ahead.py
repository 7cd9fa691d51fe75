"""Typed-ahead reuse and the result cache end to end: the real server over stdio, the real
default model. Whether an answer was generated or reused is read from aipc/status."""

from __future__ import annotations

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from conftest import end_position, inline, open_document, replace_document, server_config, status, wait_ready

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

STACK = (
    "class Stack:\n"
    "    def __init__(self):\n"
    "        self.items = []\n"
    "\n"
    "    def push(self, item):\n"
    "        "
)


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"),
        # Nothing computed ahead for an accept: this module counts the server's jobs and warm-ups.
        initialization_options={"completion": {"max_tokens": 32, "suggest_ahead": False}},
    ))
    state = await wait_ready(lsp_client)
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


async def ask(client: LanguageClient, uri: str, text: str) -> tuple[str | None, dict]:
    items = await inline(client, uri, end_position(text, "utf-8"))
    state = await status(client)
    return (items[0] if items else None), state


async def test_typing_along_the_prediction_reuses_it_and_diverging_generates_anew(client: LanguageClient):
    uri = "file:///project/reuse_stack.py"
    open_document(client, uri, STACK, version=1)
    first, state = await ask(client, uri, STACK)
    assert first and len(first) >= 3, first
    assert state["suggestions"][-1]["source"] == "generated"
    served = state["slots"][0]["served"]

    # Type the first two predicted characters: answered from the same generation.
    typed = STACK + first[:2]
    replace_document(client, uri, typed, version=2)
    second, state = await ask(client, uri, typed)
    # The rest of the prediction, trimmed for the new cursor (with code typed on the line, to its end).
    assert second and first[2:].startswith(second), (first, second)
    assert state["suggestions"][-1]["source"] == "typed-ahead"
    assert state["slots"][0]["served"] == served  # no new generation ran

    # Type something the model did not predict: a new generation, never the stale rest.
    wrong = "Q" if first[2] != "Q" else "Z"
    diverged = typed + wrong
    replace_document(client, uri, diverged, version=3)
    _, state = await ask(client, uri, diverged)
    assert state["suggestions"][-1]["source"] == "generated"
    assert state["slots"][0]["served"] == served + 1

    # Undo back to the start: the result cache answers with the first suggestion.
    replace_document(client, uri, STACK, version=4)
    again, state = await ask(client, uri, STACK)
    assert again == first
    assert state["suggestions"][-1]["source"] == "cache"
