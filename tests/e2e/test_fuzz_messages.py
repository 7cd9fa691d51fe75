"""Fuzzing the message stream of the real server process.

- Random byte streams (garbage, cut and corrupted frames, wrong Content-Length, JSON that is not
  JSON-RPC) between valid messages: the server never crashes, never writes a byte that is not a
  framed message, reports no error of its own handlers, and answers the next valid request. No model.
- Random well-formed message sequences (open, edits, close, completion, inline completion, chat,
  warm, status, cancel, bad params, unknown methods) sent without waiting, with the small model:
  every request is answered, with a result or the error code its case calls for, and shutdown in the
  middle of a session answers what is in flight and refuses what follows.

AIPC_FUZZ_EXAMPLES=N runs N random cases per test (docs/RELIABILITY.md has a long run's counts).
"""

from __future__ import annotations

import itertools
import json
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_document import apply, line_bounds, units
from server_process import ServerProcess

LONG_RUN = int(os.environ.get("AIPC_FUZZ_EXAMPLES", "0"))
NO_MODEL = {"model": "/nonexistent/model.gguf", "completion": {"warm_on_open": False}}
INVALID_PARAMS, METHOD_NOT_FOUND, REQUEST_CANCELLED, REQUEST_FAILED = -32602, -32601, -32800, -32803
CONTENT_MODIFIED = -32801
SETTINGS = dict(deadline=None, database=None, derandomize=not LONG_RUN,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
counts = {"byte streams": 0, "bytes": 0, "sequences": 0, "requests": 0, "cancels": 0}


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


# -- random byte streams ---------------------------------------------------------------------------------
URI = "file:///fuzz/bytes.py"
POSITION = {"line": 0, "character": 3}
VALID = [frame(m) for m in [
    {"jsonrpc": "2.0", "method": "textDocument/didOpen",
     "params": {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": "def f(x):\n    "}}},
    {"jsonrpc": "2.0", "method": "textDocument/didChange",
     "params": {"textDocument": {"uri": URI, "version": 2},
                "contentChanges": [{"range": {"start": POSITION, "end": POSITION}, "text": "é😋"}]}},
    {"jsonrpc": "2.0", "id": 1, "method": "textDocument/inlineCompletion",
     "params": {"textDocument": {"uri": URI}, "position": POSITION, "context": {"triggerKind": 1}}},
    {"jsonrpc": "2.0", "id": "two", "method": "textDocument/completion",
     "params": {"textDocument": {"uri": URI}, "position": POSITION}},
    {"jsonrpc": "2.0", "method": "aipc/warm", "params": {"textDocument": {"uri": URI}, "position": POSITION}},
    {"jsonrpc": "2.0", "id": 3, "method": "aipc/inlineChat",
     "params": {"textDocument": {"uri": URI}, "range": {"start": POSITION, "end": POSITION}, "instruction": "why?"}},
    {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 1}},
    {"jsonrpc": "2.0", "id": 4, "method": "aipc/status", "params": {}},
    {"jsonrpc": "2.0", "id": 5, "method": "initialize", "params": {"capabilities": {}}},
    {"jsonrpc": "2.0", "method": "textDocument/didClose", "params": {"textDocument": {"uri": URI}}},
]]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


@st.composite
def corrupted(draw) -> bytes:
    """A valid frame cut short, with bytes changed, or under a wrong Content-Length."""
    data = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["cut", "flip", "length"]))
    if how == "cut":
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    body_at = data.index(b"\r\n\r\n") + 4
    if how == "flip":  # in the body: a changed header could ask for any length (the resync below has a size)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(body_at, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    body = data[body_at:]
    return b"Content-Length: %d\r\n\r\n" % draw(st.integers(0, len(body) + 64)) + bytes(body)


CHUNK = st.one_of(
    st.binary(max_size=256),
    st.sampled_from(VALID),
    corrupted(),
    JSON.map(lambda value: frame(value) if isinstance(value, dict) else b"Content-Length: %d\r\n\r\n%s" % (
        len(json.dumps(value).encode()), json.dumps(value).encode())),
    st.builds(lambda n, junk: b"Content-Length: %d\r\n%s\r\n\r\n" % (n, junk), st.integers(0, 512), st.binary(max_size=32)),
)
# Longer than anything a chunk can leave pending (a body of at most ~600 bytes), so the stream is
# back at a message boundary after it: a pending body swallows part of it (a parse error), the rest
# reads as blank header lines.
RESYNC = b"\r\n" + b" " * 2048 + b"\r\n\r\n"


