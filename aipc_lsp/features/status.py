"""`aipc/status`: what the server is doing, for status bars, health checks and tests.

Also served on an optional loopback port (`aipc-lsp serve --status-port N`) so that
`aipc-lsp status --port N` can ask a running server without joining its LSP session.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aipc_lsp import __version__

log = logging.getLogger(__name__)
STATUS = "aipc/status"


def collect(ls) -> dict:
    scheduler = ls.runtime.current()
    return {
        "version": __version__,
        "model": ls.settings.model,
        "engine": ls.settings.engine,
        "device": ls.settings.device,
        "ready": scheduler is not None,
        "error": ls.runtime.error,
        "slots": [slot.status() for slot in scheduler.slots] if scheduler else [],
        "liveJobs": [
            {"uri": job.key[0], "kind": job.kind, "version": job.version, "slot": job.slot_name}
            for job in (scheduler.live_jobs() if scheduler else [])
        ],
        "maxGenerationsPerKey": scheduler.max_generations_per_key if scheduler else 0,
        # Timings of the latest answers (request received -> first token / answer, and
        # whether it was generated or reused); `aipc-lsp bench` reads them.
        "suggestions": list(ls.suggester.recent),
        # Documents whose first window was computed ahead of a request (completion.warm_on_open).
        "warmups": list(ls.suggester.warmups),
        # The completion prompt's format: a FIM template's name, or "prefix" (the code before the
        # cursor only); null until the first completion asked the model's tokenizer.
        "completionPrompt": ls.suggester.prompt_format(ls.settings.completion),
        # The other files' snippets a completion prompt may take from (completion.other_files).
        "otherFiles": ls.snippets.summary(),
    }


def register(server) -> None:
    @server.feature(STATUS)
    def status(ls, params) -> dict:
        return collect(ls)


async def read_message(reader: asyncio.StreamReader) -> dict | None:
    """One Content-Length framed JSON-RPC message, or None at end of stream."""
    length = None
    while True:
        line = await reader.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("ascii", "replace").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None or length > 1 << 20:
        return None
    return json.loads(await reader.readexactly(length))


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


async def serve_status(ls, port: int) -> asyncio.base_events.Server:
    """A loopback endpoint that answers `aipc/status` and nothing else."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (message := await read_message(reader)) is not None:
                if "id" not in message:
                    continue
                if message.get("method") == STATUS:
                    reply = {"jsonrpc": "2.0", "id": message["id"], "result": collect(ls)}
                else:
                    reply = {"jsonrpc": "2.0", "id": message["id"],
                             "error": {"code": -32601, "message": f"only {STATUS} is served on this port"}}
                writer.write(frame(reply))
                await writer.drain()
        except (ValueError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("status connection closed: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    log.info("status endpoint on 127.0.0.1:%d", port)
    return server


async def query_status(port: int, timeout: float = 5.0) -> dict:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(frame({"jsonrpc": "2.0", "id": 1, "method": STATUS, "params": {}}))
        await writer.drain()
        reply = await asyncio.wait_for(read_message(reader), timeout)
    finally:
        writer.close()
    if reply is None or "result" not in reply:
        raise ConnectionError(f"unexpected reply: {reply}")
    return reply["result"]
