"""The suggestion that follows an accepted one (completion.suggest_ahead), end to end: the real
server over stdio, the real default model. While the user reads a suggestion the server computes
the one after it; the editor's request once it is accepted is answered from that, and it is the
answer the model gives there when nothing was computed ahead (a second server with the setting off).
Typing something else stops it. How it was answered is read from aipc/status."""

from __future__ import annotations

import asyncio

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.suggest import SUGGEST_AHEAD_DELAY_S
from conftest import end_position, inline, open_document, replace_document, server_config, status, wait_ready
from test_typed_ahead import STACK
from waiting import until

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

BEFORE = STACK  # the code before the cursor
AFTER = (
    "\n"
    "\n"
    "    def peek(self):\n"
    "        return self.items[-1]\n"
)


async def _start(lsp_client: LanguageClient, suggest_ahead: bool):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        # (Other files off: each prompt is the document's alone, the same on both servers.)
        initialization_options={"completion": {"max_tokens": 32, "other_files": False,
                                               "suggest_ahead": suggest_ahead}},
    ))
    state = await wait_ready(lsp_client)
    assert state["ready"], state


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    await _start(lsp_client, suggest_ahead=True)
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=server_config(), scope="module")
async def plain(lsp_client: LanguageClient):
    await _start(lsp_client, suggest_ahead=False)
    yield
    await lsp_client.shutdown_session()


def position_at(text: str, offset: int) -> types.Position:
    return end_position(text[:offset])


async def suggest(client: LanguageClient, uri: str, text: str, offset: int, version: int) -> tuple[str, dict]:
    """Open (version 1) or change `uri` to `text`, and ask at `offset`: the suggestion and its record."""
    if version == 1:
        open_document(client, uri, text)
    else:
        replace_document(client, uri, text, version)
    items = await inline(client, uri, position_at(text, offset))
    record = next(r for r in reversed((await status(client))["suggestions"]) if r["uri"] == uri)
    return (items[0] if items else ""), record


async def accept_warmup(client: LanguageClient, uri: str) -> dict:
    async def record():
        return next((w for w in reversed((await status(client))["warmups"])
                     if w["uri"] == uri and w["at"] == "accept"), None)

    return await until(record, "the suggestion after the accept computed", timeout=60)


async def test_after_an_accept_the_next_suggestion_is_there_and_is_the_models_own(client: LanguageClient,
                                                                                   plain: LanguageClient):
    uri = "file:///project/ahead_stack.py"
    text, offset = BEFORE + AFTER, len(BEFORE)
    first, record = await suggest(client, uri, text, offset, version=1)
    assert first and record["source"] == "generated", first
    warmup = await accept_warmup(client, uri)
    assert not warmup["cancelled"], warmup
    served = (await status(client))["slots"][0]["served"]

    # Tab: the editor inserts the suggestion and asks again at its end.
    accepted, after_accept = text[:offset] + first + text[offset:], offset + len(first)
    second, record = await suggest(client, uri, accepted, after_accept, version=2)
    assert record["source"] == "cache", record
    assert (await status(client))["slots"][0]["served"] == served  # nothing generated for it

    # The same place on a server that computes nothing ahead: the same answer.
    plain_first, _ = await suggest(plain, uri, text, offset, version=1)
    assert plain_first == first
    plain_second, plain_record = await suggest(plain, uri, accepted, after_accept, version=2)
    assert plain_record["source"] == "generated" and plain_second == second, (plain_second, second)


async def test_typing_something_else_stops_it_and_gets_its_own_answer(client: LanguageClient,
                                                                       plain: LanguageClient):
    uri = "file:///project/ahead_typed.py"
    # Another class than the test before's: nothing of it is in the result cache.
    before = BEFORE.replace("class Stack:", "class History:")
    text, offset = before + AFTER, len(before)
    # What the test before left computing ahead is over first.
    await asyncio.sleep(SUGGEST_AHEAD_DELAY_S + 0.2)
    await until(lambda: _idle(client), "the server idle")
    first, _ = await suggest(client, uri, text, offset, version=1)
    assert first
    # Once the server computes ahead (the slot busy with nobody asking), the user types on instead.
    await until(lambda: _busy(client), "the suggestion after the accept being computed", timeout=30)
    typed = text[:offset] + "if" + text[offset:]
    answer, record = await suggest(client, uri, typed, offset + 2, version=2)
    assert record["source"] == "generated", record
    warmup = await accept_warmup(client, uri)
    assert warmup["cancelled"], warmup
    plain_answer, _ = await suggest(plain, uri, typed, offset + 2, version=1)
    assert answer == plain_answer


async def _busy(client: LanguageClient) -> bool:
    return bool((await status(client))["slots"][0]["busy"])


async def _idle(client: LanguageClient) -> bool:
    return not await _busy(client)
