"""The other files' snippets on the real server over stdio: the document events feed the ring
(aipc/status lists it), typing in a document leaves it alone, and completion.other_files = false
empties it. No model is loaded (the model setting names a file that does not exist)."""

from __future__ import annotations

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.eval.tasks import build_tasks, corpus_text
from conftest import configure, end_position, inline, open_document, server_config, status, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")
ROOT = "file:///home/me/proj"
A, B = f"{ROOT}/app/main.py", f"{ROOT}/lib/shapes.py"
SHAPES = "\n".join(f"def area_{i}(width, height):\n    return width * height * {i}\n" for i in range(60))
MAIN = "from lib.shapes import area_1\n\nprint(area_1(2, 3))\n" + "\n".join(f"x{i} = {i}" for i in range(100))


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    lsp_client.set_configuration({"aipc": {"model": "/nonexistent/model.gguf"}})
    result = await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), root_uri=ROOT,
        workspace_folders=[types.WorkspaceFolder(uri=ROOT, name="proj")],
        initialization_options={"model": "/nonexistent/model.gguf"}))
    assert result.capabilities.text_document_sync.save, "the server asks for didSave"
    yield
    await lsp_client.shutdown_session()


async def ring(client: LanguageClient) -> list[tuple[str, str]]:
    # The server handles messages in order: the notifications sent before this request are read.
    return [(c["path"], c["kind"]) for c in (await status(client))["otherFiles"]]


def type_at(client: LanguageClient, uri: str, version: int, line: int, text: str) -> None:
    at = types.Position(line=line, character=0)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=text)]))


async def test_document_events_feed_the_ring_and_typing_leaves_it_alone(client: LanguageClient):
    open_document(client, B, SHAPES)
    open_document(client, A, MAIN)  # another document: B's outline enters the ring
    assert await ring(client) == [("lib/shapes.py", "outline")]
    for version in range(2, 12):  # typing in A, its cursor resting, A saved: A's own events wait
        type_at(client, A, version, 50, "y")
        client.protocol.notify("aipc/warm", {"textDocument": {"uri": A}, "position": {"line": 50, "character": 1}})
    client.text_document_did_save(types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=A)))
    assert await ring(client) == [("lib/shapes.py", "outline")]
    # The user goes to B: A's outline and the window where it was edited enter the ring.
    client.protocol.notify("aipc/warm", {"textDocument": {"uri": B}, "position": {"line": 30, "character": 0}})
    assert await ring(client) == [("lib/shapes.py", "outline"), ("app/main.py", "outline"), ("app/main.py", "window")]
    # Closed, B's place enters too, and its chunks stay.
    client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=B)))
    assert (await ring(client))[-1] == ("lib/shapes.py", "window")
    await configure(client, {"model": "/nonexistent/model.gguf", "completion": {"other_files": False}})
    assert await ring(client) == []
    open_document(client, B, SHAPES, version=20)
    client.protocol.notify("aipc/warm", {"textDocument": {"uri": A}, "position": {"line": 3, "character": 0}})
    assert await ring(client) == []  # off: nothing fed


GEOMETRY = '''"""Geometry helpers for the floor planner."""
import math

ROOM_MARGIN_MM = 40


def polygon_floor_area_mm2(corners_mm: list[tuple[float, float]], *, subtract_margin: bool = True) -> float:
    """Floor area of a room given its corners in millimetres."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(corners_mm, corners_mm[1:] + corners_mm[:1]):
        area += x0 * y1 - x1 * y0
    return abs(area) / 2 - (ROOM_MARGIN_MM if subtract_margin else 0)
''' + "".join(f"\n\ndef helper_{i}(value):\n    return value * {i}\n" for i in range(30))
PLAN = "import geometry\n\n\ndef total_area(rooms):\n    total = 0.0\n    for room in rooms:\n        total += geometry."


@pytest_lsp.fixture(config=server_config(), scope="module")
async def model_client(lsp_client: LanguageClient):
    lsp_client.set_configuration({"aipc": {}})
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), root_uri=ROOT,
        initialization_options={"model": "default", "completion": {"max_tokens": 16}}))
    assert (await wait_ready(lsp_client, timeout=900))["ready"]
    yield
    await lsp_client.shutdown_session()


@pytest.mark.model
async def test_the_default_model_calls_what_another_open_file_defines(model_client: LanguageClient):
    # Only geometry.py's outline tells the model which function the module has (without it, the
    # default model wrote `geometry.area(room)` here).
    open_document(model_client, f"{ROOT}/geometry.py", GEOMETRY)
    open_document(model_client, f"{ROOT}/plan.py", PLAN)
    (suggestion,) = await inline(model_client, f"{ROOT}/plan.py", end_position(PLAN, "utf-8"))
    assert suggestion.startswith("polygon_floor_area_mm2("), suggestion


@pytest.mark.model
async def test_an_open_file_the_code_does_not_use_stays_out_of_the_prompt(model_client: LanguageClient):
    # A hole of the eval's (`--unrelated 1`, docs/QUALITY.md): with graphs.py open and sent, the
    # default model wrote `second[j][1]` where it writes the right `second[j][0]` alone (on an AMX
    # host, in bf16; in f32 it writes the right one either way). aipc/status says which other files
    # each answer's prompt held.
    (task,) = [t for t in build_tasks(sources=("tests",)) if t.id == "corpus/intervals.py:52:midline"]
    at = types.Position(line=task.line, character=task.column)
    limit = {"max_tokens": 16}

    doc = f"{ROOT}/{task.path}"

    async def suggestion() -> tuple[list[str], list[str]]:
        # Opened and closed each time: an open document would be served what it was answered before.
        open_document(model_client, doc, task.text)
        answer = await inline(model_client, doc, at)
        (latest,) = [s for s in (await status(model_client))["suggestions"][-1:] if s["uri"] == doc]
        model_client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=doc)))
        return answer, latest["otherFiles"]

    await configure(model_client, {"completion": {**limit, "other_files": False}})
    alone, alone_sent = await suggestion()
    await configure(model_client, {"completion": limit})
    open_document(model_client, f"{ROOT}/corpus/graphs.py", corpus_text("graphs"))
    beside, beside_sent = await suggestion()
    await configure(model_client, {"completion": {**limit, "other_files_used_only": False}})
    sent_anyway, anyway_sent = await suggestion()
    assert (alone_sent, beside_sent, anyway_sent) == ([], [], ["corpus/graphs.py"])
    assert alone and beside == alone, (alone, beside)
    assert sent_anyway, "the prompt with graphs.py got no answer"
