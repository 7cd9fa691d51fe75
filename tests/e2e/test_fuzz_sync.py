"""Differential fuzzing of document sync: random didOpen / didChange / didClose sequences sent to the
real server process, in each position encoding; after every message the server's copy of the
document (aipc/debugDocument) must equal the client's, computed here by the rules of the reference
client library (vscode-languageserver-textdocument).

The edits mix inserts, deletes and replacements, whole-document changes, reversed ranges, lines and
characters past the end, CRLF and lone CR line breaks, characters that are line breaks to
str.splitlines but not to LSP (form feed, U+2028, NEL), astral characters (surrogate pairs in UTF-16,
and escaped as such in JSON half of the time) and URIs with percent-escapes.

No model is loaded (the model setting names a file that does not exist): this runs in seconds.
AIPC_FUZZ_EXAMPLES=N runs N random sequences per encoding (docs/RELIABILITY.md has a long run's counts).
"""

from __future__ import annotations

import itertools
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_document import apply, line_bounds, units
from server_process import DEBUG_ENV, ENCODINGS, ServerProcess

LONG_RUN = int(os.environ.get("AIPC_FUZZ_EXAMPLES", "0"))
OPTIONS = {"model": "/nonexistent/model.gguf",
           "completion": {"warm_on_open": False, "warm_at_cursor": False}}
MAX_UINTEGER = 2**31 - 1

# Pieces chosen for what breaks position arithmetic; plus any character but a lone surrogate.
PIECES = ["a", "def f(x):", " ", "\t", "\n", "\r\n", "\r", "é", "中", "😋", "𝄞", "\u2028", "\u2029", "\x0c",
          "\x85", "\x0b", "\x1c", "\x00"]
TEXT = st.lists(st.sampled_from(PIECES) | st.characters(exclude_categories=("Cs",)), max_size=10).map("".join)
URIS = ["file:///fuzz/doc{}.py", "file:///fuzz/with%20space{}.py", "file:///fuzz/caf%C3%A9{}.py",
        "untitled:Untitled-{}"]

counts = {encoding: {"sequences": 0, "messages": 0} for encoding in ENCODINGS}


# -- what to send --------------------------------------------------------------------------------------
def draw_position(data, text: str, encoding: str) -> dict:
    """A position on a code point boundary (what a correct client sends), often past the end."""
    bounds = line_bounds(text)
    line = data.draw(st.integers(0, len(bounds) + 1))
    if line >= len(bounds):
        return {"line": line, "character": data.draw(st.integers(0, 3))}
    start, end = bounds[line]
    kind = data.draw(st.sampled_from(["inside", "inside", "past", "far"]))
    if kind == "inside":
        return {"line": line, "character": units(text[start:data.draw(st.integers(start, end))], encoding)}
    past = units(text[start:end], encoding) + data.draw(st.integers(1, 4))
    return {"line": line, "character": past if kind == "past" else MAX_UINTEGER}


def draw_change(data, text: str, encoding: str) -> dict:
    kind = data.draw(st.sampled_from(["insert", "delete", "replace", "replace", "whole"]))
    if kind == "whole":
        return {"text": data.draw(TEXT)}
    start = draw_position(data, text, encoding)
    end = start if kind == "insert" else draw_position(data, text, encoding)
    return {"range": {"start": start, "end": end}, "text": "" if kind == "delete" else data.draw(TEXT)}


@pytest.fixture(scope="module", params=ENCODINGS)
def synced(request):
    encoding = request.param
    server = ServerProcess(env=DEBUG_ENV)
    try:
        result = server.start(OPTIONS, encoding=encoding)
        assert result["capabilities"]["positionEncoding"] == encoding
        yield server, encoding
        print(f"document sync fuzz, {encoding}: {counts[encoding]['sequences']} sequences, "
              f"{counts[encoding]['messages']} document messages, each checked against the client's copy")
        server.end_cleanly()
    finally:
        server.kill()


_uri_numbers = itertools.count()


@settings(max_examples=LONG_RUN or 40, deadline=None, database=None, derandomize=not LONG_RUN,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_servers_copy_of_each_document_stays_the_clients(synced, data):
    server, encoding = synced
    uri = data.draw(st.sampled_from(URIS)).format(next(_uri_numbers))
    ascii_json = data.draw(st.booleans())  # astral characters as escaped surrogate pairs

    def send(method: str, params: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params}, ensure_ascii=ascii_json)
        server.send_body(body.encode("utf-8"))
        counts[encoding]["messages"] += 1

    def check(expected: str | None) -> None:
        copy = server.document(uri)
        assert (copy and copy["text"]) == expected, (copy, expected)

    text = data.draw(TEXT)
    version = 1
    send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": version, "text": text}})
    check(text)
    for _ in range(data.draw(st.integers(1, 12))):
        if data.draw(st.integers(0, 9)) == 0:  # closed and opened again with other text
            send("textDocument/didClose", {"textDocument": {"uri": uri}})
            check(None)
            text = data.draw(TEXT)
            send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})
            check(text)
            continue
        changes = []
        for _ in range(data.draw(st.integers(1, 3))):  # several changes in one message apply in order
            change = draw_change(data, text, encoding)
            text = apply(text, change, encoding)
            changes.append(change)
        version += 1
        send("textDocument/didChange", {"textDocument": {"uri": uri, "version": version}, "contentChanges": changes})
        check(text)
    send("textDocument/didClose", {"textDocument": {"uri": uri}})
    check(None)
    counts[encoding]["sequences"] += 1
