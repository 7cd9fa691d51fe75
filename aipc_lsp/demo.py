"""`aipc-lsp demo`: start `aipc-lsp serve` over stdio exactly as an editor would, type into a
Python file keystroke by keystroke, and print the suggestions the server sends back with
their timing."""

from __future__ import annotations

import asyncio
import sys
import time

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from aipc_lsp.lsp_client import drain, first_inline_text, plain

GREY, BOLD, RESET = ("\033[90m", "\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "", "")

# What the "user" has written before the demo starts typing.
FILE_START = (
    "class Stack:\n"
    "    \"\"\"A last-in, first-out stack.\"\"\"\n"
    "\n"
    "    def __init__(self):\n"
    "        self.items = []\n"
    "\n"
)
# What is already written after the cursor: the model fills the hole between the two
# (fill-in-the-middle), as when the user adds a method to a class.
FILE_END = (
    "\n"
    "\n"
    "    def peek(self):\n"
    "        return self.items[-1]\n"
    "\n"
    "    def __len__(self):\n"
    "        return len(self.items)\n"
)
# Typed one character at a time; a suggestion is requested after every keystroke.
TYPED = "    def push(self, item):\n        "
THEN = "self.items.append(item)\n\n    def pop(self):\n        "


class DemoClient(LanguageClient):
    def __init__(self):
        super().__init__("aipc-lsp-demo", "1")
        self.version = 0

        @self.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def create_progress(params):
            return None

        @self.feature(types.PROGRESS)
        def progress(params):
            value = plain(params.value)
            value = value if isinstance(value, dict) else vars(value)
            message = value.get("message") or value.get("title") or ""
            percent = value.get("percentage")
            print(f"  {GREY}[{percent if percent is not None else '':>3}%] {message}{RESET}", file=sys.stderr)

        @self.feature(types.WINDOW_SHOW_MESSAGE)
        def show(params):
            print(f"  server says: {params.message}", file=sys.stderr)

        @self.feature(types.WINDOW_LOG_MESSAGE)
        def log(params):
            pass


async def _inline(client: DemoClient, uri: str, before: str) -> tuple[str | None, float]:
    """The suggestion at the end of `before` (the text before the cursor)."""
    lines = before.split("\n")
    position = types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2)
    started = time.perf_counter()
    result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
    elapsed = (time.perf_counter() - started) * 1000
    return first_inline_text(result), elapsed


def _show(before: str, suggestion: str, after: str) -> None:
    shown = "\n".join(before.split("\n")[-3:])
    rest = after.lstrip("\n").split("\n")[0]  # the next line, to show what the suggestion fills in before
    print(f"{shown}{BOLD}{suggestion}{RESET}\n{GREY}{rest}{RESET}")


async def _type(client: DemoClient, uri: str, before: str, typed: str, after: str, pause: float) -> str:
    """Send each keystroke as didChange + inline completion without waiting for answers,
    as an editor does; older requests are superseded by newer ones. Returns the new text
    before the cursor."""
    pending = []
    for ch in typed:
        before += ch
        client.version += 1
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=client.version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=before + after)]))
        pending.append(asyncio.ensure_future(_inline(client, uri, before)))
        await asyncio.sleep(pause)
    results = await asyncio.gather(*pending)
    superseded = sum(1 for suggestion, _ in results[:-1] if suggestion is None)
    suggestion, elapsed = results[-1]
    print(f"\n{BOLD}after {len(typed)} keystrokes ({superseded} earlier requests superseded), "
          f"suggestion in {elapsed:.0f} ms:{RESET}")
    _show(before, suggestion or "", after)
    return before


async def run_demo(config: str | None = None) -> int:
    command = [sys.executable, "-m", "aipc_lsp", "serve"]
    if config:
        command += ["--config", config]
    print(f"{BOLD}aipc-lsp demo{RESET}: starting `aipc-lsp {' '.join(command[3:])}` over stdio, as an editor would", file=sys.stderr)
    client = DemoClient()
    await client.start_io(*command)
    draining = asyncio.ensure_future(drain(client._server.stderr))
    try:
        await client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(
                window=types.WindowClientCapabilities(work_done_progress=True),
                text_document=types.TextDocumentClientCapabilities(
                    inline_completion=types.InlineCompletionClientCapabilities())),
            process_id=None))
        client.initialized(types.InitializedParams())
        uri = "file:///demo/stack.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=0, text=FILE_START + FILE_END)))
        started = time.perf_counter()
        while True:
            state = plain(await client.protocol.send_request_async("aipc/status", {}))
            if state["ready"] or state["error"]:
                break
            await asyncio.sleep(0.2)
        if state["error"]:
            print(f"the model could not be prepared: {state['error']}", file=sys.stderr)
            return 1
        slot = state["slots"][0]
        print(f"model ready in {time.perf_counter() - started:.1f} s: {slot['model']} "
              f"({slot['engine']} on {slot['device']})", file=sys.stderr)
        before = await _type(client, uri, FILE_START, TYPED, FILE_END, pause=0.05)
        await _type(client, uri, before, THEN, FILE_END, pause=0.03)
        state = plain(await client.protocol.send_request_async("aipc/status", {}))
        slot = state["slots"][0]
        print(f"\n{GREY}slot {slot['slot']}: {slot['served']} generations served, {slot['cancelled']} cancelled, "
              f"first token ~{slot['ttft_ms'] or 0:.0f} ms, {slot['tokens_per_s'] or 0:.0f} tokens/s{RESET}")
        await client.shutdown_async(None)
        client.exit(None)
        await asyncio.wait_for(client._server.wait(), 10)
        return 0
    finally:
        draining.cancel()
        if client._server.returncode is None:
            client._server.kill()
        await client.stop()
