"""textDocument/inlineCompletion (ghost text) and textDocument/completion (one item with the
whole suggestion, for clients without inline completion)."""

from __future__ import annotations

import logging
import re

from lsprotocol import types
from pygls.workspace import TextDocument

from aipc_lsp.engines.base import RequestError
from aipc_lsp.messages import WARM, WarmParams
from aipc_lsp.snippets import indentation
from aipc_lsp.suggest import Suggestion

log = logging.getLogger(__name__)
_WORD_TAIL = re.compile(r"[\w$]*$")


def _open_at(ls, uri: str, position: types.Position) -> tuple[TextDocument, int] | None:
    """The open document and the offset of `position` in it (None: never opened, or past its end)."""
    if uri not in ls.workspace.text_documents:
        return None
    document = ls.workspace.get_text_document(uri)
    if position.line > len(document.lines):
        return None
    return document, document.offset_at_position(position)


def _ring(ls):
    """The other files' snippets (snippets.SnippetRing) when completion.other_files is on; None:
    nothing is fed to it, nothing picked from it."""
    settings = ls.settings.completion
    return ls.snippets if settings.enabled and settings.other_files else None


async def _suggest_at(ls, uri: str, position: types.Position) -> tuple[TextDocument, Suggestion] | None:
    if ls.shutting_down or not ls.settings.completion.enabled:
        return None
    if ls.protocol.modified_since_sent(uri):
        # Edited after the request was sent (the edit was applied before this handler ran): the
        # position is in a text the server no longer has. Nothing, as for an answer that comes
        # after an edit (clients ask again for the new text; -32801 would be logged by some).
        return None
    found = _open_at(ls, uri, position)
    if found is None:
        return None  # nothing to complete
    document, offset = found
    version = document.version
    try:
        suggestion = await ls.suggester.suggest(
            text=document.source, offset=offset, settings=ls.settings.completion,
            uri=uri, language_id=document.language_id or "", version=version, snippets=_ring(ls),
        )
    except RequestError as exc:  # e.g. a prompt budget larger than the KV cache: say what to change
        ls.tell_user_once("completion cannot run", f"aipc-lsp: no suggestion: {exc}")
        return None
    except Exception as exc:  # ModelUnavailable was shown once already; keep answering
        log.debug("no suggestion for %s: %s", uri, exc)
        return None
    if suggestion is None or not suggestion.text:
        return None
    # The document moved on while we generated: this suggestion belongs to the past.
    if ls.workspace.get_text_document(uri).version != version:
        return None
    return document, suggestion


def _snippets_supported(ls) -> bool:
    completion = ls.client_capabilities.text_document and ls.client_capabilities.text_document.completion
    item = completion.completion_item if completion else None
    return bool(item and item.snippet_support)


def _as_snippet(text: str, base_indent: str) -> str:
    """Plain text as a snippet body: `$`, `}` and `\\` escaped, later lines relative to the
    cursor line's indentation."""
    escaped = text.replace("\\", "\\\\").replace("$", "\\$").replace("}", "\\}")
    first, *rest = escaped.split("\n")
    rest = [l[len(base_indent):] if l.startswith(base_indent) else l.lstrip(" \t") for l in rest]
    return "\n".join([first, *rest])


