"""What the server promises about the user's code and machine (docs/SECURITY.md), checked on the real
process: it listens on this machine only unless told otherwise (and then warns), it needs and opens
no network connection (a session with the network taken away, its sockets watched), and its log
holds no document text below -vv."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest

from aipc_lsp.models.registry import CACHE_ENV, cache_dir
from server_process import ServerProcess

NO_MODEL = {"model": "/nonexistent/model.gguf"}
SECRET = "aipc_SECRET_7f3a9c"  # a marker no log line has any other reason to hold


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(proc: subprocess.Popen, port: int, timeout: float = 30) -> str:
    """The address the process listens on at `port`."""
    deadline = time.monotonic() + timeout
    while True:
        for conn in psutil.Process(proc.pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                return conn.laddr.ip
        assert proc.poll() is None and time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


def serve_tcp(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aipc_lsp", "serve", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> str:
    proc.kill()
    return proc.communicate()[1]


def test_tcp_listens_on_loopback_only_unless_another_address_is_named():
    port = free_port()
    proc = serve_tcp("--tcp", str(port))
    try:
        assert listening(proc, port) == "127.0.0.1"
    finally:
        assert "not only on this machine" not in stop(proc)
    port = free_port()
    proc = serve_tcp("--tcp", str(port), "--host", "0.0.0.0")
    try:
        assert listening(proc, port) == "0.0.0.0"
    finally:
        assert "listening on 0.0.0.0, not only on this machine" in stop(proc)


@pytest.mark.parametrize("host, warned", [(None, False), ("0.0.0.0", True)])
def test_the_status_port_listens_on_loopback_only_unless_another_address_is_named(host, warned):
    port = free_port()
    server = ServerProcess("--status-port", str(port), *(["--host", host] if host else []))
    try:
        server.start(NO_MODEL)  # the endpoint opens at `initialized`
        assert listening(server.proc, port) == (host or "127.0.0.1")
        assert ("not only on this machine" in server.stderr) == warned
        assert server.end() == 0
    finally:
        server.kill()


def network_blocked() -> list[str]:
    """A command prefix that runs the server with no network (a network namespace of its own: only a
    loopback that is down), or [] where this system does not allow one."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rn"]
    return []


@pytest.mark.model
def test_a_session_needs_no_network_opens_no_socket_and_logs_no_document_text():
    """Completions, inline completion, chat, warm-ups and edits with the small model, with -v (INFO and
    the worker's output), the network taken away where the system allows it."""
    prefix = network_blocked()
    server = ServerProcess("-v", prefix=prefix)
    try:
        server.start({"completion": {"max_tokens": 12}, "chat": {"max_tokens": 16}}, encoding="utf-16")
        server.wait_ready()
        assert server.inet_sockets() == []
        uri = "file:///project/secret.py"
        text = f"API_TOKEN = '{SECRET}'\n\n\ndef check(token):\n    "
        server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": text}})
        end = {"line": 4, "character": 4}
        server.notify("aipc/warm", {"textDocument": {"uri": uri}, "position": end})
        replies = [server.call("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": end,
                                                                "context": {"triggerKind": 1}}, timeout=120)]
        server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
            {"range": {"start": end, "end": end}, "text": f"return token == '{SECRET}'\n"}]})
        replies.append(server.call("textDocument/completion", {"textDocument": {"uri": uri},
                                                               "position": {"line": 5, "character": 0}}, timeout=120))
        replies.append(server.call("aipc/inlineChat", {
            "textDocument": {"uri": uri}, "range": {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}},
            "instruction": f"why is {SECRET} here?"}, timeout=120))
        assert all("result" in reply for reply in replies), replies
        assert server.inet_sockets() == []
        assert server.end() == 0
        server.wait()
        assert "chat" in server.stderr  # the log has its INFO lines: it is the log we mean
        assert SECRET not in server.stderr, [line for line in server.stderr_lines if SECRET in line]
    finally:
        server.kill()


@pytest.mark.model
def test_the_engine_worker_sends_no_telemetry_and_leaves_no_child_process(tmp_path):
    """`import openvino` sends a usage event to OpenVINO's telemetry service from a process it forks (and
    may never wait for), after writing a client id under the user's home (~/intel): neither may happen.
    The home is a fresh folder here; the model cache stays where the suite keeps it."""
    server = ServerProcess(env={"HOME": str(tmp_path), CACHE_ENV: str(cache_dir())})
    try:
        server.start()
        server.wait_ready()
        server_process, *workers = server.process_tree()
        assert len(workers) == 1, workers  # the engine's worker, with no child (exited or not)
        assert list(tmp_path.iterdir()) == []
        assert server.end() == 0
    finally:
        server.kill()


@pytest.mark.parametrize("verbosity", ["-v", "-vv"])
def test_the_log_holds_the_text_of_a_broken_message_only_with_vv(verbosity):
    """A client that miscounts Content-Length (characters for bytes) sends document text as headers.
    With -vv the text is logged: the check of the session above can fail."""
    server = ServerProcess(verbosity)
    try:
        server.start(NO_MODEL, initialized=False)
        logged = server.log_of(lambda: server.send_raw(f"Content-Length: 3\r\n\r\nabc{SECRET}\r\n\r\n".encode()))
        assert "Ignoring malformed header line" in logged
        assert (SECRET in logged) == (verbosity == "-vv")
        assert server.inbox.get(timeout=10)["error"]["code"] == -32700  # "abc" as a body
        server.assert_alive()
        assert server.end() == 0
    finally:
        server.kill()
