"""The `remote` engine: a slot served by an OpenAI-compatible server (llama.cpp's, vLLM, OpenVINO
Model Server, Ollama) instead of a model in this process, for a team that runs one. See docs/TEAM.md.

Completions: the prompt is the one local engines get (context.py, fim.py: the model's FIM markers as
text, which these servers read as the special tokens they are), sent to /v1/completions and streamed;
the server reuses the KV cache of the prompt's unchanged beginning (`cache_prompt`), which the
prompt's 32-line window steps keep stable. Post-processing stops a suggestion by closing the stream,
and so does a cancel: the server stops generating for a client that went away.

Chat: the conversation goes to /v1/chat/completions as messages and the server applies the model's
template. The chat pipeline renders a conversation with the engine's chat template, so this
engine's template renders the messages as JSON behind a mark (`CHAT_TEMPLATE`), which `generate`
reads back. The scheduler asks for a chat answer in chunks (so completions can cut in): the stream
stays open between chunks and the next chunk reads on; a stream lost meanwhile is asked again and
the part already shown skipped (greedy answers repeat; one that differs ends there).

Token counts come from the server's tokenizer (/tokenize, /extras/tokenize/count) when it has
one, else from an estimate that over-counts, so prompt budgets hold either way (see `estimate`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from contextlib import closing
from dataclasses import dataclass

import httpx

from aipc_lsp import fim
from aipc_lsp.engines.base import (CancelFlag, Engine, EngineError, EngineInfo, GenerationParams, GenerationResult,
                                   OnText, RequestError, prompt_limit_of)
from aipc_lsp.engines.remote_http import TOKENIZE_PATHS, Server, SseStream, api_key

log = logging.getLogger(__name__)

# The chat pipeline's prompt for this engine: a mark no source text starts with, then the messages.
CHAT_MARK = "\x1eaipc-chat-messages\x1e"
CHAT_TEMPLATE = "{{ '" + CHAT_MARK + "' }}{{ messages | tojson }}"
# A chat stream is asked for at most this many tokens (chat.max_tokens' limit): the scheduler ends
# the answer at chat.max_tokens and the stream is closed then.
CHAT_STREAM_MAX_TOKENS = 8192
# Times one chunk asks again for a chat whose stream was lost.
CHAT_REASKS = 2
# Tokens a chat message costs beyond its text in the usual templates (role line, end marker).
MESSAGE_TOKENS = 5
# Without the server's tokenizer: code is 3-4 bytes a token for code models' vocabularies (Qwen2.5-
# Coder, StarCoder); 2.5 over-counts, so a prompt sized by it fits the budget counted exactly.
ESTIMATE_BYTES_PER_TOKEN = 2.5
COUNT_CACHE_SIZE = 256
# Fields llama.cpp's servers read and others ignore: reuse the KV cache of the prompt's unchanged
# beginning; no repetition penalty (llama-cpp-python's default is 1.1; the local engines use none).
LLAMA_CPP_FIELDS = {"cache_prompt": True, "repeat_penalty": 1.0}
# OpenAI's limit on stop strings, which OpenVINO Model Server keeps; a FIM template's first ones are
# its end markers (post-processing ends a suggestion anyway).
MAX_STOP = 4
# Which FIM template a served model's name suggests, for servers without a tokenizer endpoint.
NAME_HINTS = (("codegemma", fim.CODEGEMMA), ("codestral", fim.CODESTRAL), ("codellama", fim.CODELLAMA),
              ("code-llama", fim.CODELLAMA), ("deepseek-coder", fim.DEEPSEEK), ("qwen2.5-coder", fim.QWEN),
              ("qwen2-5-coder", fim.QWEN), ("qwen3-coder", fim.QWEN), ("starcoder", fim.STARCODER),
              ("smollm", fim.STARCODER))


def template_of_name(model: str) -> fim.FimTemplate | None:
    name = model.lower().replace("_", "-")
    return next((template for hint, template in NAME_HINTS if hint in name), None)


def split_chat_prompt(prompt: str) -> tuple[str, str] | None:
    """(the conversation's JSON, the answer so far) of a chat prompt; None for any other prompt."""
    if not prompt.startswith(CHAT_MARK):
        return None
    try:
        _, end = json.JSONDecoder().raw_decode(prompt, len(CHAT_MARK))
    except ValueError:
        return None
    return prompt[len(CHAT_MARK):end], prompt[end:]


@dataclass
class _ChatStream:
    """A chat answer's stream, kept open between the scheduler's chunks."""

    conversation: str  # the messages' JSON: which chat this is
    stream: SseStream
    text: str = ""  # what it gave so far (shown, or skipped as already shown)
    skip: str = ""  # asked again after a lost stream: the part already shown, not shown twice
    ended: bool = False


class RemoteEngine(Engine):
    name = "remote"

    def __init__(self, model_path: str = "", device: str = "CPU", *, threads: int = 0, precision: str = "",
                 options=None, transport: httpx.BaseTransport | None = None):
        if options is None:
            from aipc_lsp.config import RemoteSettings

            options = RemoteSettings()
        super().__init__(model_path, device, threads=threads, precision=precision, options=options)
        self._transport = transport  # tests give httpx.MockTransport
        self.server: Server | None = None
        self.model = ""
        self.latency_ms: float | None = None
        self._count_path: str | None = None
        self._count_failed = False
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._template_by_name: fim.FimTemplate | None = None
        self._chat: _ChatStream | None = None
        self._live: set[SseStream] = set()
        self._extras = dict(LLAMA_CPP_FIELDS)
        self._lock = threading.Lock()

    # --- loading: the server's health, its model, its tokenizer --------------------------------------

    def load_model(self) -> EngineInfo:
        options = self.options
        if not options.url:
            raise EngineError('engine "remote" needs remote.url: the OpenAI-compatible server\'s base URL, e.g. '
                              "http://team-llm:8080/v1")
        self.close()
        self.server = server = Server(options.url, key=api_key(options.api_key_env),
                                      connect_timeout_s=options.connect_timeout_s, timeout_s=options.timeout_s,
                                      retries=options.retries, transport=self._transport)
        started = time.perf_counter()
        listing = server.get("/models")
        if not isinstance(listing, dict):
            raise EngineError(f"{server.label}/models answered {type(listing).__name__}, not an OpenAI model list")
        self.latency_ms = (time.perf_counter() - started) * 1000
        served = [m.get("id") for m in listing.get("data") or [] if isinstance(m, dict) and m.get("id")]
        if options.model and served and options.model not in served:
            raise EngineError(f"{server.label} does not serve remote.model {options.model!r}; it serves "
                              f"{', '.join(map(str, served))}")
        self.model = options.model or (served[0] if served else "")
        self.model_path = f"{server.label} {self.model}".strip()
        self._template_by_name = template_of_name(self.model)
        self._count_path = self._find_counter()
        context = self._context_length(listing)
        log.info("remote: %s serves %s (%.0f ms); tokens counted by %s; context %s", server.label, self.model or "?",
                 self.latency_ms, self._count_path or "an estimate", context or "unknown")
        return EngineInfo(device=server.label, max_prompt_tokens=prompt_limit_of(context) if context else None,
                          chat_template=CHAT_TEMPLATE)

    def _find_counter(self) -> str | None:
        for path in TOKENIZE_PATHS:
            try:
                if self.server.count_tokens(path, "def f(x):\n    return x\n", self.model) > 0:
                    return path
            except (EngineError, KeyError, TypeError, ValueError):
                continue
        return None

    def _context_length(self, listing: dict) -> int | None:
        """The model's context in tokens where the server says it: vLLM in /v1/models, llama.cpp's
        own server in /props."""
        for entry in listing.get("data") or []:
            if isinstance(entry, dict) and entry.get("id") == self.model and isinstance(entry.get("max_model_len"), int):
                return entry["max_model_len"]
        try:
            settings = self.server.get("/props", root=True).get("default_generation_settings") or {}
        except EngineError:
            return None
        n_ctx = settings.get("n_ctx")
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None

    # --- counting --------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        chat = split_chat_prompt(text)
        if chat is not None:
            messages, answer = chat
            return sum(self.count_tokens(m.get("content") or "") + MESSAGE_TOKENS
                       for m in json.loads(messages)) + MESSAGE_TOKENS + (self.count_tokens(answer) if answer else 0)
        with self._lock:
            if text in self._counts:
                self._counts.move_to_end(text)
                return self._counts[text]
        if self._count_path is None or self._count_failed or self.server is None:
            return self.estimate(text)
        try:
            count = self.server.count_tokens(self._count_path, text, self.model)
        except (EngineError, KeyError, TypeError, ValueError) as exc:
            # Counting is on the keystroke's path: no second wait for a server that failed once;
            # the next answer it gives turns exact counts back on.
            log.warning("remote: counting tokens by an estimate until %s answers again: %s", self.server.label, exc)
            self._count_failed = True
            return self.estimate(text)
        with self._lock:
            self._counts[text] = count
            while len(self._counts) > COUNT_CACHE_SIZE:
                self._counts.popitem(last=False)
        return count

    def estimate(self, text: str) -> int:
        """An over-count of `text`'s tokens: the markers of the FIM template the model's name
        suggests are one token each, the rest ESTIMATE_BYTES_PER_TOKEN bytes a token."""
        markers = 0
        template = self._template_by_name
        if template is not None:
            for marker in {template.prefix, template.suffix, template.middle, template.file_sep, template.repo_name} - {None, ""}:
                markers += text.count(marker)
                text = text.replace(marker, "")
        return markers + math.ceil(len(text.encode("utf-8", "surrogatepass")) / ESTIMATE_BYTES_PER_TOKEN)

    # --- generating --------------------------------------------------------------------------------------

    def generate(self, prompt: str, params: GenerationParams, cancel: threading.Event,
                 on_text: OnText | None = None) -> GenerationResult:
        if self.server is None:
            raise EngineError("the remote engine is not loaded")
        chat = split_chat_prompt(prompt)
        if chat is not None:
            return self._chat_chunk(*chat, params, cancel, on_text)
        body = {"prompt": prompt, "max_tokens": params.max_new_tokens}
        try:
            stream = self.server.stream("/completions", self._body(body, params))
            with closing(stream):
                return self._read(stream, params.max_new_tokens, cancel, on_text)
        except RequestError as exc:
            if not any(name in str(exc) for name in self._extras):
                raise
            # A strict server refusing llama.cpp's fields by name: without them from now on.
            log.info("remote: %s refused a request; asking without llama.cpp's fields %s", self.server.label,
                     ", ".join(self._extras))
            self._extras = {}
            stream = self.server.stream("/completions", self._body(body, params))
            with closing(stream):
                return self._read(stream, params.max_new_tokens, cancel, on_text)

    def _body(self, body: dict, params: GenerationParams) -> dict:
        body = {"model": self.model, **body, "temperature": params.temperature, **self._extras}
        if params.stop:
            body["stop"] = list(params.stop[:MAX_STOP])
        return body

    def _chat_chunk(self, conversation: str, answered: str, params: GenerationParams, cancel: threading.Event,
                    on_text: OnText | None) -> GenerationResult:
        chat = self._chat
        continues = chat is not None and chat.conversation == conversation and chat.text == answered
        if continues and chat.ended:
            return GenerationResult()  # the answer ended at the last chunk's boundary
        if not continues or chat.stream.lost:
            chat = self._open_chat(conversation, answered, params)
        result = self._read(chat.stream, params.max_new_tokens, cancel, on_text, chat)
        for _ in range(CHAT_REASKS):
            # Lost mid-chunk (llama-cpp-python ends a stream when another request comes): the rest
            # of this chunk from a stream asked again.
            if not chat.stream.lost or chat.ended or cancel.is_set() or result.stopped_by_caller:
                break
            chat = self._open_chat(conversation, chat.text, params)
            more = self._read(chat.stream, params.max_new_tokens - result.tokens, cancel, on_text, chat)
            result = _joined(result, more)
        if cancel.is_set() or result.stopped_by_caller:
            self._drop_chat()
        elif chat.ended:
            chat.stream.close()
        return result

    def _open_chat(self, conversation: str, answered: str, params: GenerationParams) -> _ChatStream:
        self._drop_chat()
        body = self._body({"messages": json.loads(conversation), "max_tokens": CHAT_STREAM_MAX_TOKENS}, params)
        if answered:
            log.info("remote: the chat's stream was lost; asking again, skipping the %d characters shown", len(answered))
        self._chat = _ChatStream(conversation, self.server.stream("/chat/completions", body), text=answered,
                                 skip=answered)
        return self._chat

    def _read(self, stream: SseStream, max_tokens: int, cancel: threading.Event, on_text: OnText | None,
              chat: _ChatStream | None = None) -> GenerationResult:
        """Pieces of `stream` to `on_text` until `max_tokens` pieces (a server sends one a token),
        the end, a cancel or the caller's stop."""
        result = GenerationResult()
        started = time.perf_counter()
        forget = cancel.on_set(stream.shutdown) if isinstance(cancel, CancelFlag) else (lambda: None)
        with self._lock:
            self._live.add(stream)
        try:
            for piece in stream:
                text = self._unskipped(chat, piece.text) if chat is not None else piece.text
                if text:
                    if result.first_token_s is None:
                        result.first_token_s = time.perf_counter() - started
                    result.text += text
                    result.tokens += 1
                    if chat is not None:
                        chat.text += text
                    if on_text is not None and on_text(text) is False:
                        result.stopped_by_caller = True
                        break
                if cancel.is_set() or (chat is not None and chat.ended):
                    break
                if piece.finish is not None or result.tokens >= max_tokens:
                    break
        finally:
            forget()
            with self._lock:
                self._live.discard(stream)
        if chat is not None and stream.finished:
            chat.ended = True
        self._count_failed = False  # the server answers: exact counts again
        result.cancelled = cancel.is_set()
        result.total_s = time.perf_counter() - started
        return result

    @staticmethod
    def _unskipped(chat: _ChatStream, text: str) -> str:
        """Of a re-asked chat's piece, what was not shown before (the answer ends where it differs)."""
        if not chat.skip:
            return text
        shown = chat.skip
        take = min(len(shown), len(text))
        if text[:take] != shown[:take]:
            log.info("remote: the chat asked again answered differently; it ends with what was shown")
            chat.skip, chat.ended = "", True
            return ""
        chat.skip = shown[take:]
        if chat.skip:
            return ""
        return text[take:]

    def _drop_chat(self) -> None:
        chat, self._chat = self._chat, None
        if chat is not None:
            chat.stream.shutdown()
            chat.stream.close()

    # --- the rest of the interface -------------------------------------------------------------------------

    def settle(self, busy=lambda: False) -> None:
        """Idle after an answer: no chunk of a chat will continue a stream still open here."""
        if self._chat is not None and not busy():
            self._drop_chat()

    def abort(self) -> None:
        """A generation made no progress for the stall limit: end every stream in flight."""
        with self._lock:
            live = list(self._live)
        for stream in live:
            stream.shutdown()

    def close(self) -> None:
        self._drop_chat()
        self.abort()
        if self.server is not None:
            self.server.client.close()
            self.server = None


def _joined(first: GenerationResult, second: GenerationResult) -> GenerationResult:
    """Two reads of one chunk as one result."""
    return GenerationResult(
        text=first.text + second.text, tokens=first.tokens + second.tokens,
        first_token_s=first.first_token_s if first.first_token_s is not None else (
            None if second.first_token_s is None else first.total_s + second.first_token_s),
        total_s=first.total_s + second.total_s, cancelled=second.cancelled, stopped_by_caller=second.stopped_by_caller)


def devices_report(options):
    """`aipc-lsp devices`: the server remote.url names, what it serves and how fast it answers (a
    model listing and a one-token completion, timed)."""
    from aipc_lsp.engines.detect import EngineReport

    report = EngineReport("remote", "httpx", True, httpx.__version__)
    if not options.url:
        report.note = "set remote.url to serve from a team's OpenAI-compatible server (docs/TEAM.md)"
        return report
    engine = RemoteEngine("", options=options)
    try:
        engine.load()
        first = engine.generate("def", GenerationParams(max_new_tokens=1), CancelFlag()).first_token_s
        timing = f"listing in {engine.latency_ms:.0f} ms"
        if first is not None:
            timing += f", first token in {first * 1000:.0f} ms"
        report.devices.append(f"{engine.server.label}: {engine.model or '?'} ({timing})")
        report.note = (f"tokens counted by {engine.server.root}{engine._count_path}" if engine._count_path
                       else "no tokenizer endpoint: tokens counted by an over-estimate")
    except EngineError as exc:
        report.error = str(exc)
    finally:
        engine.close()
    return report