def register(server) -> None:
    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        found = await _suggest_at(ls, params.text_document.uri, params.position)
        if found is None:
            return types.InlineCompletionList(items=[])
        _, suggestion = found
        item = types.InlineCompletionItem(
            insert_text=suggestion.text,
            range=types.Range(start=params.position, end=params.position),
        )
        return types.InlineCompletionList(items=[item])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls, params: types.CompletionParams) -> types.CompletionList:
        found = await _suggest_at(ls, params.text_document.uri, params.position)
        # Incomplete: the client must ask again as the user types, not filter a stale list.
        if found is None:
            return types.CompletionList(is_incomplete=True, items=[])
        document, suggestion = found
        line = document.lines[params.position.line] if params.position.line < len(document.lines) else ""
        column = document.offset_at_position(params.position) - document.offset_at_position(
            types.Position(line=params.position.line, character=0))
        word = _WORD_TAIL.search(line[:column]).group(0)
        # Replace the word being typed, so clients filter the item by what the user typed.
        start_character = params.position.character - document.position_codec.client_num_units(word)
        new_text = word + suggestion.text
        first_line = new_text.split("\n", 1)[0].strip() or new_text.strip()
        text_format = types.InsertTextFormat.PlainText
        edit_text = new_text
        if _snippets_supported(ls):
            # Neovim 0.11 inserts only the first word of a plain-text item; as a snippet it
            # inserts all of it, re-indenting later lines by the cursor line's indentation
            # (VS Code does the same), so those lines are made relative to it.
            text_format = types.InsertTextFormat.Snippet
            edit_text = _as_snippet(new_text, indentation(line))
        label = first_line if len(first_line) <= 60 else first_line[:57] + "..."
        item = types.CompletionItem(
            label=label,
            kind=types.CompletionItemKind.Snippet,
            detail="aipc-lsp",
            documentation=types.MarkupContent(
                kind=types.MarkupKind.Markdown,
                value=f"```{document.language_id or ''}\n{new_text}\n```"),
            filter_text=word + suggestion.text.split("\n", 1)[0],
            sort_text="0",
            insert_text_format=text_format,
            text_edit=types.TextEdit(
                range=types.Range(
                    start=types.Position(line=params.position.line, character=start_character),
                    end=params.position),
                new_text=edit_text),
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls, params: types.DidOpenTextDocumentParams) -> None:
        settings = ls.settings.completion
        document = params.text_document
        if ring := _ring(ls):
            ring.opened(document.uri, document.text)
        if settings.enabled and settings.warm_on_open and not ls.shutting_down:
            ls.suggester.warm(document.uri, document.text, settings, snippets=ring,
                              language_id=document.language_id or "")

    @server.feature(WARM)
    def warm_at_cursor(ls, params: WarmParams) -> None:
        """aipc/warm (notification): the client says where the cursor rests in a document the user
        looks at (brought to the front, a jump). Malformed params are logged by the protocol: a
        notification has no answer."""
        settings = ls.settings.completion
        ring = _ring(ls)
        warm = settings.enabled and settings.warm_at_cursor and not ls.shutting_down
        if not (warm or ring):
            return
        uri, position = params.text_document.uri, params.position
        found = _open_at(ls, uri, position)
        if found is None:
            return
        document, offset = found
        if ring:
            ring.visited(uri, document.source, position.line)
        if warm:
            ls.suggester.warm(uri, document.source, settings, offset, snippets=ring,
                              language_id=document.language_id or "")

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls, params: types.DidChangeTextDocumentParams) -> None:
        # A newer version makes requests for the old one worthless; the running generation
        # survives only if the user typed what it predicted (pygls applied the change already).
        uri = params.text_document.uri
        text = ls.workspace.get_text_document(uri).source if uri in ls.workspace.text_documents else None
        ls.suggester.document_changed(uri, text)
        ring = _ring(ls)
        if ring and text is not None and params.content_changes:
            # Where the (first) change begins; a whole-document change: the ring compares texts.
            first = params.content_changes[0]
            ring.edited(uri, text, first.range.start.line
                        if isinstance(first, types.TextDocumentContentChangePartial) else None)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls, params: types.DidSaveTextDocumentParams) -> None:
        # Registering it makes the server ask for didSave (without the text: pygls has it).
        uri = params.text_document.uri
        ring = _ring(ls)
        if ring and uri in ls.workspace.text_documents:
            ring.saved(uri, ls.workspace.get_text_document(uri).source)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls, params: types.DidCloseTextDocumentParams) -> None:
        if ring := _ring(ls):
            ring.closed(params.text_document.uri)
        ls.chat.forget(params.text_document.uri)
        ls.suggester.document_closed(params.text_document.uri)
        scheduler = ls.runtime.current()
        if scheduler is not None:
            scheduler.cancel_document(params.text_document.uri)
