"""JSON-RPC / LSP conformance fixes on top of pygls' LanguageServerProtocol.

pygls 2.1.1 serves requests before `initialize`, drops (with no response) requests whose
params do not deserialize and requests after `shutdown`, answers malformed JSON with a
`window/showMessage` instead of a -32700 response, buffers any `Content-Length` it is given,
exits with status 0 after an `exit` that was not preceded by `shutdown`, and applies a
`didChange` with a reversed range by duplicating text. Each fix sits at the hook where the
problem arises:

- message structuring (`structure_message`) turns a message that does not deserialize into a
  record the dispatcher can answer, instead of an exception the reader loop swallows; the custom
  messages are structured by their own types (messages.py), so the -32602 answer and its wording
  (`invalid_params`) come from here for every method;
- dispatch (`handle_message`) enforces the initialize / shutdown lifecycle and answers what
  cannot be served with the right error code;
- `didChange` normalizes reversed ranges before the workspace applies them;
- request dispatch (`_handle_request`) remembers where in the stream of document events
  (didOpen/didChange/didClose) the request arrived, before pygls schedules its handler: an async
  handler runs as a task whose first step comes after the messages read behind it, so a
  `didChange` sent right after a request is applied before the handler sees the document.
  Handlers ask `modified_since_sent(uri)` and answer -32801 ContentModified
  (`check_unmodified`) or nothing;
- the stdio reader loop (`_start_io`) bounds header lines and bodies, answers malformed JSON,
  and lets `exit` set the process status;
- a notification's future leaves the table of requests in flight when its handler is done
  (`_execute_handler`): pygls files the future of every notification handled by a generator
  (didOpen, didChange, didClose: its built-in handlers) or a coroutine under a fresh uuid and
  never removes it, ~2 KB per edit for the life of the server (0.6 MB per 1,000 messages of
  the soak).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import sys
import threading
from typing import Any, BinaryIO, Literal, Type, Union, get_args, get_origin

import attrs
from cattrs import transform_error
from cattrs.errors import ClassValidationError
from cattrs.v import format_exception
from lsprotocol import types
from pygls.exceptions import (JsonRpcContentModified, JsonRpcException, JsonRpcInternalError,
                              JsonRpcInvalidParams)
from pygls.io_ import StdoutWriter
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import RPCError, RPCNotification, RPCRequest, RPCResponse

from aipc_lsp import messages
from aipc_lsp.documents import LspWorkspace
from aipc_lsp.log_privacy import shown

logger = logging.getLogger(__name__)


class _NoStructuringTracebacks(logging.Filter):
    """pygls logs a traceback for every message whose params do not structure; AipcProtocol answers
    those (-32602, or a warning for a notification) with one line saying what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unable to deserialize message")


logging.getLogger("pygls.protocol.json_rpc").addFilter(_NoStructuringTracebacks())

# Bigger messages are skipped, not buffered: an editor opening a huge file must not make the
# server allocate whatever a header claims.
MAX_CONTENT_LENGTH = 64 * 1024 * 1024
# Header lines are a few dozen bytes; a longer "line" is garbage and is dropped in pieces.
MAX_HEADER_LINE = 64 * 1024
_SKIP_CHUNK = 1024 * 1024
# Searched anywhere in a line so that a header glued to junk (e.g. a body sent without its own
# header) still resynchronizes the stream on the next message.
_CONTENT_LENGTH = re.compile(rb"(?<![\w-])content-length[ \t]*:[ \t]*(\S*)", re.IGNORECASE)

SHUTTING_DOWN = "server is shutting down"

# The number of document events (didOpen/didChange/didClose) handled before the request being
# handled arrived; set in the request's own context, which its handler's task inherits.
_EVENTS_BEFORE_REQUEST: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "aipc_events_before_request", default=None)


