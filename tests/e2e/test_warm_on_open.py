"""Warming an opened document (completion.warm_on_open) and a cursor the client reports (aipc/warm)
on the real server and the real model: the window a suggestion there will send is computed while
the model is idle, and a request arriving while a warm-up runs takes the slot from it. What that
saves (the first suggestion without the cold prefill) is measured by `aipc-lsp bench`
(docs/BENCHMARKS.md: cold, warm and cursor-first figures), not asserted here."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.bench.corpus import corpus_text
from aipc_lsp.context import open_tail
from conftest import (configure, end_position, inline, open_document, replace_document, server_config, status,
                      wait_ready)
from waiting import until

# Past the server's warm-up delay (0.3 s after an open or aipc/warm): a window in which a warm-up
# that should not happen would have begun. Observing that nothing happens takes a while; nothing
# waits on it to go on.
NOTHING_HAPPENS_S = 1.0

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

# ~1.2k tokens of real code: the whole document fits the default 1536-token budget.
BODY = corpus_text()[:3600]


def document() -> str:
    return f"# {uuid.uuid4().hex}\n" + BODY  # a first line of its own: nothing of it is cached


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    lsp_client.set_configuration({"aipc": {}})
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        # Nothing computed ahead for an accept: this module counts the server's jobs and warm-ups.
        initialization_options={"completion": {"max_tokens": 8, "suggest_ahead": False}},
    ))
    state = await wait_ready(lsp_client)
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


async def warmed(client: LanguageClient, uri: str, timeout: float = 60) -> dict:
    async def record():
        return next((w for w in reversed((await status(client))["warmups"]) if w["uri"] == uri), None)

    return await until(record, f"a warm-up of {uri}", timeout=timeout)


async def first_token_ms(client: LanguageClient, uri: str, at: str | types.Position) -> float:
    """The first token's time of a new generation at `at` (a position, or the end of this text)."""
    await inline(client, uri, end_position(at) if isinstance(at, str) else at)
    record = next(r for r in reversed((await status(client))["suggestions"]) if r["uri"] == uri)
    assert record["source"] == "generated" and record["firstTokenMs"] is not None, record
    return record["firstTokenMs"]


async def test_an_opened_document_is_warmed_only_with_its_setting_on(client: LanguageClient):
    cold_text, warm_text = document(), document()
    await configure(client, {"completion": {"max_tokens": 8, "warm_on_open": False}})
    open_document(client, "file:///project/cold.py", cold_text)
    await asyncio.sleep(NOTHING_HAPPENS_S)
    assert not [w for w in (await status(client))["warmups"] if w["uri"] == "file:///project/cold.py"]
    cold = await first_token_ms(client, "file:///project/cold.py", cold_text)

    await configure(client, {"completion": {"max_tokens": 8}})
    open_document(client, "file:///project/warm.py", warm_text)
    record = await warmed(client, "file:///project/warm.py")
    # The whole document (it fits the budget) but what a cursor at its end holds back: its last
    # space, or with token healing its last word's last token. Every cursor's prompt in it is a
    # beginning of this one, and a request at the end sends this very prompt.
    held_at_most = max(1, len(open_tail(warm_text.rsplit("\n", 1)[-1])))
    assert not record["cancelled"] and record["promptChars"] >= len(warm_text) - held_at_most, record
    warm = await first_token_ms(client, "file:///project/warm.py", warm_text)
    print(f"\nfirst token: {cold:.0f} ms cold, {warm:.0f} ms after the warm-up")


async def test_a_request_during_a_warm_up_is_not_held_up_by_it(client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 2, "warm_on_open": False}})
    small = "def add(a, b):\n    return "
    open_document(client, "file:///project/small.py", small)
    await inline(client, "file:///project/small.py", end_position(small))  # small's KV is cached now
    await configure(client, {"completion": {"max_tokens": 2}})
    open_document(client, "file:///project/big.py", document())
    async def warming() -> bool:
        return any(job["kind"] == "warm" and job["slot"] for job in (await status(client))["liveJobs"])

    await until(warming, "the warm-up to run")
    replace_document(client, "file:///project/small.py", small + "a", version=2)
    await inline(client, "file:///project/small.py", end_position(small + "a"))
    # The request took the slot: the warm-up was stopped in its prefill, not waited for.
    assert (await warmed(client, "file:///project/big.py"))["cancelled"]


# Longer than one window: a cursor near its end has a window that does not start at line 0.
# Each document another part of the corpus: no window of one is cached by another.
_parts = iter(range(20000, 300000, 16000))


def long_document() -> tuple[str, types.Position]:
    start = next(_parts)
    text = corpus_text()[start:start + 16000]
    cursor = text.rindex("\n", 0, len(text) - 200)  # the end of a line well after the first window
    line = text.count("\n", 0, cursor)
    return text, types.Position(line=line, character=cursor - (text.rfind("\n", 0, cursor) + 1))


def warm_at(client: LanguageClient, uri: str, position: types.Position) -> None:
    client.protocol.notify("aipc/warm", {"textDocument": {"uri": uri},
                                         "position": {"line": position.line, "character": position.character}})


async def test_a_cursor_the_client_reports_is_warmed_and_its_first_suggestion_skips_the_cold_prefill(
        client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 8, "warm_on_open": False}})
    cold_text, cold_at = long_document()
    open_document(client, "file:///project/cold_cursor.py", cold_text)
    cold = await first_token_ms(client, "file:///project/cold_cursor.py", cold_at)

    text, at = long_document()
    open_document(client, "file:///project/cursor.py", text)
    warm_at(client, "file:///project/cursor.py", at)
    record = await warmed(client, "file:///project/cursor.py")
    assert record["at"] == "cursor" and not record["cancelled"], record
    assert record["promptChars"] > 0, record
    warm = await first_token_ms(client, "file:///project/cursor.py", at)
    print(f"\nfirst token at the cursor: {cold:.0f} ms cold, {warm:.0f} ms after aipc/warm")


async def test_cursor_warm_ups_are_off_with_their_setting_and_bad_params_are_ignored(client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 8, "warm_on_open": False, "warm_at_cursor": False}})
    text, at = long_document()
    open_document(client, "file:///project/off.py", text)
    warm_at(client, "file:///project/off.py", at)
    await configure(client, {"completion": {"max_tokens": 8, "warm_on_open": False}})
    for bad in ({"textDocument": {"uri": 5}, "position": {"line": 0, "character": 0}},
                {"textDocument": {"uri": "file:///project/off.py"}, "position": {"line": "x"}},
                [1, 2], None):
        client.protocol.notify("aipc/warm", bad)
    warm_at(client, "file:///project/never-opened.py", at)
    await asyncio.sleep(NOTHING_HAPPENS_S)
    assert not [w for w in (await status(client))["warmups"] if w["uri"].endswith(("/off.py", "/never-opened.py"))]
    await first_token_ms(client, "file:///project/off.py", at)  # and the server serves on
