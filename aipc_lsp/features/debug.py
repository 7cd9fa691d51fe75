"""`aipc/debugDocument`: the server's copy of an open document, for the tests that check document
sync against the client's (tests/e2e/test_fuzz_sync.py). Served only when the server is started with
AIPC_LSP_DEBUG_REQUESTS=1 in its environment; otherwise the method does not exist (-32601)."""

from __future__ import annotations

import os

from aipc_lsp.lsp_client import plain

DEBUG_DOCUMENT = "aipc/debugDocument"
ENABLE_ENV = "AIPC_LSP_DEBUG_REQUESTS"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV) == "1"


def register(server) -> None:
    if not enabled():
        return

    @server.feature(DEBUG_DOCUMENT)
    def debug_document(ls, params) -> dict | None:
        """params {uri}: {uri, version, text} of the open document, or null when it is not open."""
        raw = plain(params)
        uri = raw.get("uri") if isinstance(raw, dict) else None
        if not isinstance(uri, str) or uri not in ls.workspace.text_documents:
            return None
        document = ls.workspace.get_text_document(uri)
        return {"uri": uri, "version": document.version, "text": document.source}