class _Malformed:
    """A message that has the JSON-RPC shape but whose fields do not deserialize."""

    jsonrpc = "2.0"

    def __init__(self, data: dict[str, Any], problem: str):
        self.data = data
        self.problem = problem
        self.method = data.get("method")
        if "id" in data:
            self.id = data["id"]


def _valid_id(msg_id: Any) -> Any:
    # A response may only echo a usable id; anything else is answered with id null.
    return msg_id if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool) else None


def invalid_params(method: str | None, problem: str) -> JsonRpcInvalidParams:
    """The -32602 answer, worded the same for params that do not structure and for params a
    handler cannot serve (e.g. a document that is not open)."""
    return JsonRpcInvalidParams(f"Invalid params for {method!r}: {problem}")


def _describe(exc: BaseException | None) -> str:
    """What is wrong, by the names the client wrote: `textDocument.uri: required field missing`."""
    if isinstance(exc, ClassValidationError):
        return "; ".join(_at_json_path(line) for line in transform_error(exc, format_exception=_format))
    if exc is None:
        return "unknown error"
    return str(exc) or type(exc).__name__


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, messages.ParamError):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    given = [arg for arg in get_args(type_) if arg is not type(None)]
    if get_origin(type_) is Union and len(given) == 1:  # Optional[X]: a value was given, not X
        type_ = given[0]
    if get_origin(type_) is Literal:
        return "must be one of " + ", ".join(repr(choice) for choice in get_args(type_))
    if attrs.has(type_):
        return "must be an object"
    return format_exception(exc, type_)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _at_json_path(line: str) -> str:
    """cattrs' `problem @ $.params.text_document.uri` as `textDocument.uri: problem`."""
    problem, _, path = line.rpartition(" @ ")
    if not problem:
        return line
    path = path.removeprefix("$").removeprefix(".")
    path = path.removeprefix("params.") if path != "params" else path
    return f"{_NAME.sub(lambda m: _camel(m.group(0)), path) or 'message'}: {problem}"


def _camel(name: str) -> str:
    """lsprotocol's attribute names back to the protocol's (its converter's own rule)."""
    first, *rest = name.rstrip("_").split("_")
    return first + "".join(part.title() for part in rest)