@pytest.fixture(scope="module")
def bare():
    server = ServerProcess()
    try:
        server.start(NO_MODEL)
        yield server
        print(f"byte stream fuzz: {counts['byte streams']} streams, {counts['bytes']} bytes")
        assert server.unexpected_tracebacks() == []
        server.end_cleanly()
    finally:
        server.kill()


_sentinels = itertools.count()


@settings(max_examples=LONG_RUN or 60, **SETTINGS)
@given(chunks=st.lists(CHUNK, min_size=1, max_size=8))
def test_random_byte_streams_neither_crash_nor_hang_the_server(bare, chunks):
    stream = b"".join(chunks)
    bare.send_raw(stream + RESYNC)
    sentinel = f"sentinel-{next(_sentinels)}"
    bare.request("aipc/status", {}, msg_id=sentinel)
    deadline = time.monotonic() + 10
    while True:  # the responses to whatever valid requests the stream held come first
        message = bare.inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        if "method" in message:
            bare.notifications.append(message)
        elif message.get("id") == sentinel:
            assert "result" in message, message
            break
    assert bare.proc.poll() is None
    assert not bare.framing_errors, bare.framing_errors
    counts["byte streams"] += 1
    counts["bytes"] += len(stream)


# -- random well-formed message sequences, with the model --------------------------------------------
URIS = ("file:///fuzz/a.py", "file:///fuzz/b%20c.py", "file:///fuzz/never-opened.py")
TEXT = st.lists(st.sampled_from(["def ", "f(x):", "\n", "    ", "return ", "x", "\r\n", "😋", "é", "# ", "1"]),
                max_size=12).map("".join)
MODEL_OPTIONS = {"completion": {"max_tokens": 8, "max_lines": 2, "warm_on_open": True},
                 "chat": {"max_tokens": 12}}


@pytest.fixture(scope="module")
def served():
    server = ServerProcess()
    try:
        server.start(MODEL_OPTIONS, encoding="utf-16")
        server.wait_ready()
        yield server
        print(f"message sequence fuzz: {counts['sequences']} sequences, {counts['requests']} requests "
              f"({counts['cancels']} cancelled by the client), every one answered")
        assert server.errors_reported() == []
    finally:
        server.kill()


_request_ids = itertools.count(10_000)
# Every request id sent: hypothesis may end a case between a request and its answer (a draw past its
# data), so an answer may come in the next case; one to an id never sent is a fault.
_sent: set[int] = set()


