"""`aipc/status`: what the server is doing, for status bars, health checks and tests.

Also served on an optional loopback port (`aipc-lsp serve --status-port N`) so that
`aipc-lsp status --port N` can ask a running server without joining its LSP session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading

from pygls.client import JsonRPCClient
from pygls.exceptions import JsonRpcException
from pygls.io_ import run_async
from pygls.protocol import JsonRPCProtocol, JsonRPCRequestMessage, default_converter
from pygls.server import JsonRPCServer

from aipc_lsp import __version__
from aipc_lsp.lsp_client import converter
from aipc_lsp.messages import STATUS, StatusParams

log = logging.getLogger(__name__)
# A status query is a few dozen bytes: a longer message ends the connection (pygls would read
# whatever length a header claims).
MAX_MESSAGE_BYTES = 1 << 20


@functools.cache
def _serving_converter():
    """pygls' converter (built once: ~30 ms), but a request may leave out its params, as JSON-RPC allows."""
    serving = default_converter()
    serving.register_structure_hook(JsonRPCRequestMessage, lambda obj, cls: cls(
        id=obj["id"], method=obj["method"], jsonrpc=obj["jsonrpc"], params=obj.get("params")))
    return serving


def collect(ls) -> dict:
    scheduler = ls.runtime.current()
    return {
        "version": __version__,
        "model": ls.settings.model,
        "engine": ls.settings.engine,
        "device": ls.settings.device,
        "ready": scheduler is not None,
        "error": ls.runtime.error,
        # Times the settings took effect (initialized, then each workspace/didChangeConfiguration).
        "settingsApplied": ls.settings_applied,
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
    def status(ls, params: StatusParams | None) -> dict:
        return collect(ls)


class _Bounded:
    """An asyncio StreamReader as pygls' reader, refusing a body longer than MAX_MESSAGE_BYTES."""

    def __init__(self, reader: asyncio.StreamReader):
        self._reader = reader

    def readline(self):
        return self._reader.readline()  # bounded by the StreamReader's own line limit

    async def readexactly(self, n: int) -> bytes:
        if n > MAX_MESSAGE_BYTES:
            raise ConnectionError(f"a {n} byte message (at most {MAX_MESSAGE_BYTES} on the status port)")
        return await self._reader.readexactly(n)


async def serve_status(ls, port: int, host: str = "127.0.0.1") -> asyncio.base_events.Server:
    """An endpoint (loopback unless `serve --host` names another address) that answers `aipc/status` only."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # pygls' JSON-RPC framing and dispatch, as on the LSP connection; another method gets -32601.
        endpoint = JsonRPCServer(JsonRPCProtocol, _serving_converter)
        endpoint.protocol.fm.feature(STATUS)(lambda params: collect(ls))
        endpoint.protocol.set_writer(writer)
        try:
            await run_async(threading.Event(), _Bounded(reader), endpoint.protocol, log)
        except (ValueError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("status connection closed: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(connection, host, port)
    log.info("status endpoint on %s:%d", host, port)
    return server


async def query_status(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> dict:
    """A running server's aipc/status, asked on its status port (pygls' JSON-RPC client)."""
    client = JsonRPCClient(JsonRPCProtocol, converter)  # results as plain JSON values
    await asyncio.wait_for(client.start_tcp(host, port), timeout)
    try:
        state = await asyncio.wait_for(client.protocol.send_request_async(STATUS, {}), timeout)
    except JsonRpcException as exc:
        raise ConnectionError(f"the status port answered an error: {exc}") from None
    finally:
        client.protocol.writer.close()  # the server's end sees EOF; the client's reader ends
        await client.stop()
    if not isinstance(state, dict):
        raise ConnectionError(f"unexpected reply: {state!r}")
    return state