class AipcProtocol(LanguageServerProtocol):
    def __init__(self, server, converter):
        super().__init__(server, messages.register_hooks(converter))
        self._initialize_seen = False
        # Document events counted, and the count at each URI's last one (URIs as sent).
        self._document_events = 0
        self._last_document_event: dict[str, int] = {}
        # pygls frames stdio messages in pygls.io_.run_async, a module function that
        # JsonRPCServer._start_io_async calls with no protocol hook between reading the
        # Content-Length header and allocating/decoding the body, and that swallows the
        # SystemExit carrying `exit`'s status. Neither can be fixed from a protocol method, so
        # the protocol takes over its own server's stdio entry point (TCP keeps pygls' loop
        # and gets the dispatch-level fixes only).
        server.start_io = self._start_io

    # -- errors ---------------------------------------------------------------------------------
    def _send_error(self, msg_id: Any, code: types.ErrorCodes, message: str) -> None:
        # A plain dict: lsprotocol's ResponseErrorMessage drops `"id": null` when unstructured.
        self._send_data({"jsonrpc": self.VERSION, "id": _valid_id(msg_id),
                         "error": {"code": int(code), "message": message}})

    # -- structuring ----------------------------------------------------------------------------
    def get_message_type(self, method: str) -> Type[Any] | None:
        custom = messages.MESSAGE_TYPES.get(method)
        return custom[0] if custom else super().get_message_type(method)

    def structure_params(self, method: str, value: Any, cls: type):
        """`value` as `cls` (e.g. a command's arguments as its request's params), or -32602."""
        try:
            return self._converter.structure(value, cls)
        except Exception as exc:
            raise invalid_params(method, _describe(exc)) from None

    def structure_message(self, data: dict[str, Any]):
        # pygls raises here, from inside json.loads' object_hook, so the reader loop only logs it
        # and the request is never answered. Hand the dispatcher something it can answer.
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            return _Malformed(data, _describe(exc.__cause__))

    # -- dispatch -------------------------------------------------------------------------------
    def handle_message(self, message):
        if not isinstance(message, (_Malformed, RPCRequest, RPCNotification, RPCResponse, RPCError)):
            # Not a JSON-RPC message at all: no "jsonrpc" member, a batch, a bare value.
            msg_id = message.get("id") if isinstance(message, dict) else None
            logger.error("Invalid JSON-RPC message: %s", shown(message))
            self._send_error(msg_id, types.ErrorCodes.InvalidRequest, "Invalid Request: not a JSON-RPC 2.0 message")
            return

        method = getattr(message, "method", None)
        is_request = method is not None and hasattr(message, "id")

        if message.jsonrpc != self.VERSION:
            logger.error("Unsupported jsonrpc version %r in %r", message.jsonrpc, method)
            if is_request:
                self._send_error(message.id, types.ErrorCodes.InvalidRequest,
                                 f"Invalid Request: jsonrpc must be {self.VERSION!r}")
            return

        if self._shutdown and method != types.EXIT:
            if is_request:
                self._send_error(message.id, types.ErrorCodes.InvalidRequest, SHUTTING_DOWN)
            else:
                logger.warning("Ignoring %s after shutdown", method or "response")
            return

        if not self._initialize_seen:
            if method == types.INITIALIZE and is_request:
                self._initialize_seen = not isinstance(message, _Malformed)
            elif is_request:
                self._send_error(message.id, types.ErrorCodes.ServerNotInitialized,
                                 f"Server not initialized: {method!r} sent before 'initialize'")
                return
            elif method is not None and method != types.EXIT:
                # LSP: notifications before initialize are dropped, except exit.
                logger.warning("Ignoring notification %r before initialize", method)
                return
        elif method == types.INITIALIZE and is_request:
            self._send_error(message.id, types.ErrorCodes.InvalidRequest,
                             "Invalid Request: 'initialize' may only be sent once")
            return

        if isinstance(message, _Malformed):
            self._reject_malformed(message, is_request)
            return

        super().handle_message(message)

    def _handle_request(self, msg_id, method_name: str, params: Any):
        # Runs in the request's own context (pygls' handle_message), before its handler is
        # called or scheduled: the handler's task inherits what is set here.
        if not self._request_futures:
            # No request in flight: every event so far is older than any request to come.
            self._last_document_event.clear()
        _EVENTS_BEFORE_REQUEST.set(self._document_events)
        super()._handle_request(msg_id, method_name, params)

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        if callback == self._check_handler_result:  # a notification's: nobody answers or cancels it by id
            def done(future, msg_id=msg_id):
                self._request_futures.pop(msg_id, None)
                callback(future)
            return super()._execute_handler(msg_id, handler, done, args, kwargs)
        return super()._execute_handler(msg_id, handler, callback, args, kwargs)

    def modified_since_sent(self, uri: str) -> bool:
        """Whether the document `uri` was opened, changed or closed after the request being
        handled arrived (False outside a request)."""
        before = _EVENTS_BEFORE_REQUEST.get()
        return before is not None and self._last_document_event.get(uri, 0) > before

    def check_unmodified(self, method: str, uri: str) -> None:
        """-32801 ContentModified when `uri` changed after the request was sent: its params
        (positions, ranges) describe a text the server no longer has."""
        if self.modified_since_sent(uri):
            raise JsonRpcContentModified(f"{uri} changed after the {method!r} request was sent")

    def _document_event(self, uri: str) -> None:
        self._document_events += 1
        self._last_document_event[uri] = self._document_events

    def _reject_malformed(self, message: _Malformed, is_request: bool) -> None:
        method = message.method
        if is_request:
            logger.error("Invalid params for %r (id %r): %s", method, message.id, message.problem)
            self._send_error(message.id, types.ErrorCodes.InvalidParams, invalid_params(method, message.problem).message)
        elif method is not None:
            logger.warning("Ignoring notification %r with invalid params: %s", method, message.problem)
        elif hasattr(message, "id"):
            # A client response we cannot read: fail whoever waits for it instead of hanging.
            future = self._request_futures.pop(message.id, None)
            logger.error("Malformed response to %r: %s", message.id, message.problem)
            if future is not None and not future.done():
                future.set_exception(JsonRpcInternalError(f"malformed response: {message.problem}"))
        else:
            logger.error("Invalid JSON-RPC message: %s", message.problem)
            self._send_error(None, types.ErrorCodes.InvalidRequest, f"Invalid Request: {message.problem}")

    # -- documents ------------------------------------------------------------------------------
    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        result = yield from super().lsp_initialize(params)
        # pygls's documents drift from the editor's (line breaks, ends of lines, URIs): documents.py.
        self._workspace = LspWorkspace.replacing(self._workspace)
        return result

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        # pygls splices a reversed range as start..start + text + end.. , duplicating the text in
        # between. Swap the ends, as vscode-languageserver-textdocument does (getWellformedRange).
        changes = []
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                start, end = change.range.start, change.range.end
                if (end.line, end.character) < (start.line, start.character):
                    logger.warning("didChange for %s (version %s) has a reversed range %s:%s-%s:%s; "
                                   "applying it with its ends swapped", params.text_document.uri,
                                   params.text_document.version, start.line, start.character,
                                   end.line, end.character)
                    change = attrs.evolve(change, range=types.Range(start=end, end=start))
            changes.append(change)
        params = attrs.evolve(params, content_changes=changes)
        self._document_event(params.text_document.uri)
        return (yield from super().lsp_text_document__did_change(params))

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        self._document_event(params.text_document.uri)
        return (yield from super().lsp_text_document__did_open(params))

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        self._document_event(params.text_document.uri)
        return (yield from super().lsp_text_document__did_close(params))

    # -- stdio ----------------------------------------------------------------------------------
    def _start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        """JsonRPCServer._start_io_async with our reader loop; `exit`'s SystemExit propagates."""
        server = self._server
        server._stop_event = stop_event = threading.Event()
        self.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        try:
            asyncio.run(self._read_messages(stdin or sys.stdin.buffer, stop_event))
        except BrokenPipeError:
            logger.error("Connection to the client is lost! Shutting down the server.")
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()

    async def _read_messages(self, stream: BinaryIO, stop_event: threading.Event) -> None:
        """A thread of its own reads whole messages and hands them to the loop: every message
        it has read before it next waits for input goes in one hand-off, handled in order in
        one loop callback. (pygls awaits an executor call per header line and per body: three
        hand-offs per message, each a wait for a core the engine keeps busy.) So messages the
        client wrote together are dispatched together: a request's handler task never starts
        between them, whatever the threads' timing, and sees every document event the client
        sent with the request (`modified_since_sent` tells it)."""
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        read_so_far: list[bytes] = []

        def hand_over() -> None:
            if read_so_far:
                loop.call_soon_threadsafe(self._receive_all, read_so_far.copy())
                read_so_far.clear()

        def read() -> None:
            try:
                reader = _unlocked(stream, before_wait=hand_over)
                for body in _frames(reader, stop_event):
                    read_so_far.append(body)
                    if not isinstance(reader, _FdReader):
                        hand_over()  # no way to know whether a read would wait: one at a time
                hand_over()
            except Exception:  # a broken stream ends the session as EOF does
                logger.exception("Reading the client's messages failed")
            finally:
                try:
                    loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(None))
                except RuntimeError:
                    pass  # the loop is gone already (exit)

        threading.Thread(target=read, name="lsp-reader", daemon=True).start()
        await ended
        # Stop the generations while the loop still runs: asyncio.run's clean-up cancels only the
        # tasks that exist when it starts, and a request task stepping meanwhile can start a job
        # (e.g. one queued behind another), which would then run to its end for nobody.
        end_of_input = getattr(self._server, "end_of_input", None)
        if end_of_input is not None:
            end_of_input()

    def _receive_all(self, bodies: list[bytes]) -> None:
        for body in bodies:
            self._receive(body)

    def _receive(self, body: bytes) -> None:
        try:
            message = json.loads(body, object_hook=self.structure_message)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            logger.error("Parse error in a %d byte message: %s", len(body), exc)
            self._send_error(None, types.ErrorCodes.ParseError, f"Parse error: {exc}")
            return
        try:
            self.handle_message(message)
        except Exception as exc:  # as pygls' loop: report, keep serving (SystemExit passes)
            logger.exception("Unable to handle message")
            self._server._report_server_error(exc, JsonRpcException)


