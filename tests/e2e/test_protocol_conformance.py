"""JSON-RPC / LSP conformance of the real server process, driven over raw stdio.

Messages are framed by hand so that broken ones can be sent. No test loads the model: the
client never sends `initialized` (model preparation starts there), and the model setting points
at a file that does not exist in case it ever does.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import subprocess
import sys
import threading
import time

import pytest

SERVER = [sys.executable, "-m", "aipc_lsp", "serve"]
INIT_PARAMS = {"processId": None, "rootUri": None, "capabilities": {},
               "initializationOptions": {"model": "/nonexistent.gguf"}}
TIMEOUT = 10
MiB = 1024 * 1024

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
SERVER_NOT_INITIALIZED = -32002

_HEADER = re.compile(rb"(Content-Length: (\d+)|Content-Type: [^\r\n]+)\r\n")


class RawServer:
    """The server process with framed JSON-RPC over its pipes, checking every byte it writes."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([*SERVER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.ids = itertools.count(1000)
        self.inbox: queue.Queue = queue.Queue()
        self.notifications: list[dict] = []
        self.framing_errors: list[str] = []
        self.stderr_lines: list[str] = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._readers:
            thread.start()

    # -- the server's output ---------------------------------------------------------------------
    def _read_stderr(self) -> None:
        for line in self.proc.stderr:  # drained so the pipe never fills
            self.stderr_lines.append(line.decode("utf-8", "replace"))

    def _read_stdout(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            line = out.readline()
            if not line:
                return  # clean end: between messages
            while line != b"\r\n":
                match = _HEADER.fullmatch(line)
                if match is None:
                    self.framing_errors.append(f"not a header line: {line[:200]!r}")
                    return
                if match.group(2):
                    length = int(match.group(2))
                line = out.readline()
            if length is None:
                self.framing_errors.append("header block without Content-Length")
                return
            body = out.read(length)
            try:
                message = json.loads(body)
                assert isinstance(message, dict) and message.get("jsonrpc") == "2.0"
                assert "method" in message or ("id" in message and ("result" in message) != ("error" in message))
            except Exception:
                self.framing_errors.append(f"not a JSON-RPC message: {body[:200]!r}")
                return
            self.inbox.put(message)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def expect_log(self, text: str, timeout: float = TIMEOUT) -> None:
        """Wait for `text` on stderr: its pipe is read apart from stdout, so it may lag a response."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert time.monotonic() < deadline, f"{text!r} not logged; stderr:\n{self.stderr}"
            time.sleep(0.02)

    # -- sending ---------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send_body(self, body: bytes) -> None:
        self.send_raw(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def send(self, message: dict) -> None:
        self.send_body(json.dumps(message).encode())

    def notify(self, method: str, params=None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    def request(self, method: str, params=None, msg_id=None):
        msg_id = next(self.ids) if msg_id is None else msg_id
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method,
                   **({"params": params} if params is not None else {})})
        return msg_id

    def response(self, msg_id, timeout: float = TIMEOUT) -> dict:
        """The response with this id; notifications seen meanwhile are kept."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = self.inbox.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise AssertionError(f"no response to {msg_id!r} within {timeout}s; stderr:\n{self.stderr}") from None
            if "method" in message:
                self.notifications.append(message)
            elif message.get("id") == msg_id:
                return message
            else:
                raise AssertionError(f"unexpected response {message} while waiting for {msg_id!r}")

    def call(self, method: str, params=None, msg_id=None) -> dict:
        return self.response(self.request(method, params, msg_id))

    def error(self, response: dict, code: int) -> dict:
        assert "error" in response, response
        assert response["error"]["code"] == code, response
        return response["error"]

    def assert_alive(self) -> None:
        """The server still answers a valid request."""
        reply = self.call("aipc/status", {})
        assert "result" in reply and reply["result"]["version"], reply

    def log_of(self, action) -> str:
        """What the server logged while handling the messages `action` sends: a marker
        notification after them is logged last, as messages are handled in order."""
        start = len(self.stderr_lines)
        action()
        marker = f"aipc/marker-{next(self.ids)}"
        self.notify(marker, {})
        self.expect_log(marker)
        return "".join(self.stderr_lines[start:])

    def end(self) -> int:
        """The shutdown/exit handshake; the exit status."""
        assert "result" in self.call("shutdown")
        self.notify("exit")
        return self.wait()

    def initialize(self) -> None:
        reply = self.call("initialize", INIT_PARAMS)
        assert "capabilities" in reply["result"], reply

    # -- ending ----------------------------------------------------------------------------------
    def wait(self, timeout: float = TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        for thread in self._readers:
            thread.join(timeout)
        return code

    def check_output(self) -> None:
        assert not self.framing_errors, f"{self.framing_errors}\nstderr:\n{self.stderr}"
        assert self.inbox.empty() or all("method" in m for m in list(self.inbox.queue))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def raw():
    """A server that has not been initialized."""
    server = RawServer()
    yield server
    server.kill()
    server.check_output()


@pytest.fixture
def server(raw):
    """An initialized server (without `initialized`, so no model is prepared); it must end
    through the shutdown/exit handshake with status 0 unless the test ended it already."""
    raw.initialize()
    yield raw
    if raw.proc.poll() is None:
        assert raw.end() == 0, raw.stderr
    raw.check_output()


@pytest.fixture(scope="module")
def shared():
    """One initialized server for the tests that feed it bad input and check it keeps serving:
    it must survive all of them and still end with the shutdown/exit handshake and status 0."""
    server = RawServer()
    try:
        server.initialize()
        yield server
        assert server.end() == 0, server.stderr
        server.check_output()
    finally:
        server.kill()


def test_requests_before_initialize_get_server_not_initialized(raw):
    reply = raw.response(raw.request("aipc/status", {}, msg_id=1))
    assert reply["id"] == 1 and raw.error(reply, SERVER_NOT_INITIALIZED)
    reply = raw.response(raw.request("textDocument/hover", {"textDocument": {"uri": "file:///a.py"},
                                                            "position": {"line": 0, "character": 0}},
                                      msg_id="early"))
    assert reply["id"] == "early" and raw.error(reply, SERVER_NOT_INITIALIZED)
    # Notifications before initialize are dropped, quietly: the workspace does not exist yet,
    # and handling it would answer with an error message.
    raw.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///a.py", "languageId": "python",
                                                         "version": 1, "text": "x = 1\n"}})
    raw.initialize()
    raw.assert_alive()
    assert raw.notifications == []
    raw.expect_log("Ignoring notification 'textDocument/didOpen' before initialize")
    # initialize only once.
    raw.error(raw.call("initialize", INIT_PARAMS), INVALID_REQUEST)
    raw.assert_alive()


