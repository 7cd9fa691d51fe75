"""Runs generation jobs on device slots: accelerator first, CPU when it is busy, never stale.

Each slot owns one engine and one worker thread and runs one generation at a time. The
asyncio loop only routes: a dispatcher assigns pending jobs to slots whenever something
changes (a job arrives, a slot frees up, a slot's health changes), using each slot's measured
moving averages to estimate when a job would finish there. The rules are in docs/SCHEDULER.md.

Cancelling a job sets its flag; the engine checks it between tokens, and the slot is free
again only when the worker thread has really returned.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from aipc_lsp.engines.base import (CancelFlag, Engine, EngineError, GenerationParams, GenerationResult, OnText,
                                   RequestError)

log = logging.getLogger(__name__)
_job_ids = itertools.count(1)

# Until a slot has measured itself, estimates use these (a small model on a CPU).
PRIOR_TTFT_MS = 150.0
PRIOR_TOKENS_PER_S = 20.0
PRIOR_COMPLETION_TOKENS = 24.0
# The stall limit before a job's first token, in stall_timeout_s: the prompt's prefill comes first.
PREFILL_STALL_FACTOR = 3.0


class JobKind(str, enum.Enum):
    """What a job is for, which says how it is run (a str: it is the second half of a job's key)."""

    # A suggestion: what the user waits for while typing; runs first, on the slot that answers soonest.
    COMPLETION = "completion"
    # An inline chat answer: long, so it runs in chunks that completions can cut in between; prefers
    # the accelerator (slots are in preference order).
    CHAT = "chat"
    # Background work (warming a document's KV cache): runs only when nothing else waits, and is
    # stopped as soon as another job does (within the engine's step in flight; the prefix cache
    # keeps what it computed), unless that job's prompt begins with its prompt: it then waits for it.
    WARM = "warm"

    def __str__(self) -> str:  # its value in logs and messages (Python 3.10 has no StrEnum)
        return self.value

    @property
    def priority(self) -> int:
        """Lower runs first."""
        return _PRIORITY[self]

    @property
    def preemptible(self) -> bool:
        return self is JobKind.CHAT

    @property
    def yields(self) -> bool:
        return self is JobKind.WARM


_PRIORITY = {JobKind.COMPLETION: 0, JobKind.CHAT: 1, JobKind.WARM: 2}


@dataclass(eq=False)
class Job:
    """One generation a feature asks for. What the scheduler keeps while running it is its `_Run`."""

    # (document uri, kind): a newer job with the same key supersedes this one.
    key: tuple[str, JobKind]
    prompt: str
    params: GenerationParams
    version: int | None = None
    # Called in the slot's thread with each new piece; False stops generation.
    on_text: OnText | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    id: int = field(default_factory=lambda: next(_job_ids))
    superseded: bool = False
    created: float = field(default_factory=time.perf_counter)
    # The slot it runs on (aipc/status).
    slot_name: str | None = None
    # When the job was first told to stop (perf_counter): cancel -> slot free is timed from here.
    cancelled_at: float | None = None
    _run: "_Run | None" = field(default=None, repr=False)

    @property
    def kind(self) -> JobKind:
        return JobKind(self.key[1])

    @property
    def priority(self) -> int:
        return self.kind.priority

    @property
    def preemptible(self) -> bool:
        return self.kind.preemptible

    @property
    def yields(self) -> bool:
        return self.kind.yields

    def abandon(self, *, superseded: bool = False) -> None:
        """Stop the job: the engine stops within a decode step, its awaiter returns at once."""
        self.superseded = self.superseded or superseded
        if self.cancelled_at is None:
            self.cancelled_at = time.perf_counter()
        self.cancel.set()
        if self._run is not None:
            self._run.stop()


@dataclass(eq=False)
class _Run:
    """The scheduler's state of a job it runs (Scheduler.run made it)."""

    future: asyncio.Future
    # The cancel of the job's generation in flight; None once the watchdog wrote that one off.
    attempt: CancelFlag | None = None
    # Slots that failed this job: it is retried elsewhere.
    excluded: set = field(default_factory=set)
    # What its chunks have generated so far.
    result: GenerationResult = field(default_factory=GenerationResult)
    # Pieces of the generation in flight, and when the last one came (perf_counter).
    tokens_now: int = 0
    last_progress: float = 0.0

    def stop(self) -> None:
        if self.attempt is not None:
            self.attempt.set()
        future = self.future
        if not future.done() and not future.get_loop().is_closed():
            future.set_result(dataclasses.replace(self.result, cancelled=True))


@dataclass
class SlotStats:
    served: int = 0
    cancelled: int = 0
    failed: int = 0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    # The last cancels of a running job: ms from the cancel to the slot being free again.
    cancel_to_free_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=16))
    # When the slot last became free, on time.monotonic(): the system-wide clock, so a client on
    # the same machine can time its own cancel -> slot free without a status round trip in it.
    freed_at: float | None = None

    def record(self, result: GenerationResult, alpha: float = 0.2) -> None:
        if result.first_token_s is not None:
            ttft = result.first_token_s * 1000
            self.ttft_ms = ttft if self.ttft_ms is None else (1 - alpha) * self.ttft_ms + alpha * ttft
        decode_s = result.total_s - (result.first_token_s or 0.0)
        if result.tokens > 1 and decode_s > 0:
            rate = (result.tokens - 1) / decode_s
            self.tokens_per_s = rate if self.tokens_per_s is None else (1 - alpha) * self.tokens_per_s + alpha * rate