class _FdReader:
    """readline/read on a file descriptor, with a buffer of our own: a daemon thread blocked
    in it holds no lock of the interpreter's, so the process can exit while it waits (blocked
    in sys.stdin.buffer, it made interpreter shutdown abort)."""

    def __init__(self, fd: int, before_wait=None):
        self._fd = fd
        self._buf = bytearray()
        self._before_wait = before_wait

    def _fill(self) -> bool:
        if self._before_wait is not None:
            self._before_wait()  # the read may wait for the client
        chunk = os.read(self._fd, 65536)
        self._buf += chunk
        return bool(chunk)

    def readline(self, limit: int) -> bytes:
        while True:
            end = self._buf.find(b"\n", 0, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buf) >= limit or not self._fill():
                return self._take(min(limit, len(self._buf)))

    def read(self, n: int) -> bytes:
        if not self._buf:
            self._fill()
        return self._take(min(n, len(self._buf)))

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def _unlocked(stream, before_wait=None):
    try:
        return _FdReader(stream.fileno(), before_wait)
    except (AttributeError, OSError, ValueError):  # not a real file (tests pass BytesIO)
        return stream


def _frames(stream, stop_event: threading.Event):
    """Message bodies from an LSP stream (blocking reads), until EOF or `stop_event`."""

    def read_exactly(n: int) -> bytes:
        parts = []
        while n > 0:
            chunk = stream.read(n)
            if not chunk:
                break
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    while not stop_event.is_set():
        # Headers, up to the blank line.
        length: int | None = None
        seen_headers = False
        while True:
            line = stream.readline(MAX_HEADER_LINE)
            if not line:
                return
            if len(line) >= MAX_HEADER_LINE and not line.endswith(b"\n"):
                logger.error("Header line longer than %d bytes; discarding it", MAX_HEADER_LINE)
                while line and not line.endswith(b"\n"):
                    line = stream.readline(MAX_HEADER_LINE)
                if not line:
                    return
            if not line.strip():
                if length is not None:
                    break
                if seen_headers:
                    logger.error("Header block without a valid Content-Length; ignoring it")
                seen_headers = False
                continue
            seen_headers = True
            match = _CONTENT_LENGTH.search(line)
            if match is None:
                if b":" not in line:
                    logger.warning("Ignoring malformed header line %s", shown(line))
                continue
            value = match.group(1)
            # isdigit on bytes is ASCII-only; 20 digits keep int() cheap and bounded.
            length = int(value) if value.isdigit() and len(value) <= 20 else None
            if length is None:
                logger.error("Invalid Content-Length %.40r", value)

        if length > MAX_CONTENT_LENGTH:
            # Honour the framing by discarding exactly that many bytes, in bounded pieces.
            logger.error("Content-Length %d exceeds the %d byte limit; skipping that message",
                         length, MAX_CONTENT_LENGTH)
            remaining = length
            while remaining > 0:
                chunk = stream.read(min(remaining, _SKIP_CHUNK))
                if not chunk:
                    return
                remaining -= len(chunk)
            continue

        body = read_exactly(length)
        if len(body) < length:
            logger.error("Input ended %d bytes into a %d byte message", len(body), length)
            return
        yield body
