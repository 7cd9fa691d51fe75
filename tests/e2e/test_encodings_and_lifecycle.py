"""Position encodings (UTF-16 as VS Code uses it, UTF-8 as Neovim negotiates) with non-ASCII
text before the cursor, and the shutdown/exit handshake."""

from __future__ import annotations

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from conftest import inline, open_document, server_config, wait_ready

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

# An emoji is 1 code point, 2 UTF-16 units and 4 UTF-8 bytes; "ü" is 1, 1 and 2.


def capabilities(encodings: list[str]) -> types.ClientCapabilities:
    caps = client_capabilities("visual_studio_code")
    caps.general = types.GeneralClientCapabilities(position_encodings=encodings)
    return caps


@pytest_lsp.fixture(
    config=server_config(), scope="module", params=["utf-16", "utf-8"], ids=["utf16", "utf8"],
)
async def client(lsp_client: LanguageClient, request):
    result = await lsp_client.initialize_session(types.InitializeParams(capabilities=capabilities([request.param])))
    assert result.capabilities.position_encoding == request.param
    assert result.capabilities.inline_completion_provider is not None
    assert result.capabilities.completion_provider is not None
    lsp_client.encoding = request.param
    await wait_ready(lsp_client)
    yield
    await lsp_client.shutdown_session()
    # `exit` after `shutdown` ends the process with status 0.
    assert lsp_client._server.returncode == 0


def units(text: str, encoding: str) -> int:
    return len(text.encode("utf-8")) if encoding == "utf-8" else len(text.encode("utf-16-le")) // 2


async def test_cursor_after_non_ascii_text(client: LanguageClient):
    uri = "file:///project/grüße.py"
    before = 'greeting = "Grüße 🎉 aus Köln"; length = len(greet'
    text = before + ")  # count the characters\n"
    open_document(client, uri, text)
    # The cursor sits between "greet" and ")": read in the wrong units it would land
    # several characters further right, inside the comment.
    position = types.Position(line=0, character=units(before, client.encoding))
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position))
    assert len(result.items) == 1, result
    edit = result.items[0].text_edit
    assert edit.range.start.character == position.character - len("greet")
    assert edit.range.end == position
    assert edit.new_text.startswith("greet") and "\n" not in edit.new_text
    assert not edit.new_text.rstrip().endswith("characters")
    items = await inline(client, uri, position)
    assert items and items[0].strip() and "\n" not in items[0]
