"""The engine interface: everything the server asks of an inference back end, in one class.

An engine owns one loaded model on one device. The scheduler calls it from a single thread per
device slot (so implementations need not be thread-safe, bar `abort`), and `generate` must return
promptly (within one decode step) once `cancel` is set. Nothing outside this class is looked up
on an engine: what it can do is a method here (with a default), what it says about itself once
loaded is its `EngineInfo`.

How to add an engine (one file, one row):
1. Write `engines/NAME.py` with a class that derives from `Engine` and sets `name = "NAME"`. Its
   constructor takes `(model_path, device, *, threads, precision, options)` and passes them to
   `Engine.__init__`; `options` is its own settings section (a dataclass in config.py, e.g.
   `OpenVINOSettings`), or None when it has none.
2. Implement `load_model` (load and warm up; return an `EngineInfo`: its prompt limit, whether a
   prompt's KV cache outlives the request, its chat template, ...), `count_tokens`, `generate`
   and `close`; override `apply_chat_template` or `settle` where the engine has something better
   than the default, and `last_token` with `EngineInfo.constrains_start` where it can constrain
   decoding to begin with given text (token healing). Raise `EngineError` when the engine is broken (the slot is written off and
   retried) and `RequestError` when one request cannot run as asked (a prompt over the limit:
   the request gets an error, the slot stays healthy). A model's file is resolved and made before
   `load` (models/resolve.py): an engine only loads what it is given.
3. Add a row to `ENGINES` in engines/__init__.py (its module, class, precisions), its settings
   section to config.py's `Settings` under the same name when it has options, and the model
   formats it loads to models/compat.py's `ACCEPTS`.
The server runs it in a worker process (process.py, worker.py) without further ado: the worker
builds it from the same spec, and the proxy carries this interface over JSON lines.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Callable, ClassVar


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    # 0 = greedy; above 0 the engine samples at this temperature.
    temperature: float = 0.0
    # Strings that end generation; the engine may also stop on its own EOS tokens.
    stop: tuple[str, ...] = ()
    # Text the answer must begin with (token healing: the prompt leaves out the cursor's unfinished
    # last token, and decoding is constrained to rewrite it). Only asked of engines whose
    # EngineInfo.constrains_start says they can.
    start: str = ""


@dataclass
class GenerationResult:
    text: str = ""
    tokens: int = 0
    # Seconds from the call to the first decoded token; None if no token came.
    first_token_s: float | None = None
    total_s: float = 0.0
    cancelled: bool = False
    stopped_by_caller: bool = False


# Of a context of N tokens, what prompts may fill at most: the rest is the answer's room (a chat
# answer is 384 tokens by default). Prompt builders keep within it (Scheduler.prompt_limit).
ANSWER_ROOM_TOKENS = 512


def prompt_limit_of(context_tokens: int) -> int:
    """The longest prompt a context of `context_tokens` takes, leaving the answer its room."""
    return max(context_tokens // 2, context_tokens - ANSWER_ROOM_TOKENS)


@dataclass(frozen=True)
class EngineInfo:
    """What a loaded engine says about itself (returned by `load`, kept as `engine.info`)."""

    # Where it really runs, when that differs from the device asked for (npu_library without an
    # NPU runs on the CPU); "" = as asked.
    device: str = ""
    # The longest prompt it takes (static shapes, a KV cache or context of fixed size); prompts
    # are built within it. None = no limit it knows of.
    max_prompt_tokens: int | None = None
    # Whether a prompt's KV cache outlives its request, so computing a prompt ahead (warming a
    # document) pays off.
    keeps_prompt_cache: bool = False
    # Something the user should know although the engine works (shown once when the slot is ready).
    notice: str = ""
    # The model's own chat template (Hugging Face Jinja), or "" when it has none.
    chat_template: str = ""
    # The model's end-of-sequence token as text (a chat template may use it), or "".
    eos_token: str = ""
    # Whether it honours GenerationParams.start (constrained decoding).
    constrains_start: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> "EngineInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class CancelFlag(threading.Event):
    """A cancel event that also calls back when it is set, so an engine can pass a cancel on
    the moment it happens (to a worker process) instead of polling for it."""

    def __init__(self):
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (in the thread that sets the flag) when it is set, at once if it is
        set already. Returns a function that unregisters it."""
        with self._lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def set(self) -> None:
        with self._lock:
            if self.is_set():
                return
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


# Receives each new piece of decoded text; returning False asks the engine to stop
# (the caller has seen enough, e.g. the suggestion's block ended).
OnText = Callable[[str], bool]


class EngineError(RuntimeError):
    """A model failed to load or generate; the message is meant for the user. The slot that
    raised it is unhealthy until a retry succeeds."""


class RequestError(EngineError):
    """A request this engine cannot serve as asked (e.g. a prompt longer than its KV cache holds);
    the engine itself is fine, so its slot stays healthy and only that request fails."""


class Engine:
    """The base of every engine; the defaults are what an engine without the capability does."""

    name: ClassVar[str] = "engine"
    # What it said about itself when it last loaded (the defaults until then).
    info: EngineInfo = EngineInfo()

    def __init__(self, model_path: str, device: str = "CPU", *, threads: int = 0, precision: str = "",
                 options: Any = None):
        self.model_path = str(model_path)
        self.device = device
        self.threads = threads  # CPU inference threads; 0 = the engine's choice
        self.precision = precision  # the weights' precision where the engine chooses at load; "" = its default
        self.options = options

    def load(self) -> EngineInfo:
        """Load and compile the model. Blocking; called off the event loop, once, and again by a
        retry after a failure."""
        self.info = self.load_model()
        return self.info

    def load_model(self) -> EngineInfo:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is for this model's tokenizer."""
        raise NotImplementedError

    def last_token(self, text: str) -> str:
        """The text of the last token `text` encodes to ("" when this engine cannot tell, or the
        token is not whole characters): what token healing holds back (EngineInfo.constrains_start)."""
        return ""

    def generate(self, prompt: str, params: GenerationParams, cancel: threading.Event,
                 on_text: OnText | None = None) -> GenerationResult:
        """Generate a continuation of `prompt` (no chat template applied): each new piece of text
        goes to `on_text` as it is decoded. Returns within a decode step of `cancel` being set."""
        raise NotImplementedError

    def apply_chat_template(self, messages: list[dict]) -> str:
        """The engine's own renderer of `info.chat_template`, for templates jinja2 cannot render."""
        raise EngineError(f"{self.name} has no chat template renderer of its own")

    def settle(self, busy: Callable[[], bool] = lambda: False) -> None:
        """Idle time after an answer (not after a cancel), nothing queued: the engine may prepare
        for the next request (OpenVINO caches a typing checkpoint). `busy()` turns true when a
        request comes meanwhile: skip what is left."""

    def abort(self) -> None:
        """Called from another thread when a generation is stuck (no token for the stall limit):
        free the slot's thread if the engine can (a worker process is killed)."""

    def close(self) -> None:
        """Free the model."""
