"""A scripted stand-in for a real inference engine (implements `aipc_lsp.engines.base.Engine`).

It "decodes" a scripted output one token at a time, sleeping `token_delay` seconds per
token in the calling (worker) thread, and behaves like a well-mannered engine: it checks
`cancel` before every token, stops when `on_text` returns False, and fills in a
`GenerationResult` like the real ones do. Everything it is asked to do is recorded so a
test can check what reached the engine and how many generations overlapped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from aipc_lsp.engines.base import Engine, EngineError, EngineInfo, GenerationParams, GenerationResult, OnText


def tokenize(text: str) -> list[str]:
    """Split `text` into word-ish pieces that glue a leading space to the word, like BPE."""
    pieces: list[str] = []
    current = ""
    for ch in text:
        if current and (ch == "\n" or (ch == " " and current.strip()) or current == "\n"):
            pieces.append(current)
            current = ""
        current += ch
    if current:
        pieces.append(current)
    return pieces


@dataclass
class GenerateCall:
    prompt: str
    params: GenerationParams
    started: float
    ended: float | None = None
    # Time at which the engine noticed `cancel` (None if it never did).
    saw_cancel_at: float | None = None
    tokens: int = 0
    text: str = ""
    result: GenerationResult | None = None
    error: BaseException | None = None


@dataclass
class FakeEngine(Engine):
    # Either a fixed token list / string, or a function prompt -> output (string or tokens).
    output: str | Sequence[str] | Callable[[str], str | Sequence[str]] = "x"
    token_delay: float = 0.01
    name: str = "fake"
    device: str = "CPU"
    model_path: str = "/models/fake"
    load_delay: float = 0.0
    # The model's chat template ("" = none, the chat feature falls back to a built-in format).
    template: str = ""
    # Whether a prompt's KV cache outlives its request (OpenVINO with prefix caching does).
    keeps_prompt_cache: bool = False
    # Whether it honours GenerationParams.start (token healing); its tokens are then pre-tokenizer
    # pieces (last_token gives back the open tail it is asked about).
    constrains_start: bool = False
    # The longest prompt it declares (EngineInfo.max_prompt_tokens), and what it tells the user.
    max_prompt_tokens: int | None = None
    notice: str = ""
    # If set, load() waits for this event (lets a test hold the slot in "loading").
    load_gate: threading.Event | None = None
    fail_on_load: BaseException | None = None
    # Raise `fail_with` after this many tokens (0 = before the first one).
    fail_after_tokens: int | None = None
    fail_with: BaseException = field(default_factory=lambda: EngineError("decode failed"))

    loaded: bool = False
    load_calls: int = 0
    closed: bool = False
    calls: list[GenerateCall] = field(default_factory=list)
    max_concurrent: int = 0
    _active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Set whenever a generate call starts (tests wait on it instead of sleeping).
    started_event: threading.Event = field(default_factory=threading.Event)

    # --- Engine protocol -------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        """What it says about itself: always its fields' values (a test may change them)."""
        return EngineInfo(max_prompt_tokens=self.max_prompt_tokens, keeps_prompt_cache=self.keeps_prompt_cache,
                          notice=self.notice, chat_template=self.template, constrains_start=self.constrains_start)

    @info.setter
    def info(self, value: EngineInfo) -> None:
        pass

    def load_model(self) -> EngineInfo:
        self.load_calls += 1
        if self.load_gate is not None:
            self.load_gate.wait(5)
        if self.load_delay:
            time.sleep(self.load_delay)
        if self.fail_on_load is not None:
            raise self.fail_on_load
        self.loaded = True
        return self.info

    def count_tokens(self, text: str) -> int:
        return len(tokenize(text))

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        cancel: threading.Event,
        on_text: OnText | None = None,
    ) -> GenerationResult:
        call = GenerateCall(prompt=prompt, params=params, started=time.perf_counter())
        with self._lock:
            self.calls.append(call)
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
        self.started_event.set()
        try:
            result = self._decode(call, prompt, params, cancel, on_text)
            call.result = result
            return result
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            call.ended = time.perf_counter()
            with self._lock:
                self._active -= 1

    def last_token(self, text: str) -> str:
        return text if self.constrains_start else ""

    def close(self) -> None:
        self.closed = True
        self.loaded = False

    # --- helpers ---------------------------------------------------------------------

    @property
    def prompts(self) -> list[str]:
        return [c.prompt for c in self.calls]

    @property
    def active(self) -> int:
        return self._active

    def script_for(self, prompt: str) -> list[str]:
        out = self.output(prompt) if callable(self.output) else self.output
        return tokenize(out) if isinstance(out, str) else list(out)

    def expected_duration(self, prompt: str = "") -> float:
        return len(self.script_for(prompt)) * self.token_delay

    def _decode(self, call, prompt, params, cancel, on_text) -> GenerationResult:
        if not self.loaded:
            raise EngineError("model not loaded")
        result = GenerationResult()
        started = call.started
        text = ""
        for index, piece in enumerate(self.script_for(prompt)[: params.max_new_tokens]):
            if self.fail_after_tokens is not None and index >= self.fail_after_tokens:
                raise self.fail_with
            if cancel.is_set():
                call.saw_cancel_at = time.perf_counter()
                result.cancelled = True
                break
            time.sleep(self.token_delay)  # one "decode step"
            if cancel.is_set():
                call.saw_cancel_at = time.perf_counter()
                result.cancelled = True
                break
            if result.first_token_s is None:
                result.first_token_s = time.perf_counter() - started
            text += piece
            result.tokens += 1
            call.tokens = result.tokens
            call.text = text
            if params.stop and any(s in text for s in params.stop):
                result.stopped_by_caller = True
                break
            if on_text is not None and on_text(piece) is False:
                result.stopped_by_caller = True
                break
        else:
            if self.fail_after_tokens is not None and result.tokens >= self.fail_after_tokens:
                raise self.fail_with
        result.text = text
        result.total_s = time.perf_counter() - started
        return result


class OneSlotRuntime:
    """What Suggester and ChatService ask of a runtime: one scheduler over one slot of `engine`."""

    def __init__(self, engine: Engine):
        from aipc_lsp.scheduler import Scheduler, Slot

        self.sched = Scheduler([Slot("fake", engine)])

    async def scheduler(self):
        await self.sched.wait_ready()
        return self.sched

    def current(self):
        return self.sched