def test_exit_before_initialize_ends_with_status_1(raw):
    raw.notify("exit")
    assert raw.wait() == 1


def test_invalid_params_get_invalid_params_with_the_request_id(shared):
    # Both required members missing: the message names them.
    reply = shared.call("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///a.py"}}, msg_id=7)
    error = shared.error(reply, INVALID_PARAMS)
    assert reply["id"] == 7
    assert "textDocument/inlineCompletion" in error["message"]
    assert "position" in error["message"] and "context" in error["message"]
    shared.assert_alive()
    # Wrong type, string id.
    reply = shared.call("textDocument/completion", {"textDocument": {"uri": "file:///a.py"},
                                                    "position": {"line": "zero", "character": 0}},
                        msg_id="s-1")
    assert reply["id"] == "s-1" and "position" in shared.error(reply, INVALID_PARAMS)["message"]
    shared.assert_alive()
    # A notification with bad params cannot be answered; it is logged and dropped.
    shared.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///a.py"}})
    shared.assert_alive()
    shared.expect_log("Ignoring notification 'textDocument/didOpen' with invalid params")


def test_custom_messages_are_checked_by_their_types(shared):
    # Every problem named by the field the client wrote (camelCase), with what it must be.
    reply = shared.call("aipc/inlineChat", {
        "textDocument": {}, "range": {"start": {"line": 0, "character": 0}}, "instruction": " ", "mode": "rewrite",
        "history": [{"role": "robot", "content": "x"}], "partialResultToken": True}, msg_id=50)
    message = shared.error(reply, INVALID_PARAMS)["message"]
    assert message.startswith("Invalid params for 'aipc/inlineChat': "), message
    for problem in ("textDocument.uri: required field missing", "range.end: required field missing",
                    "instruction: must be a non-empty string", "mode: must be one of 'edit', 'ask'",
                    "history[0].role: must be one of 'system', 'user', 'assistant'",
                    "partialResultToken: must be an integer or a string"):
        assert problem in message, message
    for method in ("aipc/inlineChat", "aipc/status"):
        assert "params: must be an object" in shared.error(shared.call(method, [1, 2]), INVALID_PARAMS)["message"]
    # Well-formed, but not servable: the handler answers -32602 in the same words.
    selection = {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 1}}
    reply = shared.call("aipc/inlineChat", {"textDocument": {"uri": "file:///never-opened.py"}, "range": selection,
                                            "instruction": "Explain"})
    assert shared.error(reply, INVALID_PARAMS)["message"] == (
        "Invalid params for 'aipc/inlineChat': file:///never-opened.py is not open (send textDocument/didOpen first)")
    # aipc/status takes an empty object, nothing, or [] (Neovim's encoding of an empty Lua table).
    assert shared.call("aipc/status")["result"]["version"]
    assert shared.call("aipc/status", [])["result"]["version"]
    # A notification cannot be answered: logged, with what was wrong.
    logged = shared.log_of(lambda: shared.notify("aipc/warm", {"position": {"line": "x"}}))
    assert ("Ignoring notification 'aipc/warm' with invalid params: textDocument: required field missing; "
            "position.line: invalid value for type, expected int; position.character: required field missing") in logged
    shared.assert_alive()


