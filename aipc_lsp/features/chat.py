"""`aipc/inlineChat` (streamed answer, edit for the selection) and the `aipc.chat` command.

Pieces stream as `$/progress` on the request's partialResultToken when the client sent one,
else as `aipc/chatChunk` notifications carrying the request id. The final response repeats
the whole text, so a client that ignores the stream still gets the answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcRequestCancelled

from aipc_lsp.chat import ChatAnswer, ChatRequest, ChatSuperseded, ChatTooLong, fit_code
from aipc_lsp.engines.base import RequestError
from aipc_lsp.lsp_client import plain
from aipc_lsp.messages import CHAT_CHUNK, INLINE_CHAT, ChatChunkParams, InlineChatParams
from aipc_lsp.protocol import invalid_params
from aipc_lsp.runtime import ModelUnavailable

log = logging.getLogger(__name__)

CHAT_COMMAND = "aipc.chat"
REQUEST_FAILED = int(types.LSPErrorCodes.RequestFailed)
# Lines before an empty selection shown to the model as "where the cursor is".
SURROUNDING_LINES = 30


def _pos_key(position: types.Position) -> tuple[int, int]:
    return position.line, position.character


class _Target:
    """The selection in the open document, and where an edit replacing it goes."""

    def __init__(self, ls, method: str, uri: str, selection: types.Range):
        document = ls.workspace.text_documents.get(uri)
        if document is None:
            raise invalid_params(method, f"{uri} is not open (send textDocument/didOpen first)")
        if _pos_key(selection.end) < _pos_key(selection.start):
            raise invalid_params(method, "range ends before it starts")
        if selection.end.line > len(document.lines):
            raise invalid_params(method, f"range ends at line {selection.end.line}; the document has {len(document.lines)}")
        self.document = document
        self.version = document.version
        source = document.source
        start = document.offset_at_position(selection.start)
        end = document.offset_at_position(selection.end)
        line_start = document.offset_at_position(types.Position(line=selection.start.line, character=0))
        self.text = source[start:end]
        before = source[line_start:start]
        line = document.lines[selection.start.line] if selection.start.line < len(document.lines) else ""
        self.indent = line[:len(line) - len(line.lstrip(" \t"))]
        # Selected from the start of the line's text: replace the indentation too and re-indent.
        self.from_line_start = not before.strip()
        edit_start = types.Position(line=selection.start.line, character=0) if self.from_line_start else selection.start
        self.range = types.Range(start=edit_start, end=selection.end)
        first = max(0, selection.start.line - SURROUNDING_LINES)
        self.surrounding = "" if self.text else source[
            document.offset_at_position(types.Position(line=first, character=0)):start]

    def edit(self, ls, code: str) -> types.WorkspaceEdit:
        text_edit = types.TextEdit(range=self.range, new_text=fit_code(code, self.text, self.indent, self.from_line_start))
        caps = ls.client_capabilities.workspace
        edit_caps = caps.workspace_edit if caps else None
        if edit_caps is not None and edit_caps.document_changes:
            # Versioned: a client rejects the edit if the document moved on.
            return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
                text_document=types.OptionalVersionedTextDocumentIdentifier(uri=self.document.uri, version=self.version),
                edits=[text_edit])])
        return types.WorkspaceEdit(changes={self.document.uri: [text_edit]})


async def run_chat(ls, method: str, params: InlineChatParams, msg_id: Any) -> tuple[dict, types.WorkspaceEdit | None]:
    uri = params.text_document.uri
    # An edit sent after the request may have been applied already: its range is for a text the
    # server no longer has (-32801, not a range error or an edit in the wrong place).
    ls.protocol.check_unmodified(method, uri)
    target = _Target(ls, method, uri, params.range)
    loop = asyncio.get_running_loop()
    done = False
    work = params.work_done_token

    def send(piece: str) -> None:
        if done:
            return  # a piece decoded after the answer (or its cancellation) went out
        if params.partial_result_token is not None:
            ls.progress(types.ProgressParams(token=params.partial_result_token, value={"text": piece}))
        else:
            ls.protocol.notify(CHAT_CHUNK, ChatChunkParams(id=msg_id, text=piece))

    history = None if params.history is None else [{"role": t.role, "content": t.content} for t in params.history]
    request = ChatRequest(
        uri=uri, instruction=params.instruction, selection=target.text,
        language_id=target.document.language_id or "", surrounding=target.surrounding,
        mode=params.mode, history=history, version=target.version)
    task = asyncio.current_task()
    if work is not None:
        ls.work_done_progress.begin(work, types.WorkDoneProgressBegin(title="aipc: chat", cancellable=True))
        # The client's "cancel" button on the progress cancels the request itself.
        ls.work_done_progress.tokens[work].add_done_callback(lambda _f: task.cancel())
    outcome = "cancelled"
    try:
        answer: ChatAnswer = await ls.chat.answer(
            request, ls.settings.chat, lambda piece: loop.call_soon_threadsafe(send, piece))
        outcome = "done"
    except ModelUnavailable as exc:
        outcome = "failed"
        raise JsonRpcException(f"aipc-lsp has no model: {exc}", code=REQUEST_FAILED) from None
    except (ChatTooLong, RequestError) as exc:
        outcome = "failed"
        raise JsonRpcException(str(exc), code=REQUEST_FAILED) from None
    except ChatSuperseded as exc:
        raise JsonRpcRequestCancelled(str(exc)) from None
    finally:
        # Queued after every piece already scheduled: nothing streams after the response.
        loop.call_soon(_finish, ls, work, outcome)

        def _stop() -> None:
            nonlocal done
            done = True
        loop.call_soon(_stop)

    edit = None
    dropped = None
    if answer.code is not None:
        if ls.workspace.text_documents.get(uri) is not target.document or target.document.version != target.version:
            dropped = "the document changed while the answer was generated"
        else:
            edit = target.edit(ls, answer.code)
    result = {
        "text": answer.text,
        "mode": answer.mode,
        "edit": edit,  # unstructured by the protocol's converter as the response is written
        "firstTokenMs": answer.first_token_ms,
        "totalMs": answer.total_ms,
        "promptTokens": answer.prompt_tokens,
        "historyTurns": answer.history_turns,
    }
    if dropped:
        result["editDropped"] = dropped
    return result, edit


def _finish(ls, work, outcome: str) -> None:
    if work is None:
        return
    ls.work_done_progress.tokens.pop(work, None)
    try:
        ls.work_done_progress.end(work, types.WorkDoneProgressEnd(message=outcome))
    except Exception:
        log.debug("progress end dropped", exc_info=True)


def register(server) -> None:
    @server.feature(INLINE_CHAT)
    async def inline_chat(ls, params: InlineChatParams) -> dict:
        result, _ = await run_chat(ls, INLINE_CHAT, params, ls.protocol.msg_id)
        return result

    @server.command(CHAT_COMMAND)
    async def chat_command(ls, *args) -> dict:
        if len(args) != 3:
            raise JsonRpcInvalidParams(f"{CHAT_COMMAND} takes 3 arguments (uri, range, instruction), got {len(args)}")
        uri, selection, instruction = (plain(a) for a in args)
        params = ls.protocol.structure_params(CHAT_COMMAND, {
            "textDocument": {"uri": uri}, "range": selection, "instruction": instruction}, InlineChatParams)
        result, edit = await run_chat(ls, CHAT_COMMAND, params, ls.protocol.msg_id)
        result["applied"] = False
        caps = ls.client_capabilities.workspace
        if edit is not None and caps is not None and caps.apply_edit:
            applied = await ls.workspace_apply_edit_async(
                types.ApplyWorkspaceEditParams(edit=edit, label=f"aipc: {instruction.strip()[:60]}"))
            result["applied"] = bool(applied.applied)
        return result
