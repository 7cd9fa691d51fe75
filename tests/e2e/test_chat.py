"""Inline chat end to end: the real server over stdio, a real model (SmolLM2-135M, the test
session's model from tests/conftest.py, whose GGUF carries a ChatML template), streamed pieces,
edits, cancellation, bad params."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from conftest import cancel_and_expect_slot_free, configure, open_document, plain, server_config, status, wait_ready

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

ADD = "import os\n\n\ndef add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
METHOD = "class Box:\n    def size(self):\n        return len(self.items)\n"
CHUNKS: list[tuple[float, dict]] = []
APPLIED: list[dict] = []
# $/progress values that are not work-done reports: partial results by token.
PARTIAL: dict = {}


def _selection(start_line: int, end_line: int) -> dict:
    return {"start": {"line": start_line, "character": 0}, "end": {"line": end_line, "character": 0}}


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    @lsp_client.feature("aipc/chatChunk")
    def on_chunk(ls, params):
        CHUNKS.append((time.perf_counter(), plain(params)))

    @lsp_client.feature(types.WORKSPACE_APPLY_EDIT)
    def on_apply_edit(ls, params: types.ApplyWorkspaceEditParams):
        APPLIED.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    # pytest-lsp's $/progress handler knows work-done reports only; partial results are ours.
    work_done_progress = lsp_client.protocol.fm.features[types.PROGRESS]

    def on_progress(params: types.ProgressParams):
        value = plain(params.value)
        if isinstance(value, dict) and "kind" not in value:
            PARTIAL.setdefault(params.token, []).append(value)
            return None
        return work_done_progress(params)

    lsp_client.protocol.fm.features[types.PROGRESS] = on_progress
    lsp_client.set_configuration({"aipc": {}})
    capabilities = client_capabilities("neovim@v0.11.0")
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=capabilities, initialization_options={"chat": {"max_tokens": 96}}))
    state = await wait_ready(lsp_client)
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


async def chat(client: LanguageClient, params: dict) -> dict:
    return plain(await client.protocol.send_request_async("aipc/inlineChat", params))


async def test_edit_streams_chunks_and_returns_an_edit_for_the_selection(client: LanguageClient):
    uri = "file:///project/add.py"
    open_document(client, uri, ADD)
    CHUNKS.clear()
    started = time.perf_counter()
    request = client.protocol.send_request("aipc/inlineChat", {
        "textDocument": {"uri": uri}, "range": _selection(3, 5), "instruction": "Add a docstring to this function"})
    msg_id = next(reversed(client.protocol._request_futures))
    result = plain(await asyncio.wait_for(asyncio.wrap_future(request), 120))
    # Streamed while generating: several pieces for this request id, before the response.
    pieces = [c for t, c in CHUNKS if c["id"] == msg_id]
    assert len(pieces) >= 3, CHUNKS
    assert "".join(p["text"] for p in pieces) == result["text"]
    first_chunk_ms = (CHUNKS[0][0] - started) * 1000
    print(f"time to first chat chunk: {first_chunk_ms:.0f} ms, whole answer {result['totalMs']:.0f} ms")
    assert result["mode"] == "edit" and "```" in result["text"]
    assert "<|im_end|>" not in result["text"] and "<|im_start|>" not in result["text"]
    # The edit replaces exactly the selected lines with the answer's code, indented to fit.
    edits = result["edit"]["changes"] if result["edit"].get("changes") else None
    if edits is None:
        (change,) = result["edit"]["documentChanges"]
        assert change["textDocument"] == {"uri": uri, "version": 1}
        edits = {uri: change["edits"]}
    (edit,) = list(edits.values())[0]
    assert edit["range"] == _selection(3, 5)
    assert "def add" in edit["newText"] and edit["newText"].endswith("\n")
    compile(edit["newText"], "answer", "exec")  # the model's code block is valid Python here


async def test_partial_result_token_streams_progress_instead_of_chunks(client: LanguageClient):
    uri = "file:///project/box.py"
    open_document(client, uri, METHOD)
    CHUNKS.clear()
    client.progress_reports["work-1"] = []  # as if the client had created it
    result = await chat(client, {"textDocument": {"uri": uri}, "range": _selection(1, 3),
                                 "instruction": "What does size return?", "partialResultToken": "chat-1",
                                 "workDoneToken": "work-1"})
    assert result["mode"] == "ask" and result["edit"] is None and result["text"].strip()
    assert not CHUNKS
    streamed = PARTIAL["chat-1"]
    assert len(streamed) >= 3 and "".join(v["text"] for v in streamed) == result["text"]
    work = client.progress_reports["work-1"]
    assert work[0].kind == "begin" and work[0].cancellable and work[-1].kind == "end"


async def test_history_is_kept_per_document(client: LanguageClient):
    uri = "file:///project/history.py"
    open_document(client, uri, METHOD)
    ask = {"textDocument": {"uri": uri}, "range": _selection(1, 3), "instruction": "What is self.items?"}
    assert (await chat(client, ask))["historyTurns"] == 0
    second = await chat(client, {**ask, "instruction": "Why len?"})
    assert second["historyTurns"] == 1 and second["promptTokens"] > 0
    # A client-managed (here: empty) history replaces the server's.
    assert (await chat(client, {**ask, "history": []}))["historyTurns"] == 0
    # Another document has its own (empty) history.
    other = "file:///project/other.py"
    open_document(client, other, METHOD)
    assert (await chat(client, {**ask, "textDocument": {"uri": other}}))["historyTurns"] == 0


async def test_cancel_answers_32800_and_frees_the_slot(client: LanguageClient):
    uri = "file:///project/cancel.py"
    open_document(client, uri, ADD)
    await configure(client, {"chat": {"max_tokens": 1000}})
    CHUNKS.clear()
    request = client.protocol.send_request("aipc/inlineChat", {
        "textDocument": {"uri": uri}, "range": _selection(0, 8),
        "instruction": "Explain every line of this program in detail", "mode": "ask"})
    msg_id = next(reversed(client.protocol._request_futures))
    deadline = time.monotonic() + 30
    while not CHUNKS:
        assert time.monotonic() < deadline, "no chunk streamed"
        await asyncio.sleep(0.02)
    await cancel_and_expect_slot_free(client, request, msg_id)
    # No piece of the cancelled answer arrives after its error response: the slot is free, so every
    # piece there was is on its way before the answer to a status request that follows.
    count = len(CHUNKS)
    await status(client)
    assert len(CHUNKS) == count
    await configure(client, {})


async def test_a_selection_past_the_tokenizers_cap_is_refused_with_its_real_size(client: LanguageClient):
    # OpenVINO's tokenizer keeps only the last 8192 tokens of a longer text, without a word: the
    # count in the error (and the prompt budget) must be the whole selection's, not that cap.
    uri = "file:///project/big.py"
    big = "".join(f"def f{i}(x):\n    return x * {i} + {i * 7}\n\n\n" for i in range(1200))
    open_document(client, uri, big)
    with pytest.raises(Exception) as error:
        await chat(client, {"textDocument": {"uri": uri}, "range": _selection(0, big.count("\n")),
                            "instruction": "Explain this code", "mode": "ask"})
    assert getattr(error.value, "code", None) == int(types.LSPErrorCodes.RequestFailed), error.value
    found = re.search(r"are (\d+) tokens", str(error.value))
    assert found, error.value
    # Over 45,000 characters of code: a token is 4 characters at the very most here.
    assert int(found.group(1)) > len(big) // 4 > 8192, error.value
    assert (await status(client))["ready"]  # still serving


@pytest.mark.parametrize("params, message", [
    ({"textDocument": {"uri": "file:///project/add.py"}}, "range"),
    ({"textDocument": {}, "range": _selection(0, 1), "instruction": "x"}, "textDocument.uri"),
    ({"textDocument": {"uri": "file:///project/add.py"}, "range": _selection(0, 1), "instruction": ""}, "instruction"),
    ({"textDocument": {"uri": "file:///project/add.py"}, "range": _selection(2, 1), "instruction": "x"}, "before"),
    ({"textDocument": {"uri": "file:///project/add.py"}, "range": _selection(0, 1), "instruction": "x",
      "history": [{"role": "robot", "content": "x"}]}, "history"),
    ({"textDocument": {"uri": "file:///project/never-opened.py"}, "range": _selection(0, 1), "instruction": "x"}, "not open"),
    ([1, 2], "object"),
])
async def test_bad_params_get_invalid_params(client: LanguageClient, params, message):
    open_document(client, "file:///project/add.py", ADD)
    with pytest.raises(Exception) as error:
        await client.protocol.send_request_async("aipc/inlineChat", params)
    assert getattr(error.value, "code", None) == -32602, error.value
    assert message in str(error.value)
    assert (await status(client))["ready"]  # still serving


async def test_chat_command_applies_the_edit_through_workspace_apply_edit(client: LanguageClient):
    uri = "file:///project/cmd.py"
    open_document(client, uri, ADD)
    APPLIED.clear()
    result = plain(await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="aipc.chat", arguments=[uri, _selection(3, 5), "Rename the function to plus"])))
    assert result["mode"] == "edit" and result["text"]
    if result["edit"] is None:
        pytest.fail(f"the model's answer had no code block: {result['text']!r}")
    assert result["applied"] is True
    (applied,) = APPLIED
    assert applied.label.startswith("aipc: Rename")
    with pytest.raises(Exception) as error:
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command="aipc.chat", arguments=[uri]))
    assert getattr(error.value, "code", None) == -32602