def test_unknown_method_gets_method_not_found(shared):
    reply = shared.call("aipc/noSuchMethod", {}, msg_id=11)
    assert reply["id"] == 11 and "aipc/noSuchMethod" in shared.error(reply, METHOD_NOT_FOUND)["message"]
    shared.assert_alive()
    # Unknown notifications are ignored, not answered.
    shared.notify("aipc/noSuchNotification", {})
    shared.assert_alive()
    assert shared.notifications == []


def test_requests_after_shutdown_get_invalid_request(server):
    assert server.call("shutdown", msg_id=20) == {"jsonrpc": "2.0", "id": 20, "result": None}
    for msg_id in (21, "after"):
        reply = server.call("aipc/status", {}, msg_id=msg_id)
        assert reply["id"] == msg_id
        assert server.error(reply, INVALID_REQUEST)["message"] == "server is shutting down"
    server.error(server.call("shutdown", msg_id=22), INVALID_REQUEST)
    server.notify("exit")
    assert server.wait() == 0


def test_exit_without_shutdown_ends_with_status_1(server):
    server.notify("exit")
    assert server.wait() == 1, server.stderr


def test_malformed_json_gets_parse_error_with_null_id(shared):
    for body in (b'{"jsonrpc": "2.0", "id": 30, "method": "aipc/status", "params": {', b"{bad}",
                 b"\xff\xfe not utf-8", b""):
        shared.send_body(body)
        reply = shared.response(None)
        assert shared.error(reply, PARSE_ERROR)["message"].startswith("Parse error")
        assert reply["id"] is None
        shared.assert_alive()
    # Valid JSON that is not a JSON-RPC message: Invalid Request.
    for body, msg_id in ((b"[1, 2]", None), (b'{"id": 31, "method": "aipc/status"}', 31)):
        shared.send_body(body)
        reply = shared.response(msg_id)
        shared.error(reply, INVALID_REQUEST)
        shared.assert_alive()
    assert shared.notifications == []  # pygls used to send window/showMessage instead


def test_oversized_content_length_is_skipped_not_buffered(shared):
    def oversized():
        # An honest but oversized message: discarded in bounded pieces, the stream stays in sync.
        shared.send_raw(b"Content-Length: %d\r\n\r\n" % (64 * MiB + 1))
        for _ in range(64):
            shared.send_raw(b" " * MiB)
        shared.send_raw(b" ")
        shared.assert_alive()
        # A length no message could have is not a length at all: the block is ignored and the
        # stream resynchronizes on the next header.
        shared.send_raw(b"Content-Length: 99999999999999999999999\r\n\r\n{}")
        shared.assert_alive()

    log = shared.log_of(oversized)
    assert "exceeds the 67108864 byte limit" in log and "Invalid Content-Length" in log
    assert "Traceback" not in log
    assert shared.notifications == []


