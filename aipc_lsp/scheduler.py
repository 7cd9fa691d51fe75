"""Runs generation jobs on device slots: one live job per (document, kind), stale work dies.

Each slot owns one engine and one worker thread and runs one generation at a time. The
asyncio loop only routes: it submits work to a slot's thread and awaits it, so
`$/cancelRequest` and `didChange` are seen while a generation runs. Cancelling a job
sets its flag; the engine checks it between tokens, and the slot is released when the
thread actually returns, never earlier.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aipc_lsp.engines.base import Engine, EngineError, GenerationParams, GenerationResult, OnText

log = logging.getLogger(__name__)
_job_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    # (document uri, kind): a newer job with the same key supersedes this one.
    key: tuple[str, str]
    prompt: str
    params: GenerationParams
    version: int | None = None
    # Called in the slot's thread with each new piece; False stops generation.
    on_text: OnText | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    id: int = field(default_factory=lambda: next(_job_ids))
    superseded: bool = False
    created: float = field(default_factory=time.perf_counter)
    _abandoned: asyncio.Event | None = None

    def abandon(self, *, superseded: bool = False) -> None:
        """Stop the job: the engine stops within a decode step, its awaiter returns at once."""
        self.superseded = self.superseded or superseded
        self.cancel.set()
        if self._abandoned is not None:
            self._abandoned.set()


@dataclass
class SlotStats:
    served: int = 0
    cancelled: int = 0
    failed: int = 0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None

    def record(self, result: GenerationResult, alpha: float = 0.2) -> None:
        if result.first_token_s is not None:
            ttft = result.first_token_s * 1000
            self.ttft_ms = ttft if self.ttft_ms is None else (1 - alpha) * self.ttft_ms + alpha * ttft
        decode_s = result.total_s - (result.first_token_s or 0.0)
        if result.tokens > 1 and decode_s > 0:
            rate = (result.tokens - 1) / decode_s
            self.tokens_per_s = rate if self.tokens_per_s is None else (1 - alpha) * self.tokens_per_s + alpha * rate


class Slot:
    """One engine instance on one device, with its own worker thread."""

    def __init__(self, name: str, engine: Engine):
        self.name = name
        self.engine = engine
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"aipc-slot-{name}")
        self.stats = SlotStats()
        self.error: str | None = None
        self.busy_with: Job | None = None
        self._free = asyncio.Semaphore(1)
        self._loaded: asyncio.Future | None = None
        self.closed = False

    def load(self) -> asyncio.Future:
        """Start loading the engine in the slot's thread (once); await the result to wait for it."""
        if self._loaded is None:
            loop = asyncio.get_running_loop()
            self._loaded = asyncio.ensure_future(loop.run_in_executor(self.executor, self.engine.load))
            self._loaded.add_done_callback(self._on_loaded)
        return self._loaded

    def _on_loaded(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.error = str(future.exception())

    @property
    def ready(self) -> bool:
        return self._loaded is not None and self._loaded.done() and self.error is None

    def status(self) -> dict:
        state = "failed" if self.error else "ready" if self.ready else "loading"
        return {
            "slot": self.name,
            "engine": self.engine.name,
            "device": self.engine.device,
            "model": self.engine.model_path,
            "state": state,
            "error": self.error,
            "busy": self.busy_with is not None,
            "served": self.stats.served,
            "cancelled": self.stats.cancelled,
            "failed": self.stats.failed,
            "ttft_ms": self.stats.ttft_ms,
            "tokens_per_s": self.stats.tokens_per_s,
        }

    def close(self) -> None:
        if self.busy_with is not None:
            self.busy_with.abandon()
        if self.closed:
            return
        self.closed = True
        # Queued behind any generation still stopping, so the model is freed after it.
        self.executor.submit(self.engine.close)
        self.executor.shutdown(wait=False)


class Scheduler:
    def __init__(self, slots: list[Slot]):
        if not slots:
            raise ValueError("a scheduler needs at least one slot")
        self.slots = slots
        self._live: dict[tuple[str, str], Job] = {}
        self._closed = False

    def start(self) -> list[asyncio.Future]:
        return [slot.load() for slot in self.slots]

    async def wait_ready(self) -> Slot:
        """The first slot that loads; raises EngineError if every slot failed."""
        for slot in self.slots:
            try:
                await asyncio.shield(slot.load())
                return slot
            except EngineError:
                continue
            except Exception as exc:  # an engine bug must not take the server down
                slot.error = slot.error or str(exc)
        raise EngineError("; ".join(f"{s.name}: {s.error}" for s in self.slots))

    def live_jobs(self) -> list[Job]:
        return list(self._live.values())

    def cancel_key(self, key: tuple[str, str]) -> None:
        job = self._live.pop(key, None)
        if job is not None:
            job.abandon(superseded=True)

    def cancel_document(self, uri: str) -> None:
        for key in [k for k in self._live if k[0] == uri]:
            self.cancel_key(key)

    def close(self) -> None:
        self._closed = True
        for job in list(self._live.values()):
            job.abandon()
        self._live.clear()
        for slot in self.slots:
            slot.close()

    async def run(self, job: Job) -> GenerationResult:
        """Run `job` on a slot. A superseded job returns at once with `cancelled` set;
        an outer cancellation (the request was cancelled) stops the engine and re-raises."""
        if self._closed:
            return GenerationResult(cancelled=True)
        job._abandoned = asyncio.Event()
        previous = self._live.get(job.key)
        if previous is not None:
            previous.abandon(superseded=True)
        self._live[job.key] = job
        try:
            loaded, slot = await self._unless_abandoned(job, self.wait_ready())
            if not loaded:
                return GenerationResult(cancelled=True)
            if not await self._acquire(slot, job):
                slot.stats.cancelled += 1
                return GenerationResult(cancelled=True)
            return await self._generate(slot, job)
        except asyncio.CancelledError:
            job.abandon()
            raise
        finally:
            if self._live.get(job.key) is job:
                del self._live[job.key]

    @staticmethod
    async def _unless_abandoned(job: Job, awaitable) -> tuple[bool, object]:
        """Await `awaitable` unless the job is abandoned first: (finished, its result)."""
        task = asyncio.ensure_future(awaitable)
        abandoned = asyncio.ensure_future(job._abandoned.wait())
        try:
            await asyncio.wait({task, abandoned}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            abandoned.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        return False, None

    async def _acquire(self, slot: Slot, job: Job) -> bool:
        """Wait for the slot unless the job is abandoned first. True when acquired."""
        if job.cancel.is_set():
            return False
        acquire = asyncio.ensure_future(slot._free.acquire())
        abandoned = asyncio.ensure_future(job._abandoned.wait())
        try:
            await asyncio.wait({acquire, abandoned}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled from outside: give back a permit granted in the same instant.
            if acquire.done() and not acquire.cancelled():
                slot._free.release()
            else:
                acquire.cancel()
            raise
        finally:
            abandoned.cancel()
        if not acquire.done():
            acquire.cancel()  # the semaphore passes a permit granted meanwhile to the next waiter
            return False
        if job.cancel.is_set():
            slot._free.release()  # acquired in the same instant the job died
            return False
        return True

    async def _generate(self, slot: Slot, job: Job) -> GenerationResult:
        loop = asyncio.get_running_loop()
        queued_ms = (time.perf_counter() - job.created) * 1000
        slot.busy_with = job

        def work() -> GenerationResult:
            return slot.engine.generate(job.prompt, job.params, job.cancel, job.on_text)

        future = loop.run_in_executor(slot.executor, work)

        def finished(fut: asyncio.Future) -> None:
            # The slot is free only once the thread has really returned.
            slot.busy_with = None
            slot._free.release()
            if fut.cancelled() or fut.exception() is not None:
                slot.stats.failed += 1
                return
            result = fut.result()
            if result.cancelled:
                slot.stats.cancelled += 1
            else:
                slot.stats.served += 1
                slot.stats.record(result)
            log.info(
                "job %d %s slot=%s queued=%.0fms ttft=%s tokens=%d total=%.0fms outcome=%s",
                job.id, job.key[1], slot.name, queued_ms,
                f"{result.first_token_s * 1000:.0f}ms" if result.first_token_s is not None else "-",
                result.tokens, result.total_s * 1000,
                "cancelled" if result.cancelled else "stopped" if result.stopped_by_caller else "done",
            )

        future.add_done_callback(finished)
        abandoned = asyncio.ensure_future(job._abandoned.wait())
        try:
            await asyncio.wait({future, abandoned}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandoned.cancel()
        if not future.done():
            return GenerationResult(cancelled=True)  # superseded: answer now, the thread follows
        return future.result()
