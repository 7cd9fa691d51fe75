"""The open documents, kept as the LSP specification defines them (pygls's Workspace, corrected).

Differential fuzzing of document sync against the reference client library's rules
(vscode-languageserver-textdocument; tests/e2e/test_fuzz_sync.py) found three ways in which
pygls 2.1.1 lets the server's copy of a document drift from the editor's:

- lines are split with `str.splitlines`, which also breaks at \\v, \\f, \\x1c-\\x1e, \\x85, U+2028
  and U+2029; LSP's only line ends are \\n, \\r\\n and \\r, so every position after a form feed
  (common in C and Emacs Lisp sources) or a U+2028 in a string pointed at the wrong line;
- a character past the end of a line is moved to one before the line's length, which on the last
  line (no line break) lands before its last character: an insert at (0, 99) in "abc" gave "abXc";
- documents are stored under the percent-decoded URI but looked up by the URI as the client sent
  it, so a file whose path has a space or a non-ASCII letter (file:///a%20b.py) was never found
  open and got no completions.

Here, as in the reference library: a line past the last one means the end of the document; a
character past the end of its line, the end of that line's text (before its line break); a
position inside a character's code units (half of a surrogate pair) moves to the end of that
character. Documents are keyed by their URI exactly as the client sends it.
"""

from __future__ import annotations

import logging
import re
from typing import Optional, Sequence

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace
from pygls.workspace.position_codec import PositionCodec, ServerTextPosition

log = logging.getLogger(__name__)
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")
_LINE_BREAK = "\r\n"


def split_lines(text: str) -> tuple[str, ...]:
    """`text` cut after each \\n, \\r\\n or \\r (kept); no empty last line (as pygls has them)."""
    lines = _LINE.findall(text)
    if lines and not lines[-1]:
        lines.pop()
    return tuple(lines)


class LspPositionCodec(PositionCodec):
    def position_from_client_units(self, lines: Sequence[str], position: types.Position) -> ServerTextPosition:
        if position.line >= len(lines):
            return ServerTextPosition(len(lines), 0)  # the end of the document
        text = lines[position.line].rstrip(_LINE_BREAK)
        units = index = 0
        for char in text:
            if units >= position.character:
                break
            units += self.impl.code_units_for_char(char)
            index += 1
        return ServerTextPosition(position.line, index)


class LspTextDocument(TextDocument):
    @property
    def lines(self) -> Sequence[str]:
        return split_lines(self.source)


class LspWorkspace(Workspace):
    """pygls's Workspace with LspTextDocument, keyed by the URI as sent."""

    @classmethod
    def replacing(cls, workspace: Workspace) -> "LspWorkspace":
        """The same workspace (root, sync kind, folders, negotiated position encoding) with no
        documents open yet: made right after pygls makes its own at initialize."""
        return cls(workspace.root_uri, workspace._sync_kind, list(workspace.folders.values()),
                   workspace.position_encoding)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._position_codec = LspPositionCodec(encoding=self.position_encoding)

    def _create_text_document(self, doc_uri: str, source: Optional[str] = None, version: Optional[int] = None,
                              language_id: Optional[str] = None) -> TextDocument:
        return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                               sync_kind=self._sync_kind, position_codec=self._position_codec)

    def get_text_document(self, doc_uri: str) -> TextDocument:
        return self._text_documents.get(doc_uri) or self._create_text_document(doc_uri)

    def put_text_document(self, text_document: types.TextDocumentItem, notebook_uri: Optional[str] = None):
        self._text_documents[text_document.uri] = self._create_text_document(
            text_document.uri, source=text_document.text, version=text_document.version,
            language_id=text_document.language_id)
        if notebook_uri:
            self._cell_in_notebook[text_document.uri] = notebook_uri

    def remove_text_document(self, doc_uri: str):
        self._text_documents.pop(doc_uri, None)
        self._cell_in_notebook.pop(doc_uri, None)

    def update_text_document(self, text_doc: types.VersionedTextDocumentIdentifier,
                             change: types.TextDocumentContentChangeEvent):
        document = self._text_documents.get(text_doc.uri)
        if document is None:  # a client bug; pygls raised KeyError here and told the user of a server error
            log.warning("didChange for %s, which is not open: ignored", text_doc.uri)
            return
        document.apply_change(change)
        document.version = text_doc.version
