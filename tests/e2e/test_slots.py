"""Two device slots with the real engine and model: routing away from a busy slot, a typing
storm that never runs two generations for one document, a slot that cannot load, and
`aipc-lsp status` against a running server."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from conftest import configure, end_position, inline, open_document, plain, replace_document, server_config, status, wait_ready

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

# "accel" stands in for the NPU/iGPU slot: on this CPU-only machine both are OpenVINO on the
# CPU with one thread each, so they really run side by side on the two cores.
TWO_SLOTS = {
    "slots": [
        {"name": "accel", "engine": "openvino", "device": "CPU", "threads": 1},
        {"name": "cpu", "engine": "openvino", "device": "CPU", "threads": 1},
    ],
    # Routing is what these tests are about: each prompt is the document's own, not also the
    # snippets of the documents the tests opened before it.
    # Nothing computed ahead for an accept: this module counts the server's jobs and warm-ups.
    "completion": {"other_files": False, "suggest_ahead": False},
    # A chat in one chunk: with the default 32-token chunks a completion may rightly wait for the
    # next chunk boundary on "accel" when the measured rates say it finishes sooner there, and two
    # identical slots' rates differ only by noise (tests/unit/test_routing.py covers the cut-in).
    "scheduler": {"chat_chunk_tokens": 400},
}
LONG = "PRIMES = [\n    2,\n    3,\n    5,\n    7,\n    11,\n    13,\n"  # the model extends it for hundreds of tokens
STACK = ("class Stack:\n    def __init__(self):\n        self.items = []\n\n"
         "    def push(self, item):\n        ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"), initialization_options=TWO_SLOTS))
    state = await wait_ready(lsp_client)
    assert state["ready"], state
    # Both slots load in the background; the first ready one already serves.
    for _ in range(300):
        if all(s["state"] == "ready" for s in (await status(lsp_client))["slots"]):
            break
        await asyncio.sleep(0.1)
    yield
    await lsp_client.shutdown_session()


def _slot(state: dict, name: str) -> dict:
    return next(s for s in state["slots"] if s["slot"] == name)


async def test_completion_moves_to_the_cpu_slot_while_the_accelerator_is_busy(client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 300, "max_lines": 200}})
    open_document(client, "file:///project/long.py", LONG)
    open_document(client, "file:///project/stack.py", STACK)
    before = await status(client)
    long_job = asyncio.ensure_future(inline(client, "file:///project/long.py", end_position(LONG, "utf-8")))
    deadline = time.monotonic() + 20
    while not _slot(await status(client), "accel")["busy"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    # A suggestion for another document while "accel" streams a long generation.
    suggestion = await inline(client, "file:///project/stack.py", end_position(STACK, "utf-8"))
    during = await status(client)
    assert suggestion and suggestion[0].strip()
    assert _slot(during, "accel")["busy"], "the long generation should still be running"
    assert _slot(during, "cpu")["served"] == _slot(before, "cpu")["served"] + 1, during
    assert not long_job.done()
    # Closing the document stops its generation at once.
    client.text_document_did_close(types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri="file:///project/long.py")))
    assert await asyncio.wait_for(long_job, 5) == []
    await configure(client, {})


async def test_completion_is_served_by_the_cpu_while_the_accelerator_streams_a_chat(client: LanguageClient):
    await configure(client, {"chat": {"max_tokens": 400}})
    source = "def area(width, height):\n    return width * height\n"
    open_document(client, "file:///project/area.py", source)
    open_document(client, "file:///project/stack2.py", STACK)
    before = await status(client)
    chat = client.protocol.send_request("aipc/inlineChat", {
        "textDocument": {"uri": "file:///project/area.py"},
        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 0}},
        "instruction": "Explain in detail, step by step, what this function does and how to test it.",
        "mode": "ask", "history": []})
    deadline = time.monotonic() + 30
    while not ((job := _slot(await status(client), "accel")["job"]) and job["kind"] == "chat"):
        assert time.monotonic() < deadline, "the chat never started on the accelerator"
        await asyncio.sleep(0.02)
    suggestion = await inline(client, "file:///project/stack2.py", end_position(STACK, "utf-8"))
    during = await status(client)
    assert suggestion and suggestion[0].strip()
    assert _slot(during, "cpu")["served"] == _slot(before, "cpu")["served"] + 1, during
    assert not chat.done(), "the chat should still be streaming"
    answer = plain(await asyncio.wait_for(asyncio.wrap_future(chat), 120))
    assert answer["text"].strip()
    await configure(client, {})


async def test_typing_storm(client: LanguageClient):
    """20 keystrokes a second for 10 seconds, each a didChange plus an inline completion."""
    uri = "file:///project/storm.py"
    text = "import os\n\n\ndef list_files(folder):\n    "
    open_document(client, uri, text, version=1)
    typed = ("result = []\n    for name in os.listdir(folder):\n        if name.endswith('.py'):\n"
             "            result.append(os.path.join(folder, name))\n    return result\n\n\n"
             "def count_lines(path):\n    with open(path) as handle:\n        return len(handle.")
    requests = []
    version = 1
    for ch in typed[:200]:
        text += ch
        version += 1
        replace_document(client, uri, text, version)
        requests.append(asyncio.ensure_future(inline(client, uri, end_position(text, "utf-8"))))
        await asyncio.sleep(0.05)
    answers = await asyncio.wait_for(asyncio.gather(*requests), 60)
    assert len(answers) == len(requests)  # every request was answered
    state = await status(client)
    assert state["maxGenerationsPerKey"] == 1, state
    assert state["liveJobs"] == []
    last = answers[-1]
    assert last and last[0].strip(), "the last keystroke got no suggestion"
    # Asked again for the final text, the server gives the same suggestion: the last answer
    # was computed for the final text, not for an earlier version.
    again = await inline(client, uri, end_position(text, "utf-8"))
    assert again == last
    served = sum(_slot(state, name)["served"] for name in ("accel", "cpu"))
    cancelled = sum(_slot(state, name)["cancelled"] for name in ("accel", "cpu"))
    assert served >= 1 and cancelled >= 1


STATUS_PORT = _free_port()
BROKEN_FIRST = {"slots": [{"name": "npu", "engine": "openvino", "device": "NPU"},
                          {"name": "cpu", "engine": "openvino", "device": "CPU"}],
                "scheduler": {"retry_interval_s": 3600}}


@pytest_lsp.fixture(config=server_config("--status-port", str(STATUS_PORT)), scope="module")
async def broken_first(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"), initialization_options=BROKEN_FIRST))
    yield
    await lsp_client.shutdown_session()


async def test_a_slot_that_cannot_load_is_reported_once_and_the_next_one_serves(broken_first: LanguageClient):
    state = await wait_ready(broken_first)
    assert state["ready"], state
    for _ in range(100):
        state = await status(broken_first)
        if _slot(state, "npu")["state"] == "unhealthy":
            break
        await asyncio.sleep(0.1)
    npu = _slot(state, "npu")
    assert npu["state"] == "unhealthy" and "NPU" in npu["error"], npu
    warnings = [m.message for m in broken_first.messages if "slot npu" in m.message]
    assert len(warnings) == 1 and "using cpu" in warnings[0], broken_first.messages
    open_document(broken_first, "file:///project/stack.py", STACK)
    assert await inline(broken_first, "file:///project/stack.py", end_position(STACK, "utf-8"))
    # `aipc-lsp status` asks the running server on its loopback status port.
    shown = subprocess.run([sys.executable, "-m", "aipc_lsp", "status", "--port", str(STATUS_PORT), "--json"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    reported = json.loads(shown.stdout)
    assert _slot(reported, "cpu")["served"] >= 1 and _slot(reported, "npu")["state"] == "unhealthy"
    table = subprocess.run([sys.executable, "-m", "aipc_lsp", "status", "--port", str(STATUS_PORT)],
                           capture_output=True, text=True, timeout=60)
    assert "unhealthy" in table.stdout and "cpu" in table.stdout

