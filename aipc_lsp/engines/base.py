"""The engine interface every inference back end implements.

An engine owns one loaded model on one device. The scheduler calls it from a single
worker thread per device slot, so implementations need not be thread-safe, but
`generate` must return promptly (within one decode step) once `cancel` is set.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    # Strings that end generation; the engine may also stop on its own EOS tokens.
    stop: tuple[str, ...] = ()


@dataclass
class GenerationResult:
    text: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    # Seconds from the call to the first decoded token; None if no token came.
    first_token_s: float | None = None
    total_s: float = 0.0
    cancelled: bool = False
    stopped_by_caller: bool = False
    extra: dict = field(default_factory=dict)


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
    """A model failed to load or generate; the message is meant for the user."""


class RequestError(EngineError):
    """A request this engine cannot serve as asked (e.g. a prompt longer than its KV cache holds);
    the engine itself is fine, so its slot stays healthy."""


class Engine(Protocol):
    name: str
    device: str
    model_path: str

    def load(self) -> None:
        """Load and compile the model. Blocking; called once, off the event loop."""

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is for this model's tokenizer."""

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        cancel: threading.Event,
        on_text: OnText | None = None,
    ) -> GenerationResult:
        """Generate a continuation of `prompt` (no chat template applied)."""

    def chat_template(self) -> str:
        """The model's own chat template (Hugging Face Jinja), or "" when it has none."""

    def close(self) -> None:
        """Free the model."""
