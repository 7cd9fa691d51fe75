"""A stand-in for `aipc-lsp serve` in the eval runner's tests: an LSP server over stdio whose
inline completion is an oracle (it answers what the task's hole held, read from the original file)
or says nothing (`silent`). It records which documents were open at each request and the settings pushed (`stub/log`)."""

from __future__ import annotations

import sys

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from aipc_lsp.eval.runner import PROJECT
from aipc_lsp.eval.tasks import corpus_text, stdlib_dir

server = LanguageServer("eval-stub", "1")
MODE = sys.argv[1] if len(sys.argv) > 1 else "oracle"
LOG: list[dict] = []


def original(uri: str) -> str:
    path = uri[len(PROJECT) + 1:]
    if path.startswith("corpus/"):
        return corpus_text(path[len("corpus/"):-len(".py")])
    return (stdlib_dir() / path[len("stdlib/"):]).read_text(encoding="utf-8")


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
def inline(ls: LanguageServer, params: types.InlineCompletionParams):
    document = ls.workspace.get_text_document(params.text_document.uri)
    LOG.append({"uri": document.uri, "open": sorted(ls.workspace.text_documents)})
    if MODE == "silent":
        return types.InlineCompletionList(items=[])
    full, text = original(document.uri), document.source
    offset = document.offset_at_position(params.position)
    insert = full[offset: offset + len(full) - len(text)]
    return types.InlineCompletionList(items=[types.InlineCompletionItem(
        insert_text=insert, range=types.Range(start=params.position, end=params.position))])


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def configuration(ls: LanguageServer, params: types.DidChangeConfigurationParams):
    LOG.append({"settings": params.settings})


@server.feature("aipc/status")
def status(ls: LanguageServer, params):
    return {"ready": True, "error": None, "model": f"stub-{MODE}"}


@server.feature("stub/log")
def log(ls: LanguageServer, params):
    return LOG


if __name__ == "__main__":
    server.start_io()
