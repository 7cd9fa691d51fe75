"""Completion end to end: the real server over stdio, a real model (SmolLM2-135M, the test session's
model from tests/conftest.py, through OpenVINO GenAI), a client with Neovim 0.11's recorded capabilities."""

from __future__ import annotations

import asyncio

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from conftest import (busy, cancel_and_expect_slot_free, cancelled, configure, end_position, inline, open_document,
                      replace_document, server_config, status, two_real_suggestions, wait_ready)
from waiting import until

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

STACK = (
    "class Stack:\n"
    "    def __init__(self):\n"
    "        self.items = []\n"
    "\n"
    "    def push(self, item):\n"
    "        "
)
CONFIG_READER = (
    "import json\n"
    "\n"
    "\n"
    "def load_settings(path):\n"
    "    with open(path) as handle:\n"
    "        return json."
)
# A list the model keeps extending line after line.
LONG = "PRIMES = [\n    2,\n    3,\n    5,\n    7,\n    11,\n"
# SmolLM2 often closes the list above after a few tokens (so a cancel or a newer
# request may come too late); this table it extends for 200+ tokens.
ENDLESS = 'COLORS = {\n    "red": "#ff0000",\n    "green": "#00ff00",\n    "blue": "#0000ff",\n    '


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    lsp_client.set_configuration({"aipc": {}})
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"),
        # Nothing computed ahead for an accept: this module counts the server's jobs and warm-ups.
        initialization_options={"completion": {"max_tokens": 48, "suggest_ahead": False}},
    ))
    state = await wait_ready(lsp_client)
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


def position_encoding(client: LanguageClient) -> str:
    return "utf-8"  # Neovim 0.11 offers utf-8 first and the server takes it


async def test_server_advertises_inline_completion_and_completion(client: LanguageClient):
    # The initialize result is not kept by pytest-lsp; ask again through a second look at
    # the capabilities the server registered: both requests must be answered, not -32601.
    uri = "file:///project/caps.py"
    open_document(client, uri, "x = 1\n")
    await inline(client, uri, types.Position(line=1, character=0))
    await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=1, character=0)))


async def test_inline_completion_is_real_and_depends_on_the_code(client: LanguageClient):
    stack, reader = await two_real_suggestions(client, CONFIG_READER)
    # Post-processed to fit the cursor: no leading or trailing blanks, block-shaped.
    for text in (stack, reader):
        assert text == text.strip(), repr(text)
        assert all(line == line.rstrip() for line in text.split("\n"))
    # The Stack body works on the instance; the JSON reader continues a json.<call>.
    assert "self" in stack, stack
    assert reader[0].isalpha(), reader  # continues the attribute after "json."
    state = await status(client)
    assert state["slots"][0]["served"] >= 2


async def test_completion_item_carries_the_whole_suggestion(client: LanguageClient):
    text = "def greet(name):\n    message = f\"Hello, {name}\"\n    pri"
    uri = "file:///project/greet.py"
    open_document(client, uri, text)
    position = end_position(text, "utf-8")
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position))
    assert isinstance(result, types.CompletionList) and result.is_incomplete
    assert len(result.items) == 1, result
    item = result.items[0]
    edit = item.text_edit
    # The edit replaces the word being typed ("pri") and continues it.
    assert edit.range.start == types.Position(line=2, character=position.character - 3)
    assert edit.range.end == position
    assert edit.new_text.startswith("pri") and len(edit.new_text) > 3, edit.new_text
    assert item.label and item.filter_text.startswith("pri")


async def test_completion_inside_a_line_stays_on_that_line(client: LanguageClient):
    text = "values = [3, 1, 2]\nprint(sorted())\n"
    uri = "file:///project/midline.py"
    open_document(client, uri, text)
    # Cursor between "sorted(" and "))".
    result = await inline(client, uri, types.Position(line=1, character=13))
    assert len(result) <= 1
    if result:
        assert "\n" not in result[0]
        assert not result[0].endswith("))"), result  # the closers after the cursor are not repeated


async def test_cancel_request_answers_32800_and_frees_the_slot(client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 400, "max_lines": 200}})
    uri = "file:///project/primes.py"
    open_document(client, uri, ENDLESS)
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end_position(ENDLESS, "utf-8"),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    request = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params)
    msg_id = next(reversed(client.protocol._request_futures))
    await until(lambda: busy(client), "the generation to run")  # then cancel it
    await cancel_and_expect_slot_free(client, request, msg_id)
    await configure(client, {})


async def test_newer_version_supersedes_and_stale_results_are_never_sent(client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 400, "max_lines": 200}})
    uri = "file:///project/primes2.py"
    open_document(client, uri, ENDLESS, version=1)
    first = asyncio.ensure_future(inline(client, uri, end_position(ENDLESS, "utf-8")))
    await until(lambda: busy(client), "the first generation to run")
    stopped = await cancelled(client)
    # The user types on: a new version arrives while the first generation runs.
    newer = ENDLESS + '"white": "#ffffff",\n    '
    replace_document(client, uri, newer, version=2)
    old_answer = await first
    assert old_answer == [], "a suggestion computed for version 1 was sent after version 2 arrived"
    # Answered because the document changed: its generation was stopped, not waited for.
    async def stopped_since() -> bool:
        return await cancelled(client) > stopped

    await until(stopped_since, "the first generation to stop")
    await configure(client, {})
    current = await inline(client, uri, end_position(newer, "utf-8"))
    assert current and current[0].strip()
    # At most one generation per document ever ran at a time.
    assert len((await status(client))["liveJobs"]) == 0


async def test_newer_request_supersedes_older_one_for_the_same_document(client: LanguageClient):
    uri = "file:///project/two_requests.py"
    text = ENDLESS
    open_document(client, uri, text)
    # At the end: a long generation, still running when the newer request arrives.
    older = asyncio.ensure_future(inline(client, uri, end_position(text, "utf-8")))
    await until(lambda: busy(client), "the older request's generation to run")
    newer = asyncio.ensure_future(inline(client, uri, types.Position(line=4, character=0)))
    old_result, new_result = await asyncio.wait_for(asyncio.gather(older, newer), 30)
    assert old_result == []
    assert new_result and new_result[0].strip()


async def test_unknown_document_and_out_of_range_give_empty_results(client: LanguageClient):
    assert await inline(client, "file:///project/never-opened.py", types.Position(line=0, character=0)) == []
    uri = "file:///project/short.py"
    open_document(client, uri, "x = 1\n")
    assert await inline(client, uri, types.Position(line=40, character=3)) == []


async def test_an_emptied_document_gets_no_suggestion_and_the_slot_stays_healthy(client: LanguageClient):
    # As when the user deletes everything (`:%d` in Neovim): the completion before the cursor is
    # empty. OpenVINO fails on an empty prompt, which took the slot out and told the user so.
    uri = "file:///project/emptied.py"
    open_document(client, uri, "def add(a, b):\n    return a + b\n")
    replace_document(client, uri, "", 2)
    failed_before = (await status(client))["slots"][0]["failed"]
    assert await inline(client, uri, types.Position(line=0, character=0)) == []
    slot = (await status(client))["slots"][0]
    assert slot["state"] == "ready" and slot["failed"] == failed_before, slot
    replace_document(client, uri, "def add(a, b):\n    return", 3)
    assert await inline(client, uri, end_position("def add(a, b):\n    return")) != []
