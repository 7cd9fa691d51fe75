"""Owns the loaded model: resolves (and fetches) it, builds the engine slots and the
scheduler from settings, and rebuilds them when a setting the model depends on changes.

Shared by the language server and the command line (`aipc-lsp complete`), so both take
exactly the same path from settings to a generation.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from aipc_lsp.config import Settings
from aipc_lsp.engines import create_engine
from aipc_lsp.engines.base import EngineError
from aipc_lsp.models.fetch import FetchError
from aipc_lsp.models.resolve import ModelError, PrepareError, model_for_slot
from aipc_lsp.scheduler import Scheduler, Slot

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """How the runtime tells the user about slow or failed preparation."""

    def begin(self, title: str) -> None: ...
    def report(self, message: str, percent: int | None) -> None: ...
    def end(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...


class LogReporter:
    def begin(self, title: str) -> None:
        log.info("%s", title)

    def report(self, message: str, percent: int | None) -> None:
        log.info("%s%s", message, f" ({percent}%)" if percent is not None else "")

    def end(self, message: str) -> None:
        log.info("%s", message)

    def error(self, message: str) -> None:
        log.error("%s", message)

    def warn(self, message: str) -> None:
        log.warning("%s", message)


class ModelUnavailable(RuntimeError):
    """No model can serve right now; the message says why and what to do."""


class ModelRuntime:
    def __init__(self, reporter: Reporter | None = None):
        self.reporter: Reporter = reporter or LogReporter()
        self._key: tuple | None = None
        self._task: asyncio.Task | None = None
        self._scheduler: Scheduler | None = None
        # Why no model is available, for status reports; None while loading or ready.
        self.error: str | None = None
        # Set by the first configure(): a request that arrives between initialize and the end
        # of `initialized` (settings still being pulled) waits for it instead of getting nothing.
        self._configured = asyncio.Event()

    def configure(self, settings: Settings) -> None:
        """Start preparing the model for `settings` unless it is the one already there."""
        key = settings.model_key()
        if key == self._key and self._task is not None:
            return
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._key = key
        self.error = None
        self._task = asyncio.ensure_future(self._prepare(settings))
        self._configured.set()

    async def _prepare(self, settings: Settings) -> Scheduler:
        reporter = self.reporter
        reporter.begin("aipc-lsp: preparing the model")
        loop = asyncio.get_running_loop()

        def progress(message: str, percent: int | None) -> None:
            """Making the model ready is 0-88% of preparing (fetching, then what the engine reads); loading the rest."""
            loop.call_soon_threadsafe(reporter.report, message, None if percent is None else percent * 88 // 100)

        def warn(message: str) -> None:
            loop.call_soon_threadsafe(reporter.warn, message)

        try:
            slots = []
            for slot_settings in settings.slot_list():
                # The model is resolved and made before its engine is built: engines only load.
                path = await asyncio.to_thread(model_for_slot, slot_settings, settings, progress, warn)
                reporter.report(f"loading {path.name} with {slot_settings.engine} on {slot_settings.device}", 90)
                engine = create_engine(slot_settings, str(path), settings)
                slots.append(Slot(slot_settings.label(), engine))
            options = settings.scheduler
            scheduler = Scheduler(
                slots, stall_timeout_s=options.stall_timeout_s, retry_interval_s=options.retry_interval_s,
                chunk_tokens=options.chat_chunk_tokens, on_problem=reporter.warn)
            try:
                ready = await scheduler.wait_ready()
            except EngineError:
                scheduler.close()
                raise
        except (FetchError, ModelError, PrepareError, EngineError) as exc:
            reporter.end("aipc-lsp: no model")
            self.error = str(exc)
            reporter.error(f"aipc-lsp cannot serve completions: {exc}")
            raise ModelUnavailable(str(exc)) from exc
        except asyncio.CancelledError:
            reporter.end("aipc-lsp: settings changed")
            raise
        self._scheduler = scheduler
        reporter.end(f"aipc-lsp: {Path(ready.engine.model_path).name} ready on {ready.device}")
        return scheduler

    async def scheduler(self, configure_timeout: float = 30.0) -> Scheduler:
        """The ready scheduler, waiting for the model if it is still loading.
        Raises ModelUnavailable when preparation failed."""
        try:
            await asyncio.wait_for(self._configured.wait(), configure_timeout)
        except asyncio.TimeoutError:
            raise ModelUnavailable("the client never finished initialization (no `initialized`)") from None
        task = self._task
        try:
            return await asyncio.shield(task)
        except ModelUnavailable:
            raise
        except asyncio.CancelledError:
            if task.cancelled() and self._task is not task:
                return await self.scheduler()  # settings changed while we waited
            raise

    def current(self) -> Scheduler | None:
        return self._scheduler

    def close(self) -> None:
        if self._task is not None and not self._task.done() and not self._task.get_loop().is_closed():
            self._task.cancel()
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None
