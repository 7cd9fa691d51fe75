"""The command line around the server: `serve --tcp` (`models fetch|list` with the real default model:
test_default_model.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

CLI = [sys.executable, "-m", "aipc_lsp"]


def _frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _read(sock: socket.socket) -> dict:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(4096)
    return json.loads(body[:length])


def test_serve_tcp_listens_on_loopback_and_speaks_lsp(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([*CLI, "serve", "--tcp", str(port), "--log-file", str(tmp_path / "server.log")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.1)
        with sock:
            sock.sendall(_frame({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "processId": None, "rootUri": None, "capabilities": {},
                "initializationOptions": {"model": str(tmp_path / "absent.gguf")}}}))
            reply = _read(sock)
            assert reply["id"] == 1 and reply["result"]["capabilities"]["inlineCompletionProvider"] is not None
            sock.sendall(_frame({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}))
            assert _read(sock)["id"] == 2
            sock.sendall(_frame({"jsonrpc": "2.0", "method": "exit"}))
        server.wait(timeout=30)
        assert server.stdout.read() == b""  # nothing but the socket carries protocol
    finally:
        if server.poll() is None:
            server.kill()
