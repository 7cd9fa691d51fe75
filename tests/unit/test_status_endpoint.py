"""The status port (`serve --status-port`, `aipc-lsp status --port`): pygls' JSON-RPC framing on
both ends, aipc/status its only method, and a bounded message size."""

from __future__ import annotations

import asyncio
import json

import pytest

from aipc_lsp.features import status

STATE = {"version": "test", "ready": True, "slots": [{"slot": "file:///a b.py", "state": "ready"}]}


@pytest.fixture
async def port(monkeypatch):
    monkeypatch.setattr(status, "collect", lambda ls: STATE)
    server = await status.serve_status(None, 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _exchange(port: int, *messages: bytes, replies: int | None = None) -> list[dict]:
    """Send raw bytes; read `replies` messages back, or (None) all until the endpoint closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for message in messages:
            writer.write(message)
        await writer.drain()
        data = b""
        while replies is None or len(_bodies(data)) < replies:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            if not chunk:
                break
            data += chunk
        return _bodies(data)
    finally:
        writer.close()


def _framed(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _bodies(data: bytes) -> list[dict]:
    """The whole messages in `data`."""
    out = []
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        if len(rest) < length:
            break
        out.append(json.loads(rest[:length]))
        data = rest[length:]
    return out


async def test_query_status_reads_the_state_as_plain_json(port):
    assert await status.query_status(port) == STATE
    assert await status.query_status(port) == STATE  # one connection per query, served in turn


async def test_other_methods_get_method_not_found_and_params_may_be_left_out(port):
    replies = await _exchange(port, _framed({"jsonrpc": "2.0", "id": 1, "method": "aipc/other"}),
                              _framed({"jsonrpc": "2.0", "id": 2, "method": "aipc/status"}), replies=2)
    assert [r["id"] for r in replies] == [1, 2]
    assert replies[0]["error"]["code"] == -32601
    assert replies[1]["result"] == STATE


async def test_a_message_longer_than_the_limit_ends_the_connection(port):
    assert await _exchange(port, b"Content-Length: %d\r\n\r\n" % (status.MAX_MESSAGE_BYTES + 1)) == []
    assert await status.query_status(port) == STATE  # the endpoint serves on


async def test_no_endpoint_is_a_connection_error():
    with pytest.raises(OSError):
        await status.query_status(1, timeout=2)