class Session:
    """One random sequence: what was sent, and what each request may be answered with."""

    def __init__(self, server: ServerProcess, data):
        self.server, self.data = server, data
        self.texts: dict[str, str] = {}  # the client's open documents
        self.versions = itertools.count(2)
        self.expect: dict = {}  # id -> the error codes allowed besides a result
        self.chats: dict[int, str] = {}  # id -> the chat's document

    def draw(self, strategy):
        return self.data.draw(strategy)

    def position(self, uri: str) -> dict:
        text = self.texts.get(uri, "")
        bounds = line_bounds(text)
        line = self.draw(st.integers(0, len(bounds)))
        if line == len(bounds):
            return {"line": line, "character": self.draw(st.integers(0, 2))}
        start, end = bounds[line]
        return {"line": line, "character": units(text[start:self.draw(st.integers(start, end))], "utf-16")
                + self.draw(st.sampled_from([0, 0, 0, 5]))}

    def request(self, method: str, params, allowed: set[int]) -> int:
        msg_id = next(_request_ids)
        _sent.add(msg_id)
        self.server.request(method, params, msg_id=msg_id)
        self.expect[msg_id] = set(allowed)
        counts["requests"] += 1
        return msg_id

    def step(self) -> None:
        uri = self.draw(st.sampled_from(URIS))
        doc = {"uri": uri}
        op = self.draw(st.sampled_from(["open", "change", "change", "close", "inline", "inline", "completion",
                                        "chat", "warm", "cancel", "status", "bad params", "unknown"]))
        if op in ("open", "change", "close"):
            # A chat's handler may run after this event: its document changed after it was sent.
            for msg_id in (i for i, chat_uri in self.chats.items() if chat_uri == uri):
                self.expect[msg_id].add(CONTENT_MODIFIED)
        if op == "open":
            self.texts[uri] = text = self.draw(TEXT)
            self.server.notify("textDocument/didOpen", {"textDocument": {**doc, "languageId": "python", "version": 1,
                                                                          "text": text}})
        elif op == "change" and uri in self.texts:
            start, end = self.position(uri), self.position(uri)
            change = {"range": {"start": start, "end": end}, "text": self.draw(TEXT)}
            self.texts[uri] = apply(self.texts[uri], change, "utf-16")
            self.server.notify("textDocument/didChange", {"textDocument": {**doc, "version": next(self.versions)},
                                                          "contentChanges": [change]})
        elif op == "close":
            self.texts.pop(uri, None)
            self.server.notify("textDocument/didClose", {"textDocument": doc})
        elif op in ("inline", "completion"):
            method = "textDocument/inlineCompletion" if op == "inline" else "textDocument/completion"
            params = {"textDocument": doc, "position": self.position(uri)}
            if op == "inline":
                params["context"] = {"triggerKind": self.draw(st.sampled_from([1, 2]))}
            self.request(method, params, set())
        elif op == "chat":
            # Ranges past the end, reversed, or in a document that is not open are invalid params;
            # a newer chat on the document or its closing cancels it.
            msg_id = self.request("aipc/inlineChat", {"textDocument": doc, "range": {"start": self.position(uri),
                                                                                      "end": self.position(uri)},
                                                       "instruction": self.draw(st.sampled_from(["why?",
                                                                                                 "add a docstring"]))},
                                  {INVALID_PARAMS, REQUEST_CANCELLED, REQUEST_FAILED})
            self.chats[msg_id] = uri
        elif op == "warm":
            self.server.notify("aipc/warm", {"textDocument": doc, "position": self.position(uri)})
        elif op == "cancel" and self.expect:
            victim = self.draw(st.sampled_from(sorted(self.expect)))
            self.expect[victim].add(REQUEST_CANCELLED)
            self.server.notify("$/cancelRequest", {"id": victim})
            counts["cancels"] += 1
        elif op == "status":
            self.request("aipc/status", {}, set())
        elif op == "bad params":
            self.request(self.draw(st.sampled_from(["textDocument/inlineCompletion", "aipc/inlineChat"])),
                         {"textDocument": doc, "position": {"line": "x"}}, {INVALID_PARAMS})
        elif op == "unknown":
            self.request("aipc/noSuchMethod", {}, {METHOD_NOT_FOUND})

    def check_answers(self, timeout: float = 120) -> None:
        waiting = set(self.expect)
        deadline = time.monotonic() + timeout
        while waiting:
            reply = self.server.inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
            if "method" in reply:
                self.server.notifications.append(reply)
                continue
            assert reply.get("id") in _sent, f"an answer to a request never sent: {reply}"
            if reply["id"] not in waiting:
                continue  # a late answer to a case hypothesis ended early
            waiting.discard(reply["id"])
            if "error" in reply:
                assert reply["error"]["code"] in self.expect[reply["id"]], (reply, self.expect[reply["id"]])
            else:
                assert "result" in reply, reply

    def close_all(self) -> None:
        for uri in list(self.texts):
            self.server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


@pytest.mark.model
@settings(max_examples=LONG_RUN or 8, **SETTINGS)
@given(data=st.data())
def test_random_message_sequences_get_every_request_answered(served, data):
    session = Session(served, data)
    for _ in range(data.draw(st.integers(1, 12))):
        session.step()
    session.check_answers()
    session.close_all()
    assert served.proc.poll() is None
    counts["sequences"] += 1


@pytest.mark.model
def test_shutdown_mid_session_answers_what_is_in_flight_and_refuses_what_follows(served):
    uri = "file:///fuzz/last.py"
    text = "def fib(n):\n    "
    served.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": text}})
    position = {"line": 1, "character": 4}
    in_flight = [served.request("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": position,
                                                                  "context": {"triggerKind": 1}}),
                 served.request("aipc/inlineChat", {"textDocument": {"uri": uri}, "range": {"start": position,
                                                                                           "end": position},
                                                    "instruction": "explain?"})]
    shutdown = served.request("shutdown")
    after = served.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": position})
    replies = {}
    while len(replies) < 4:  # late answers to earlier cases may come first
        reply = served.inbox.get(timeout=60)
        if reply.get("id") in (*in_flight, shutdown, after):
            replies[reply["id"]] = reply
        else:
            assert "method" in reply or reply.get("id") in _sent, reply
    for msg_id in in_flight:  # answered: a result, or cancelled (chat: failed) by the shutdown
        reply = replies[msg_id]
        assert "result" in reply or reply["error"]["code"] in (REQUEST_CANCELLED, REQUEST_FAILED), reply
    assert replies[shutdown]["result"] is None
    assert replies[after]["error"]["code"] == -32600  # InvalidRequest: shutting down
    served.notify("exit")
    assert served.wait() == 0, served.stderr[-4000:]
    served.check_output()