class Health(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    UNHEALTHY = "unhealthy"


class Slot:
    """One engine instance on one device, with its own worker thread."""

    def __init__(self, name: str, engine: Engine):
        self.name = name
        self.engine = engine
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"aipc-slot-{name}")
        self.stats = SlotStats()
        self.health = Health.LOADING
        self.error: str | None = None
        self.busy_with: Job | None = None
        self.loaded = False
        self.closed = False
        self._loading: asyncio.Future | None = None

    def load(self) -> asyncio.Future:
        """Start loading the engine in the slot's thread (once); await it to wait for it."""
        if self._loading is None:
            loop = asyncio.get_running_loop()
            self._loading = asyncio.ensure_future(loop.run_in_executor(self.executor, self.engine.load))
        return self._loading

    @property
    def ready(self) -> bool:
        return self.health is Health.READY

    @property
    def device(self) -> str:
        """Where the engine runs (as loaded: npu_library without an NPU runs on the CPU)."""
        return self.engine.info.device or self.engine.device

    def expected_ttft_ms(self) -> float:
        return self.stats.ttft_ms if self.stats.ttft_ms is not None else PRIOR_TTFT_MS

    def expected_tokens_per_s(self) -> float:
        return self.stats.tokens_per_s if self.stats.tokens_per_s else PRIOR_TOKENS_PER_S

    def service_ms(self, tokens: float) -> float:
        return self.expected_ttft_ms() + 1000 * tokens / self.expected_tokens_per_s()

    def status(self) -> dict:
        job = self.busy_with
        return {
            "slot": self.name,
            "engine": self.engine.name,
            "device": self.device,
            "model": self.engine.model_path,
            "state": self.health.value,
            "error": self.error,
            "busy": job is not None,
            "job": {"uri": job.key[0], "kind": job.kind, "id": job.id} if job else None,
            "served": self.stats.served,
            "cancelled": self.stats.cancelled,
            "failed": self.stats.failed,
            "ttft_ms": self.stats.ttft_ms,
            "tokens_per_s": self.stats.tokens_per_s,
            "cancel_to_free_ms": list(self.stats.cancel_to_free_ms),
            "freed_at": self.stats.freed_at,
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
    def __init__(
        self,
        slots: list[Slot],
        *,
        stall_timeout_s: float = 20.0,
        retry_interval_s: float = 60.0,
        chunk_tokens: int = 32,
        on_problem: Callable[[str], None] | None = None,
    ):
        if not slots:
            raise ValueError("a scheduler needs at least one slot")
        self.slots = slots
        self.stall_timeout_s = stall_timeout_s
        self.retry_interval_s = retry_interval_s
        self.chunk_tokens = chunk_tokens
        # Told once per slot failure (e.g. window/showMessage); the log always says why.
        self.on_problem = on_problem or (lambda message: None)
        # Never above 1: a key's next generation starts only after the previous one stopped.
        self.max_generations_per_key = 0
        self._live: dict[tuple[str, str], Job] = {}
        self._pending: list[Job] = []
        # Generations whose thread has not returned yet (and was not written off as stalled),
        # by attempt, and how many per job key.
        self._attempts: dict[threading.Event, tuple[str, str]] = {}
        self._running: dict[tuple[str, str], int] = {}
        self._completion_tokens = PRIOR_COMPLETION_TOKENS
        self._closed = False
        self._any_ready: asyncio.Event | None = None
        self._watchdog: asyncio.Task | None = None
        self._retries: set[asyncio.Task] = set()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Load every slot in the background; jobs are served as soon as one is ready."""
        self._any_ready = asyncio.Event()
        for slot in self.slots:
            slot.load().add_done_callback(lambda fut, slot=slot: self._loaded(slot, fut))
        self._watchdog = asyncio.ensure_future(self._watch())

    def _loaded(self, slot: Slot, future: asyncio.Future) -> None:
        if self._closed or slot.closed:
            return
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            self._mark_unhealthy(slot, f"failed to load: {error or 'cancelled'}")
        else:
            slot.loaded = True
            # Something the user should know although the slot works (e.g. no NPU: it runs on the CPU).
            if slot.engine.info.notice:
                self.on_problem(f"aipc-lsp: slot {slot.name}: {slot.engine.info.notice}")
            self._mark_ready(slot)

    def _mark_ready(self, slot: Slot) -> None:
        was = slot.health
        slot.health, slot.error = Health.READY, None
        if was is Health.UNHEALTHY:
            log.info("slot %s recovered", slot.name)
        if self._any_ready is not None:
            self._any_ready.set()
        self._dispatch()

    def _mark_unhealthy(self, slot: Slot, reason: str) -> None:
        if slot.health is Health.UNHEALTHY:
            return
        slot.health, slot.error = Health.UNHEALTHY, reason
        others = [s.name for s in self.slots if s is not slot and s.health is not Health.UNHEALTHY]
        message = f"aipc-lsp: slot {slot.name} ({slot.engine.name} on {slot.device}) {reason}"
        message += f"; using {', '.join(others)} meanwhile" if others else "; no other slot can serve"
        log.warning("%s", message)
        self.on_problem(message)
        task = asyncio.ensure_future(self._retry_later(slot))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)
        if self._any_ready is not None and not self._can_ever_serve():
            self._any_ready.set()  # wake waiters so they learn that nothing can serve
        self._dispatch()

    async def _retry_later(self, slot: Slot) -> None:
        """An unhealthy slot gets another chance in the background: load again if loading
        failed, otherwise a tiny probe generation once its thread is free."""
        delay = min(1.0, self.retry_interval_s)  # a transient fault heals fast; a hard one backs off
        while not self._closed and not slot.closed and slot.health is Health.UNHEALTHY:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_interval_s)
            if slot.busy_with is not None:
                continue  # its thread is still stuck in the stalled generation
            loop = asyncio.get_running_loop()
            probe = slot.engine.load if not slot.loaded else (
                lambda: slot.engine.generate("\n", GenerationParams(max_new_tokens=2), threading.Event()))
            try:
                await loop.run_in_executor(slot.executor, probe)
            except Exception as exc:
                log.info("slot %s still unhealthy: %s", slot.name, exc)
                continue
            if not self._closed and not slot.closed:
                slot.loaded = True
                self._mark_ready(slot)

    def _can_ever_serve(self) -> bool:
        return any(s.health is not Health.UNHEALTHY for s in self.slots)

    async def wait_ready(self) -> Slot:
        """The first ready slot; raises EngineError when no slot is healthy."""
        if self._any_ready is None:
            self.start()
        while True:
            ready = [s for s in self.slots if s.ready]
            if ready:
                return ready[0]
            if not self._can_ever_serve():
                raise EngineError("; ".join(f"{s.name}: {s.error}" for s in self.slots))
            self._any_ready.clear()
            await self._any_ready.wait()

    def close(self) -> None:
        self._closed = True
        for job in [*self._live.values(), *self._pending]:
            job.abandon()
        self._live.clear()
        self._pending.clear()
        for task in [self._watchdog, *self._retries]:
            if task is not None and not task.get_loop().is_closed():
                task.cancel()
        for slot in self.slots:
            slot.close()

    def prompt_limit(self) -> int | None:
        """The longest prompt every loaded, healthy slot accepts (prompts are built before
        routing), or None: each engine declares its own (`EngineInfo.max_prompt_tokens`)."""
        limits = [limit for slot in self.slots if slot.loaded and slot.health is not Health.UNHEALTHY
                  if (limit := slot.engine.info.max_prompt_tokens)]
        return min(limits) if limits else None

    def constrains_start(self) -> bool:
        """Whether every slot a completion may be routed to honours GenerationParams.start (prompts
        are built before routing, so one that does not would get a prompt missing its healed text)."""
        usable = [slot for slot in self.slots if slot.loaded and slot.health is not Health.UNHEALTHY]
        return bool(usable) and all(slot.engine.info.constrains_start for slot in usable)

    def keeps_prompt_cache(self) -> bool:
        """Whether a ready slot keeps a prompt's KV cache past its request (warming pays off there)."""
        return any(slot.engine.info.keeps_prompt_cache for slot in self.slots if slot.ready)

    # -- jobs -----------------------------------------------------------------------------------
    def live_jobs(self) -> list[Job]:
        return list(self._live.values())

    def cancel_key(self, key: tuple[str, str]) -> None:
        job = self._live.pop(key, None)
        if job is not None:
            job.abandon(superseded=True)
            self._dispatch()

    def cancel_document(self, uri: str) -> None:
        for key in [k for k in self._live if k[0] == uri]:
            self.cancel_key(key)

    async def run(self, job: Job) -> GenerationResult:
        """Run `job` on the best slot. A superseded job returns at once with `cancelled` set;
        an outer cancellation (the request was cancelled) stops the engine and re-raises.
        Raises EngineError when no slot can serve."""
        if self._closed:
            return GenerationResult(cancelled=True)
        if self._any_ready is None:
            self.start()
        previous = self._live.get(job.key)
        if previous is not None:
            previous.abandon(superseded=True)
        if not job.prompt:
            # Nothing to continue from (e.g. the document was emptied): no engine is asked, and
            # OpenVINO would fail on it as on a broken engine.
            return GenerationResult()
        self._live[job.key] = job
        job._run = _Run(asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._dispatch()
        try:
            result = await job._run.future
        except asyncio.CancelledError:
            job.abandon()
            raise
        finally:
            if self._live.get(job.key) is job:
                del self._live[job.key]
            if job in self._pending:
                self._pending.remove(job)
                self._dispatch()
        return result

    # -- routing --------------------------------------------------------------------------------
    def _expected_tokens(self, job: Job) -> float:
        if job.kind is JobKind.COMPLETION:
            return min(self._completion_tokens, job.params.max_new_tokens)
        return float(min(job.params.max_new_tokens, self.chunk_tokens if job.preemptible else job.params.max_new_tokens))

    def _remaining_ms(self, slot: Slot) -> float:
        job = slot.busy_with
        if job is None:
            return 0.0
        left = max(0.0, self._expected_tokens(job) - job._run.tokens_now)
        return (0.0 if job._run.tokens_now else slot.expected_ttft_ms()) + 1000 * left / slot.expected_tokens_per_s()

    def _dispatch(self) -> None:
        """Assign pending jobs to slots. A job waits for a busy slot only when it would still
        finish sooner there than on a free one (estimates from measured moving averages)."""
        if self._closed:
            return
        ready = [s for s in self.slots if s.ready and not s.closed]
        waiting = [j for j in self._pending if not j.yields and not j.cancel.is_set()]
        for slot in ready if waiting else ():
            background = slot.busy_with
            if background is None or not background.yields or background.cancel.is_set():
                continue
            if any(j.prompt.startswith(background.prompt) for j in waiting):
                continue  # it computes the start of a waiting prompt: stopped, that would compute it again
            log.debug("job %d gives way on slot %s", background.id, slot.name)
            background.abandon()
        wait = {s.name: self._remaining_ms(s) for s in ready}
        for job in sorted(self._pending, key=lambda j: (j.priority, j.created)):
            if job.cancel.is_set():
                self._pending.remove(job)
                continue
            if self._running.get(job.key):
                continue  # the key's previous generation is still stopping (one decode step)
            candidates = [s for s in ready if s.name not in job._run.excluded]
            if not candidates:
                if not any(s.health is Health.LOADING or (s.ready and s.name not in job._run.excluded) for s in self.slots):
                    self._pending.remove(job)
                    self._fail(job, EngineError("no healthy slot can serve: " + "; ".join(
                        f"{s.name}: {s.error or s.health.value}" for s in self.slots)))
                continue
            if job.kind is JobKind.CHAT:
                best = candidates[0]  # chat prefers the accelerator (slots are in preference order)
            else:
                tokens = self._expected_tokens(job)
                best = min(candidates, key=lambda s: wait[s.name] + s.service_ms(tokens))
            if best.busy_with is None and wait[best.name] == 0.0:
                self._pending.remove(job)
                self._start(job, best)
                wait[best.name] = self._remaining_ms(best)
            elif job.yields:
                continue  # background work never queues behind a busy slot
            else:
                wait[best.name] += best.service_ms(self._expected_tokens(job))

    def _fail(self, job: Job, error: Exception) -> None:
        if not job._run.future.done():
            job._run.future.set_exception(error)

    def _start(self, job: Job, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        job.slot_name = slot.name
        job._run.attempt = attempt = CancelFlag()  # an engine may pass a cancel on the moment it is set
        if job.cancel.is_set():
            attempt.set()
        job._run.tokens_now = 0
        job._run.last_progress = time.perf_counter()
        slot.busy_with = job
        self._attempts[attempt] = job.key
        self._running[job.key] = self._running.get(job.key, 0) + 1
        self.max_generations_per_key = max(self.max_generations_per_key, self._running[job.key])
        params = job.params
        if job.preemptible:
            left = params.max_new_tokens - job._run.result.tokens
            params = dataclasses.replace(params, max_new_tokens=max(1, min(self.chunk_tokens, left)))
        prompt = job.prompt + job._run.result.text  # a resumed chunk continues the text so far

        def on_text(piece: str) -> bool:
            job._run.tokens_now += 1
            job._run.last_progress = time.perf_counter()
            return job.on_text(piece) if job.on_text is not None else True

        def work() -> GenerationResult:
            return slot.engine.generate(prompt, params, attempt, on_text)

        started = time.perf_counter()
        future = loop.run_in_executor(slot.executor, work)
        future.add_done_callback(lambda fut: self._finished(job, slot, attempt, params, started, fut))

    def _finished(self, job: Job, slot: Slot, attempt: threading.Event, params: GenerationParams,
                  started: float, future: asyncio.Future) -> None:
        # The slot is free only once the thread has really returned.
        if slot.busy_with is job:
            slot.busy_with = None
            slot.stats.freed_at = time.monotonic()
        if job.cancelled_at is not None and job.cancelled_at >= started and job._run.attempt is attempt:
            slot.stats.cancel_to_free_ms.append(round((time.perf_counter() - job.cancelled_at) * 1000, 2))
        self._forget_attempt(attempt)
        stale = job._run.attempt is not attempt  # the watchdog moved the job elsewhere
        error = None if future.cancelled() else future.exception()
        if isinstance(error, RequestError):
            # The request, not the slot: the job fails with the engine's word on what to change.
            slot.stats.failed += 1
            log.warning("job %d on slot %s cannot run: %s", job.id, slot.name, error)
            if not stale:
                self._fail(job, error)
        elif error is not None:
            slot.stats.failed += 1
            log.warning("job %d on slot %s failed: %s", job.id, slot.name, error)
            self._mark_unhealthy(slot, f"failed while generating: {error}")
            if not stale and not job.cancel.is_set():
                job._run.excluded.add(slot.name)
                self._pending.append(job)  # retried on the next slot
        elif not stale:
            self._account(job, slot, future.result(), params, started)
        self._dispatch()
        if error is None and not future.cancelled() and not future.result().cancelled:
            self._settle_if_idle(slot)

    @staticmethod
    def _settle_if_idle(slot: Slot) -> None:
        """An answer is out and the slot has nothing to do: the engine prepares for the next
        request (Engine.settle), in the slot's thread (an engine in a worker process is told, and
        the worker settles it). A job dispatched meanwhile queues behind the step in flight, and
        the rest is skipped. Not after a cancel: the next request is on its way."""
        if slot.busy_with is not None or slot.closed or not slot.ready:
            return
        settle = slot.engine.settle

        def settled(done) -> None:
            if done.exception() is not None:  # the next request meets the engine's trouble, and says it
                log.warning("slot %s could not settle: %s", slot.name, done.exception())

        slot.executor.submit(settle, busy=lambda: slot.busy_with is not None).add_done_callback(settled)

    def _forget_attempt(self, attempt: threading.Event) -> None:
        key = self._attempts.pop(attempt, None)
        if key is not None:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]

    def _account(self, job: Job, slot: Slot, chunk: GenerationResult, params: GenerationParams, started: float) -> None:
        total = job._run.result
        if chunk.first_token_s is not None and total.first_token_s is None:
            total.first_token_s = started - job.created + chunk.first_token_s
        total.text += chunk.text
        total.tokens += chunk.tokens
        total.total_s = time.perf_counter() - job.created
        total.stopped_by_caller = chunk.stopped_by_caller
        if chunk.cancelled or job.cancel.is_set():
            slot.stats.cancelled += 1
            outcome = "cancelled"
            total.cancelled = True
        else:
            slot.stats.served += 1
            if not job.yields:  # a warm-up's cold prefill says nothing about answering keystrokes
                slot.stats.record(chunk)
            outcome = "stopped" if chunk.stopped_by_caller else "done"
        log.info(
            "job %d %s slot=%s queued=%.0fms ttft=%s tokens=%d total=%.0fms outcome=%s",
            job.id, job.kind, slot.name, (started - job.created) * 1000,
            f"{total.first_token_s * 1000:.0f}ms" if total.first_token_s is not None else "-",
            total.tokens, total.total_s * 1000, outcome,
        )
        more = (job.preemptible and outcome == "done" and chunk.tokens >= params.max_new_tokens
                and total.tokens < job.params.max_new_tokens)
        if more:
            # Next chunk: right away, unless a more urgent job wants a slot.
            self._pending.append(job)
            return
        if job.kind is JobKind.COMPLETION and outcome != "cancelled":
            self._completion_tokens = 0.8 * self._completion_tokens + 0.2 * max(1, total.tokens)
        if not job._run.future.done():
            job._run.future.set_result(total)

    async def _watch(self) -> None:
        """A slot whose generation makes no progress for `stall_timeout_s` is unhealthy; its
        job moves to the next slot."""
        while not self._closed:
            await asyncio.sleep(min(0.5, self.stall_timeout_s / 4))
            now = time.perf_counter()
            for slot in self.slots:
                job = slot.busy_with
                # Before its first token a job is prefilling its prompt: a code model's cold 1.5k-token
                # prompt took over 20 s on 2 busy cores (measured with the eval), so that gets longer.
                limit = self.stall_timeout_s * (PREFILL_STALL_FACTOR if job is not None and not job._run.tokens_now else 1)
                if (job is None or job.cancel.is_set() or job.slot_name != slot.name
                        or now - job._run.last_progress < limit):
                    continue
                log.warning("job %d: no token from slot %s for %.1fs", job.id, slot.name, now - job._run.last_progress)
                if job._run.attempt is not None:
                    job._run.attempt.set()
                    self._forget_attempt(job._run.attempt)
                job._run.attempt = None  # whatever that thread returns now is ignored
                job._run.excluded.add(slot.name)
                self._pending.append(job)
                self._mark_unhealthy(slot, f"produced no token for {limit:.0f}s")
                slot.engine.abort()  # a worker process stuck in a native call is killed; the retry reloads it
