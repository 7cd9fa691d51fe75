"""Warm-ups with the default model's fill-in-the-middle prompt, on the real server: the first
window of an opened document leaves the code after a cursor its share of the budget, and after a
suggestion on a new line the prompt typing there extends is computed while the user reads
(both with `completion.fim_order = "psm-line"`: the default, spm, puts the code after the cursor
first, so only the client's aipc/warm, where the cursor rests, can be computed ahead for it). What they save is measured by `aipc-lsp bench` (*opened first*) and
scripts/keystroke_trace.py (docs/BENCHMARKS.md), not asserted here."""

from __future__ import annotations

import uuid

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from conftest import configure, end_position, inline, open_document, replace_document, server_config, status, wait_ready
from test_warm_on_open import BODY, first_token_ms, long_document, warmed
from waiting import until

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    lsp_client.set_configuration({"aipc": {}})
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        # Nothing computed ahead for an accept: this module counts the server's jobs and warm-ups.
        initialization_options={"model": "default", "completion": {"max_tokens": 8, "fim_order": "psm-line",
                                                                  "suggest_ahead": False}},
    ))
    state = await wait_ready(lsp_client)
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


async def test_a_document_longer_than_the_budget_is_warmed_up_to_where_the_code_after_a_cursor_fits(
        client: LanguageClient):
    """With the fill-in-the-middle prompt the code after the cursor takes its share of the budget:
    the first window ends earlier than the whole budget would reach, and it is warmed."""
    await configure(client, {"completion": {"max_tokens": 8, "fim_order": "psm-line"}})
    text, _ = long_document()
    open_document(client, "file:///project/long.py", text)
    record = await warmed(client, "file:///project/long.py")
    assert record["at"] == "open" and not record["cancelled"] and record["promptChars"] > 1000, record
    # A cursor inside that window sends a prompt that begins as the warmed one (up to the cursor).
    lines = text.split("\n")
    await inline(client, "file:///project/long.py", types.Position(line=len(lines) // 8, character=0))
    answer = (await status(client))["suggestions"][-1]
    print(f"\nfirst token inside the warmed window: {answer['firstTokenMs']} ms")


# A method with code after the cursor's new line: psm-line keeps the line's indentation in the
# prefix, and moves it after the middle marker once code is typed on it.
INDENTED_LINE = ("class Basket:\n    def __init__(self):\n        self.items = []\n\n"
                 "    def total(self, discount=0.0):\n        amount = 0.0\n        for item in self.items:\n"
                 "            amount += item.price * item.quantity\n        ")
AFTER_LINE = "\n        return round(amount, 2)\n\n    def add(self, item):\n        self.items.append(item)\n"


async def test_after_a_suggestion_on_a_new_line_the_prompt_typing_there_extends_is_computed_ahead(
        client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 16, "warm_on_open": False, "fim_order": "psm-line"}})
    uri = "file:///project/basket.py"
    head = f"# {uuid.uuid4().hex}\n" + BODY[:2400] + "\n\n" + INDENTED_LINE
    open_document(client, uri, head + AFTER_LINE)
    (suggestion, *_) = await inline(client, uri, end_position(head)) or [""]
    assert (await status(client))["completionPrompt"] == "qwen"  # the default model's FIM template
    record = await warmed(client, uri)
    assert record["at"] == "line" and not record["cancelled"] and record["promptChars"] > len(INDENTED_LINE), record
    # A character other than the suggestion's first: answered by a new generation, whose prompt
    # begins with the one computed ahead (the request waits for no prefill of the code after the cursor).
    typed = next(c for c in "xqz" if not suggestion.lstrip().startswith(c))
    replace_document(client, uri, head + typed + AFTER_LINE, version=2)
    first = await first_token_ms(client, uri, end_position(head + typed))
    assert [w["at"] for w in (await status(client))["warmups"] if w["uri"] == uri] == ["line"]
    print(f"\nthe line's first character after the line was computed ahead: {first:.0f} ms")


async def test_with_the_default_order_an_opened_document_waits_for_its_cursor(client: LanguageClient):
    """spm, the default: the prompt begins with the code after the cursor, so nothing is computed
    when a document opens (the warm-up says why), and where the client says the cursor rests the
    prompt a request there sends is computed, whose first token then prefills next to nothing."""
    # (this module's initialization options ask for psm-line: spm, the default, is named here)
    await configure(client, {"completion": {"max_tokens": 8, "fim_order": "spm"}})
    uri = "file:///project/spm.py"
    head = f"# {uuid.uuid4().hex}\n" + BODY[:2400] + "\n\n" + INDENTED_LINE
    open_document(client, uri, head + AFTER_LINE)
    record = await warmed(client, uri)
    assert record["at"] == "open" and record["promptChars"] == 0 and "first" in record["skipped"], record
    at = end_position(head)
    client.protocol.notify("aipc/warm", {"textDocument": {"uri": uri}, "position": {"line": at.line, "character": at.character}})
    record = await until(lambda: _cursor_warmup(client, uri), f"a cursor warm-up of {uri}", timeout=120)
    assert not record["cancelled"] and record["promptChars"] > len(INDENTED_LINE), record
    first = await first_token_ms(client, uri, end_position(head))
    print(f"\nspm, first token where the cursor rested (computed ahead): {first:.0f} ms")


async def _cursor_warmup(client: LanguageClient, uri: str):
    return next((w for w in (await status(client))["warmups"] if w["uri"] == uri and w["at"] == "cursor"), None)
