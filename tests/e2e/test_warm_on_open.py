"""Warming an opened document (completion.warm_on_open) on the real server and the real model:
the first suggestion after the warm-up skips the cold prefill, and a request arriving while a
warm-up runs is not held up by it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.bench.corpus import corpus_text
from conftest import (configure, end_position, inline, open_document, replace_document, server_config, status,
                      wait_ready)

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
        initialization_options={"completion": {"max_tokens": 8}},
    ))
    state = await wait_ready(lsp_client)
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


async def warmed(client: LanguageClient, uri: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [w for w in (await status(client))["warmups"] if w["uri"] == uri]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, "no warm-up recorded"
        await asyncio.sleep(0.05)


async def first_token_ms(client: LanguageClient, uri: str, text: str) -> float:
    await inline(client, uri, end_position(text))
    record = next(r for r in reversed((await status(client))["suggestions"]) if r["uri"] == uri)
    assert record["source"] == "generated" and record["firstTokenMs"] is not None, record
    return record["firstTokenMs"]


async def test_the_first_suggestion_after_a_warm_up_skips_the_cold_prefill(client: LanguageClient):
    cold_text, warm_text = document(), document()
    await configure(client, {"completion": {"max_tokens": 8, "warm_on_open": False}})
    open_document(client, "file:///project/cold.py", cold_text)
    await asyncio.sleep(1.0)
    assert not [w for w in (await status(client))["warmups"] if w["uri"] == "file:///project/cold.py"]
    cold = await first_token_ms(client, "file:///project/cold.py", cold_text)

    await configure(client, {"completion": {"max_tokens": 8}})
    open_document(client, "file:///project/warm.py", warm_text)
    record = await warmed(client, "file:///project/warm.py")
    assert not record["cancelled"] and record["promptChars"] >= len(warm_text) - 1, record
    warm = await first_token_ms(client, "file:///project/warm.py", warm_text)
    # The whole window is cached: the first token needs one forward pass, not a 1.2k-token prefill.
    assert warm < cold / 3, (warm, cold)


async def test_a_request_during_a_warm_up_is_not_held_up_by_it(client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 2, "warm_on_open": False}})
    reference = document()
    open_document(client, "file:///project/reference.py", reference)
    started = time.monotonic()
    await inline(client, "file:///project/reference.py", end_position(reference))
    cold_s = time.monotonic() - started  # what a warm-up of a document that size takes

    small = "def add(a, b):\n    return "
    open_document(client, "file:///project/small.py", small)
    await inline(client, "file:///project/small.py", end_position(small))  # small's KV is cached now
    await configure(client, {"completion": {"max_tokens": 2}})
    open_document(client, "file:///project/big.py", document())
    deadline = time.monotonic() + 20
    while not any(job["kind"] == "warm" and job["slot"] for job in (await status(client))["liveJobs"]):
        assert time.monotonic() < deadline, "the warm-up never started"
        await asyncio.sleep(0.01)
    replace_document(client, "file:///project/small.py", small + "a", version=2)
    asked = time.monotonic()
    await inline(client, "file:///project/small.py", end_position(small + "a"))
    waited = time.monotonic() - asked
    assert (await warmed(client, "file:///project/big.py"))["cancelled"]  # it gave way
    # Had it waited for the warm-up it would have waited about a cold prefill; it waited for the
    # engine's step in flight (one prefill chunk) and its own short answer.
    assert waited < 0.6 * cold_s, (waited, cold_s)
