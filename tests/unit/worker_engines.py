"""Engines for the worker-process tests: imported by name inside the worker (the test puts
this folder on PYTHONPATH), so each misbehaviour is a real one of a real child process."""

from __future__ import annotations

import os
import time

from fake_engine import FakeEngine


class NoisyEngine(FakeEngine):
    """Writes to stdout while loading and decoding, as native libraries do."""

    def load_model(self):
        print("library banner on stdout")
        os.write(1, b"raw bytes on fd 1\n")
        return super().load_model()


class CrashingEngine(FakeEngine):
    """The process dies after `crash_after` tokens, as a native crash would take it."""

    def __init__(self, crash_after: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.crash_after = crash_after

    def generate(self, prompt, params, cancel, on_text=None):
        def crash_later(piece: str) -> bool:
            self.crash_after -= 1
            if self.crash_after <= 0:
                os._exit(3)
            return on_text(piece) if on_text is not None else True

        return super().generate(prompt, params, cancel, crash_later)


class HangingEngine(FakeEngine):
    """Never returns from generate and never looks at `cancel`: a stuck native call."""

    def generate(self, prompt, params, cancel, on_text=None):
        while True:
            time.sleep(1)


class FailingLoadEngine(FakeEngine):
    def load_model(self):
        from aipc_lsp.engines.base import EngineError

        raise EngineError("no such model on this device")


class SilentUntilCancelledEngine(FakeEngine):
    """Sends nothing until it is cancelled (a long prefill): only the cancel itself can wake
    the server's side of the generation."""

    def generate(self, prompt, params, cancel, on_text=None):
        from aipc_lsp.engines.base import GenerationResult

        while not cancel.is_set():
            time.sleep(0.002)
        return GenerationResult(cancelled=True)


class EnvEngine(FakeEngine):
    """Says the worker's MALLOC_ARENA_MAX: what the environment a worker is started with holds."""

    def load_model(self):
        self.output = os.environ.get("MALLOC_ARENA_MAX", "unset")
        return super().load_model()


class SettlingEngine(FakeEngine):
    """Keeps the order of its generations ("g") and settles ("s"); `apply_chat_template` says it,
    since the worker answers that call while its main thread works."""

    history = ""

    def generate(self, prompt, params, cancel, on_text=None):
        SettlingEngine.history += "g"
        return super().generate(prompt, params, cancel, on_text)

    def settle(self, busy) -> None:
        assert not busy()  # the worker settles only with nothing queued
        SettlingEngine.history += "s"

    def apply_chat_template(self, messages) -> str:
        return SettlingEngine.history


class FussyEngine(FakeEngine):
    """Refuses prompts longer than `limit` characters as a request it cannot serve (RequestError)."""

    def __init__(self, limit: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def generate(self, prompt, params, cancel, on_text=None):
        from aipc_lsp.engines.base import RequestError

        if len(prompt) > self.limit:
            raise RequestError(f"the prompt is {len(prompt)} characters, more than {self.limit}")
        return super().generate(prompt, params, cancel, on_text)
