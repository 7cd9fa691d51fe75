"""The tasks through `aipc-lsp serve` over stdio, as an editor asks: the other files a task needs
opened beside it (didOpen), the document opened, textDocument/inlineCompletion at the cursor, the
answer applied as the editor accepts it, the documents closed again and the server told to forget
them, so that each task sees only its own files (EvalClient.forget_other_files)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Callable

from lsprotocol import types

from aipc_lsp.bench.server import BenchClient
from aipc_lsp.eval.scoring import accept
from aipc_lsp.eval.tasks import Task
from aipc_lsp.lsp_client import drain, first_inline_text

# Where the tasks' documents are, as far as the server knows (a workspace folder of its own).
PROJECT = "file:///aipc-eval/project"
READY_TIMEOUT_S = 900.0  # the first start may fetch and convert the model
REQUEST_TIMEOUT_S = 300.0


def uri_of(path: str) -> str:
    return f"{PROJECT}/{path}"


def utf16_column(line: str, column: int) -> int:
    return len(line[:column].encode("utf-16-le")) // 2


def offset_of(text: str, position: types.Position) -> int:
    """A position (UTF-16 code units, the LSP default) as an index into `text`."""
    lines = text.split("\n")
    row = min(position.line, len(lines) - 1)
    line, units, column = lines[row], 0, 0
    while column < len(line) and units < position.character:
        units += 2 if ord(line[column]) > 0xFFFF else 1
        column += 1
    return sum(len(l) + 1 for l in lines[:row]) + column


class EvalClient(BenchClient):
    async def forget_other_files(self, timeout: float = 5.0) -> bool:
        """The server keeps chunks of closed documents for later prompts (as llama.vim's ring
        does), so one task's documents would reach the next task's prompt, and a task's answer
        would depend on the ones run before it. `completion.other_files = false` makes the server
        drop them: set for a moment through the workspace layer, then that layer emptied again
        (the run's own settings are initializationOptions, which stay). True once aipc/status
        lists no other files (before the next task opens any)."""
        for settings in ({"aipc": {"completion": {"other_files": False}}}, {"aipc": {}}):
            self.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))
        deadline = time.perf_counter() + timeout
        while (await self.status()).get("otherFiles"):
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self, uri: str) -> None:
        self.texts.pop(uri, None)
        self.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        deadline = time.perf_counter() + timeout
        while True:
            state = await self.status()
            if state["ready"] or state["error"]:
                return state
            if time.perf_counter() > deadline:
                return {**state, "error": f"the model was not ready after {timeout:.0f} s"}
            await asyncio.sleep(0.2)

    async def complete(self, task: Task, open_other_files: bool) -> dict:
        others = [(uri_of(path), text) for path, text in task.other_files] if open_other_files else []
        for uri, text in others:
            self.open(uri, text)
        uri = uri_of(task.path)
        self.open(uri, task.text)
        line = task.text.split("\n")[task.line]
        position = types.Position(line=task.line, character=utf16_column(line, task.column))
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))
        sent = time.perf_counter()
        try:
            result = await asyncio.wait_for(self.text_document_inline_completion_async(params), REQUEST_TIMEOUT_S)
            error = None
        except Exception as exc:  # a timeout or an error answer: scored as no suggestion
            result, error = None, f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - sent) * 1000
        for other in [uri] + [u for u, _ in others]:
            self.close(other)
        text = first_inline_text(result)
        if text is None:
            return {"suggestion": "", "accepted": task.text, "ms": None if error else ms, "error": error}
        item = (result.items if isinstance(result, types.InlineCompletionList) else result)[0]
        start = end = task.offset
        if item.range is not None:
            start, end = offset_of(task.text, item.range.start), offset_of(task.text, item.range.end)
        return {"suggestion": text, "accepted": accept(task.text, start, end, text), "ms": ms}


SERVE = (sys.executable, "-m", "aipc_lsp", "serve")


async def run(tasks: list[Task], *, options: dict, open_other_files: bool = True,
              progress: Callable[[str], None] = lambda msg: None, command: tuple[str, ...] = SERVE) -> dict:
    """`options`: initializationOptions (the model and any settings). Returns the answers by task id,
    or an error when the server cannot serve."""
    client = EvalClient()
    await client.start_io(*command)
    draining = asyncio.ensure_future(drain(client._server.stderr))
    out: dict = {}
    try:
        return await _serve(client, tasks, options, open_other_files, progress, out)
    except (RuntimeError, ConnectionError) as exc:  # pygls: the server process exited
        return {**out, "error": f"the server stopped: {exc}"}
    finally:
        draining.cancel()
        if client._server.returncode is None:
            client._server.kill()
        await client.stop()


async def _serve(client: EvalClient, tasks: list[Task], options: dict, open_other_files: bool,
                 progress: Callable[[str], None], out: dict) -> dict:
    """Fills `out` as it goes, so that what was answered before the server failed is kept."""
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities())),
        process_id=None, initialization_options=options, root_uri=PROJECT,
        workspace_folders=[types.WorkspaceFolder(uri=PROJECT, name="project")]))
    client.initialized(types.InitializedParams())
    started = time.perf_counter()
    state = await client.wait_ready()
    if state["error"]:
        return {"error": state["error"]}
    out.update(ready_s=time.perf_counter() - started, model=state.get("model"), answers={})
    for index, task in enumerate(tasks, 1):
        if client._server.returncode is not None:
            return {**out, "error": f"the server exited (status {client._server.returncode}) at task {task.id}"}
        out["answers"][task.id] = await client.complete(task, open_other_files)
        if not await client.forget_other_files():
            # Later tasks' prompts may hold this one's files: their answers depend on the order.
            out["other_files_kept"] = out.get("other_files_kept", 0) + 1
        progress(f"server {index}/{len(tasks)} {task.id}")
    # A slot written off mid-run answers nothing from then on: the report says so.
    out["slots"] = [{key: slot.get(key) for key in ("slot", "state", "served", "failed", "error")}
                    for slot in (await client.status()).get("slots", [])]
    await client.shutdown_async(None)
    client.exit(None)
    try:
        await asyncio.wait_for(client._server.wait(), 10)
    except asyncio.TimeoutError:
        pass  # a slow exit (a busy machine) loses no answer: `run` kills the process
    return out
