"""The remote engine's HTTP side: an OpenAI-compatible server (llama.cpp's, vLLM, OpenVINO Model
Server, Ollama) asked over httpx, its answers streamed as server-sent events (httpx-sse).

A stream can be ended at once from any thread (`SseStream.shutdown`): its socket is shut down, which
wakes the reading thread even while it waits for the server, and tells the server the client is
gone (llama.cpp and vLLM stop generating for it). Failures before the first piece that a second
try may cure (a refused or dropped connection, 429/502/503/504) are retried a bounded number of
times; the rest become the engine errors the scheduler acts on: `RequestError` for a request the
server refuses (the slot stays healthy), `EngineError` for a server that cannot serve.

The API key is read from the environment variable the settings name, sent as a bearer token, and
never written anywhere: not in a message, a log line or a URL shown to the user.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
from httpx_sse import EventSource, SSEError

from aipc_lsp.engines.base import EngineError, RequestError

log = logging.getLogger(__name__)

# Statuses a later try may not get: overloaded, restarting, a proxy's hiccup.
RETRY_STATUS = frozenset({408, 429, 502, 503, 504})
# Statuses that say "this request", not "this server": the slot stays healthy.
REQUEST_STATUS = frozenset({400, 413, 422})
RETRY_BACKOFF_S = 0.25
# A token count is a few milliseconds' work for a server: one that takes longer is not waited for.
QUICK_TIMEOUT_S = 1.0
# A server's error text in our messages: enough to say what is wrong.
DETAIL_CHARS = 300
# Token counting endpoints, tried in order: llama.cpp's own server and vLLM (/tokenize),
# llama-cpp-python's (/extras/tokenize/count). Relative to the server's root, not its /v1.
TOKENIZE_PATHS = ("/tokenize", "/extras/tokenize/count")
_VERSION = re.compile(r"/v\d+$")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def api_base(url: str) -> str:
    """The OpenAI base URL of `url`: as given when its path ends in a version (/v1; OpenVINO Model
    Server's /v3), else with /v1 added. EngineError when it is no http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineError(f"remote.url must be an http(s) URL such as http://team-llm:8080/v1, got {url!r}")
    path = parts.path.rstrip("/")
    if not _VERSION.search(path):
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def shown(url: str) -> str:
    """`url` without a user or password in it, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def api_key(env_name: str) -> str:
    """The key in the environment variable `env_name` ("" = none asked for). EngineError when the
    variable is named but unset: requests would only be refused one by one."""
    if not env_name:
        return ""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise EngineError(f"remote.api_key_env names the environment variable {env_name}, which is not set (or "
                          "empty) where aipc-lsp runs; set it to the server's API key, or clear remote.api_key_env")
    return key


@dataclass(frozen=True)
class Piece:
    """One event of a streamed answer: its text ("" for none) and the finish reason when it has one."""

    text: str
    finish: str | None = None


class Server:
    """One OpenAI-compatible server: its base URL, key, timeouts and retries, over one pooled client."""

    def __init__(self, url: str, *, key: str = "", connect_timeout_s: float = 2.0, timeout_s: float = 5.0,
                 retries: int = 1, transport: httpx.BaseTransport | None = None):
        self.base = api_base(url)
        parts = urlsplit(self.base)
        self.root = urlunsplit(parts._replace(path=_VERSION.sub("", parts.path)))
        self.label = shown(self.base)
        self.retries = retries
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, transport=transport, follow_redirects=False,
                                   timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        if key and urlsplit(self.base).scheme == "http" and urlsplit(self.base).hostname not in LOOPBACK:
            log.warning("remote: the API key goes to %s unencrypted (http); use https", self.label)

    # --- plain requests -------------------------------------------------------------------------

    def get(self, path: str, *, root: bool = False) -> dict:
        return self._json("GET", path, None, root)

    def post(self, path: str, body: dict, *, root: bool = False, quick: bool = False) -> dict:
        return self._json("POST", path, body, root, quick)

    def _json(self, method: str, path: str, body: dict | None, root: bool, quick: bool = False) -> dict:
        url = (self.root if root else self.base) + path
        # A quick request (a token count, on the keystroke's path) waits at most QUICK_TIMEOUT_S.
        waits = (min(self.timeout_s, QUICK_TIMEOUT_S), min(self.connect_timeout_s, QUICK_TIMEOUT_S)) if quick else None
        timeout = httpx.Timeout(waits[0], connect=waits[1]) if waits else httpx.USE_CLIENT_DEFAULT
        try:
            response = self.client.request(method, url, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise EngineError(self._transport_message(exc, path, waits)) from None
        if response.status_code >= 400:
            raise self._status_error(response.status_code, _detail(response.text), path)
        try:
            return response.json()
        except ValueError:
            raise EngineError(f"{self.label}{path} answered no JSON: {_detail(response.text)!r}") from None

    def count_tokens(self, path: str, text: str, model: str) -> int:
        """`text` in tokens by one of TOKENIZE_PATHS (special tokens parsed, none added)."""
        if path == "/extras/tokenize/count":
            return int(self.post(path, {"input": text, "model": model or None}, root=True, quick=True)["count"])
        reply = self.post(path, {"content": text, "prompt": text, "model": model or None,
                                 "add_special": False, "add_special_tokens": False}, root=True, quick=True)
        return int(reply["count"]) if "count" in reply else len(reply["tokens"])  # vLLM says count; llama.cpp lists

    # --- streams ----------------------------------------------------------------------------------

    def stream(self, path: str, body: dict) -> "SseStream":
        return SseStream(self, path, {**body, "stream": True})

    # --- errors -------------------------------------------------------------------------------------

    def _transport_message(self, exc: httpx.HTTPError, path: str, waits: tuple[float, float] | None = None) -> str:
        """`waits`: the (read, connect) timeouts of a quick request, when they were not the settings'."""
        if isinstance(exc, httpx.ConnectTimeout):
            wait = f"{waits[1]:g} s" if waits else f"{self.connect_timeout_s:g} s (remote.connect_timeout_s)"
            return f"no connection to {self.label} within {wait}"
        if isinstance(exc, httpx.TimeoutException):
            wait = f"{waits[0]:g} s" if waits else f"{self.timeout_s:g} s (remote.timeout_s)"
            return f"{self.label}{path} sent nothing for {wait}"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot reach {self.label}: {_reason(exc)}"
        return f"{self.label}{path}: the connection failed: {_reason(exc)}"

    def _status_error(self, status: int, detail: str, path: str) -> EngineError:
        where = f"{self.label}{path}"
        if status in (401, 403):
            return EngineError(f"{where} refused the request (HTTP {status}: {detail}); check the API key in the "
                               "environment variable remote.api_key_env names")
        if status == 404:
            return EngineError(f"{where}: HTTP 404 ({detail}); remote.url must be the server's OpenAI base URL "
                               "(…/v1) and remote.model a model it serves")
        if status in REQUEST_STATUS:
            return RequestError(f"{where} refused the request (HTTP {status}): {detail}")
        return EngineError(f"{where} failed (HTTP {status}): {detail}")


class _Retry(Exception):
    """A failure before the first piece that another try may cure."""

    def __init__(self, error: EngineError):
        super().__init__(str(error))
        self.error = error


class SseStream:
    """One streamed request: iterate it for `Piece`s (tries again, within the server's retries,
    while nothing came yet). `shutdown()` from any thread ends it at once; `close()` from the
    reading thread releases it. `lost` says the server ended it without a finish reason (llama-cpp-
    python ends a stream that way when another request interrupts it)."""

    def __init__(self, server: Server, path: str, body: dict):
        self.server = server
        self.path = path
        self.body = body
        self.lost = False
        self.finished = False
        self._stopped = threading.Event()
        self._socket: socket.socket | None = None
        self._events = self._pieces()

    def __iter__(self) -> Iterator[Piece]:
        return self._events

    def shutdown(self) -> None:
        """End the stream now (any thread): the socket is shut down, the reader wakes up."""
        self._stopped.set()
        sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def close(self) -> None:
        self._events.close()

    def _pieces(self) -> Iterator[Piece]:
        for attempt in range(self.server.retries + 1):
            if self._stopped.is_set():
                return
            try:
                yield from self._attempt()
                return
            except _Retry as failure:
                if attempt == self.server.retries or self._stopped.is_set():
                    raise failure.error from None
                log.info("remote: %s; trying again", failure.error)
                if self._stopped.wait(RETRY_BACKOFF_S * 2 ** attempt):
                    return

    def _attempt(self) -> Iterator[Piece]:
        server, started = self.server, False
        try:
            with server.client.stream("POST", server.base + self.path, json=self.body,
                                      headers={"Accept": "text/event-stream"}) as response:
                if response.status_code >= 400:
                    error = server._status_error(response.status_code, _detail(response.read().decode("utf-8", "replace")),
                                                 self.path)
                    raise _Retry(error) if response.status_code in RETRY_STATUS else error
                network = response.extensions.get("network_stream")
                self._socket = network.get_extra_info("socket") if network is not None else None
                if self._stopped.is_set():
                    return
                for event in EventSource(response).iter_sse():
                    if event.data == "[DONE]":
                        break
                    piece = _piece(json.loads(event.data), server.label)
                    if piece is None:
                        continue
                    started = True
                    self.finished = self.finished or piece.finish is not None
                    yield piece
                self.lost = not self.finished
        except (httpx.HTTPError, SSEError, ValueError) as exc:
            if self._stopped.is_set():
                return  # our own shutdown: the stream ended as asked
            if isinstance(exc, SSEError):
                raise EngineError(f"{server.label}{self.path} answered no event stream: {exc}") from None
            if isinstance(exc, ValueError):
                raise EngineError(f"{server.label}{self.path} sent an event that is no JSON: {exc}") from None
            error = EngineError(server._transport_message(exc, self.path))
            # Refused, or a kept-alive connection the server had closed: a new connection may work.
            retriable = isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError))
            if retriable and not started:
                raise _Retry(error) from None
            raise error from None
        finally:
            self._socket = None


def _piece(event: dict, label: str) -> Piece | None:
    """A completions or chat completions chunk's text and finish reason (None: a chunk without either)."""
    if "error" in event:
        raise EngineError(f"{label} failed mid-answer: {_detail(json.dumps(event['error']))}")
    choices = event.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    delta = choice.get("delta")
    text = (delta.get("content") if isinstance(delta, dict) else choice.get("text")) or ""
    finish = choice.get("finish_reason")
    return Piece(text, finish) if text or finish else None


def _detail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "…"


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