def test_garbage_headers_do_not_crash_the_server(shared):
    def garbage():
        for junk in (b"garbage\r\n\r\n",
                     b"Content-Length: -5\r\nX-Whatever: 1\r\n\r\n",
                     b"Content-Length: twelve\r\n\r\n",
                     b"\r\n\r\n\n",  # stray blank lines between messages
                     b"x" * (200 * 1024) + b"\r\n",  # a header line far over the limit
                     # A body without its header: the next message's header, glued to its
                     # tail, still frames that message.
                     b'{"jsonrpc": "2.0"}'):
            shared.send_raw(junk)
            shared.assert_alive()
        # Lower-case header names are accepted (HTTP-style names are case-insensitive).
        body = json.dumps({"jsonrpc": "2.0", "id": 40, "method": "aipc/status", "params": {}}).encode()
        shared.send_raw(b"content-length: %d\r\n\r\n" % len(body) + body)
        assert "result" in shared.response(40)

    log = shared.log_of(garbage)
    assert "Header line longer than" in log and "Invalid Content-Length" in log
    assert "Traceback" not in log
    assert shared.notifications == []


def test_reversed_did_change_range_is_normalized(shared):
    uri = "file:///reversed.py"
    shared.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": "hello world\n"}})
    shared.notify("textDocument/didChange", {
        "textDocument": {"uri": uri, "version": 2},
        "contentChanges": [{"range": {"start": {"line": 0, "character": 5}, "end": {"line": 0, "character": 2}},
                            "text": "X"}]})
    shared.assert_alive()
    shared.expect_log("has a reversed range 0:5-0:2")
    assert shared.notifications == []


def test_reversed_did_change_range_leaves_the_document_consistent():
    """The document text itself is not visible over the wire without the model, so the same
    messages go through the server's protocol in process."""
    from aipc_lsp.server import create_server

    ls = create_server()
    written: list[bytes] = []

    class Writer:
        def write(self, data: bytes) -> None:
            written.append(data)

        def close(self) -> None:
            pass

    ls.protocol.set_writer(Writer())
    uri = "file:///reversed.py"
    for message in (
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS},
        {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": "hello world\nsecond line\n"}}},
        {"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
            "textDocument": {"uri": uri, "version": 2},
            "contentChanges": [
                {"range": {"start": {"line": 0, "character": 5}, "end": {"line": 0, "character": 2}}, "text": "X"},
                {"range": {"start": {"line": 1, "character": 3}, "end": {"line": 0, "character": 4}}, "text": "Y"},
            ]}},
    ):
        ls.protocol._receive(json.dumps(message).encode())
    # As if each range had been sent start-first: "he[llo] world" -> "heX world", then
    # "heX [world\nsec]ond line" -> "heX Yond line".
    assert ls.workspace.get_text_document(uri).source == "heX Yond line\n"
    assert ls.workspace.get_text_document(uri).version == 2
    assert len(written) == 1 and b'"id": 1' in written[0]  # only the initialize result


def test_notifications_leave_nothing_in_the_table_of_requests_in_flight():
    """pygls files a future per notification handled by a generator (didOpen/didChange/didClose) under
    a fresh id and never removed it: ~2 KB per keystroke for the server's life (found by the soak)."""
    from aipc_lsp.server import create_server

    ls = create_server()

    class Writer:
        def write(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            pass

    ls.protocol.set_writer(Writer())
    uri = "file:///typed.py"
    ls.protocol._receive(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT_PARAMS}).encode())
    ls.protocol._receive(json.dumps({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": uri, "languageId": "python", "version": 1, "text": ""}}}).encode())
    for version in range(2, 50):
        ls.protocol._receive(json.dumps({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
            "textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": "x" * version}]}}).encode())
    ls.protocol._receive(json.dumps({"jsonrpc": "2.0", "method": "textDocument/didClose",
                                     "params": {"textDocument": {"uri": uri}}}).encode())
    assert ls.protocol._request_futures == {}


def test_stdout_carries_only_framed_messages_even_with_debug_logging():
    server = RawServer("-vv")  # pygls logs every message body at this level: to stderr only
    try:
        server.initialize()
        server.send_body(b"{bad}")
        server.response(None)
        server.call("textDocument/inlineCompletion", {}, msg_id=50)
        server.call("aipc/nothing", {}, msg_id=51)
        server.assert_alive()
        assert server.call("shutdown")["result"] is None
        server.call("aipc/status", {})
        server.notify("exit")
        assert server.wait() == 0
        server.expect_log("Sending data")
        server.check_output()
    finally:
        server.kill()
