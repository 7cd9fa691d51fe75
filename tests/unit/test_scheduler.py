"""Tests for aipc_lsp.scheduler: superseding, queueing, cancellation, failures, stats.

The engine is `FakeEngine`, which decodes a scripted output with a small per-token sleep
in the slot's worker thread, so the timing relations (a superseded job returns before
its output could have been decoded; the engine stops within about one token) are real.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from aipc_lsp.engines.base import EngineError, GenerationParams, GenerationResult, RequestError
from aipc_lsp.scheduler import Job, Scheduler, Slot, SlotStats

from fake_engine import FakeEngine, tokenize

DELAY = 0.02  # seconds per fake token
LONG = " ".join(f"w{i}" for i in range(40))  # 40 tokens: 0.8 s at DELAY
SHORT = "return a + b"
# An engine told to stop stops long before its output's end (counted in tokens, not timed).
STOPPED_EARLY = len(tokenize(LONG)) // 2
URI_A = "file:///project/a.py"
URI_B = "file:///project/b.py"
COMPLETION = "completion"


def job(uri: str = URI_A, kind: str = COMPLETION, prompt: str = "def f():\n    ", **kw) -> Job:
    return Job(key=(uri, kind), prompt=prompt, params=kw.pop("params", GenerationParams(max_new_tokens=256)), **kw)


async def until(condition, timeout: float = 1.0, what: str = "condition") -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def queued_behind(scheduler: Scheduler, waiting: Job) -> None:
    """Wait until `waiting` is one of the scheduler's live jobs (its task ran up to the queue)."""
    await until(lambda: any(j is waiting for j in scheduler.live_jobs()), what="the job to be queued")


async def started(engine: FakeEngine, n: int = 1) -> None:
    """Wait until the engine has produced a token for its n-th generate call."""
    await until(lambda: len(engine.calls) >= n and engine.calls[n - 1].tokens >= 1,
                what=f"generate call {n} to start decoding")


@pytest.fixture
async def make_scheduler():
    created: list[Scheduler] = []

    def make(*engines: FakeEngine, names: tuple[str, ...] | None = None, **options) -> Scheduler:
        names = names or tuple(f"slot{i}" for i in range(len(engines)))
        scheduler = Scheduler([Slot(name, engine) for name, engine in zip(names, engines)], **options)
        created.append(scheduler)
        return scheduler

    yield make
    for scheduler in created:
        scheduler.close()
        for slot in scheduler.slots:
            slot.executor.shutdown(wait=True)  # no stray worker thread outlives its test


def by_prompt(mapping: dict[str, str], default: str = LONG):
    return lambda prompt: mapping.get(prompt, default)


# --- the fake engine itself ---------------------------------------------------------------


def test_fake_engine_tokenizes_like_bpe():
    assert tokenize("    return x\n") == ["    return", " x", "\n"]
    assert "".join(tokenize(LONG)) == LONG
    assert len(tokenize(LONG)) == 40


def test_fake_engine_stops_on_cancel_and_on_text_false():
    engine = FakeEngine(output=LONG, token_delay=0.001)
    engine.load()
    seen: list[str] = []
    result = engine.generate("p", GenerationParams(max_new_tokens=100), threading.Event(),
                             lambda piece: seen.append(piece) or len(seen) < 3)
    assert result.stopped_by_caller and result.tokens == 3 and result.text == "w0 w1 w2"
    cancel = threading.Event()
    cancel.set()
    result = engine.generate("p", GenerationParams(), cancel)
    assert result.cancelled and result.tokens == 0
    assert engine.prompts == ["p", "p"] and engine.max_concurrent == 1


# --- superseding ----------------------------------------------------------------------------


async def test_newer_job_same_key_supersedes_running_one(make_scheduler):
    engine = FakeEngine(output=by_prompt({"second": SHORT}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    first, second = job(prompt="first"), job(prompt="second")

    task1 = asyncio.create_task(scheduler.run(first))
    await started(engine)
    task2 = asyncio.create_task(scheduler.run(second))

    result1 = await task1
    assert result1.cancelled and result1.text == ""
    assert first.superseded and first.cancel.is_set()

    result2 = await asyncio.wait_for(task2, 2.0)
    assert not result2.cancelled
    assert result2.text == SHORT and result2.tokens == len(tokenize(SHORT))

    call1, call2 = engine.calls
    assert call1.prompt == "first" and call2.prompt == "second"
    # The first generation noticed the cancel flag and stopped long before its end.
    assert call1.saw_cancel_at is not None
    assert call1.result.cancelled and call1.tokens < STOPPED_EARLY
    # The second only started once the first thread really returned.
    assert call2.started >= call1.ended
    assert engine.max_concurrent == 1
    assert scheduler.live_jobs() == []
    stats = scheduler.slots[0].stats
    assert (stats.served, stats.cancelled, stats.failed) == (1, 1, 0)
    # The cancel was timed to the slot being free (the server's clock), and when it was freed is
    # on the system-wide monotonic clock a client compares with its own.
    assert len(stats.cancel_to_free_ms) == 1 and 0 <= stats.cancel_to_free_ms[0] < 1000
    freed_at = scheduler.slots[0].status()["freed_at"]
    assert time.monotonic() - 1.0 <= freed_at <= time.monotonic()


async def test_an_empty_prompt_supersedes_the_running_job_and_never_reaches_an_engine(make_scheduler):
    engine = FakeEngine(output=by_prompt({"first": LONG}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    first = job(prompt="first")
    task1 = asyncio.create_task(scheduler.run(first))
    await started(engine)
    emptied = await asyncio.wait_for(scheduler.run(job(prompt="")), 1.0)  # the document was emptied
    assert emptied.text == "" and not emptied.cancelled and emptied.tokens == 0
    assert (await asyncio.wait_for(task1, 1.0)).cancelled and first.superseded
    assert [call.prompt for call in engine.calls] == ["first"]
    assert scheduler.slots[0].stats.failed == 0 and scheduler.live_jobs() == []


async def test_superseding_a_waiting_job_keeps_it_from_the_engine(make_scheduler):
    engine = FakeEngine(output=by_prompt({"running": "x y z", "fresh": SHORT}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    running = job(URI_A, prompt="running")
    waiting = job(URI_B, prompt="stale")
    newest = job(URI_B, prompt="fresh")

    t_running = asyncio.create_task(scheduler.run(running))
    await started(engine)
    t_waiting = asyncio.create_task(scheduler.run(waiting))
    await queued_behind(scheduler, waiting)
    t_newest = asyncio.create_task(scheduler.run(newest))

    stale = await t_waiting
    assert stale.cancelled and waiting.superseded
    assert not (await asyncio.wait_for(t_running, 2.0)).cancelled
    assert (await asyncio.wait_for(t_newest, 2.0)).text == SHORT
    assert engine.prompts == ["running", "fresh"]
    assert engine.max_concurrent == 1


# --- queueing ------------------------------------------------------------------------------


async def test_different_keys_queue_on_one_slot_and_both_complete(make_scheduler):
    engine = FakeEngine(output=by_prompt({"a": "alpha beta gamma", "b": "one two three four"}),
                        token_delay=DELAY)
    scheduler = make_scheduler(engine)
    job_a, job_b = job(URI_A, prompt="a"), job(URI_B, prompt="b")

    results = await asyncio.wait_for(
        asyncio.gather(scheduler.run(job_a), scheduler.run(job_b)), 2.0)

    assert [r.text for r in results] == ["alpha beta gamma", "one two three four"]
    assert not any(r.cancelled for r in results)
    assert engine.max_concurrent == 1
    first, second = sorted(engine.calls, key=lambda c: c.started)
    assert second.started >= first.ended  # never overlapping
    assert scheduler.slots[0].stats.served == 2
    assert scheduler.slots[0].busy_with is None


async def test_same_uri_different_kind_does_not_supersede(make_scheduler):
    engine = FakeEngine(output="ok done", token_delay=DELAY)
    scheduler = make_scheduler(engine)
    results = await asyncio.wait_for(asyncio.gather(
        scheduler.run(job(URI_A, COMPLETION, prompt="c")),
        scheduler.run(job(URI_A, "chat", prompt="q"))), 2.0)
    assert [r.cancelled for r in results] == [False, False]
    assert sorted(engine.prompts) == ["c", "q"]


async def test_on_text_false_stops_generation_early(make_scheduler):
    engine = FakeEngine(output=LONG, token_delay=0.005)
    scheduler = make_scheduler(engine)
    pieces: list[str] = []
    seen_in = set()

    def on_text(piece: str) -> bool:
        seen_in.add(threading.current_thread().name)
        pieces.append(piece)
        return len(pieces) < 4

    result = await asyncio.wait_for(scheduler.run(job(on_text=on_text)), 1.0)
    assert result.stopped_by_caller and not result.cancelled
    assert result.text == "w0 w1 w2 w3" and pieces == ["w0", " w1", " w2", " w3"]
    # on_text runs in the slot's worker thread, not on the event loop.
    assert all(name.startswith("aipc-slot-slot0") for name in seen_in)
    assert scheduler.slots[0].stats.served == 1


# --- cancellation ----------------------------------------------------------------------------


async def test_outer_cancellation_reraises_stops_engine_and_frees_slot(make_scheduler):
    engine = FakeEngine(output=by_prompt({"next": SHORT}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    doomed = job(prompt="doomed")

    task = asyncio.create_task(scheduler.run(doomed))
    await started(engine)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert doomed.cancel.is_set() and not doomed.superseded
    assert scheduler.live_jobs() == []

    # The slot is freed once the worker thread returns, and the next job runs normally.
    result = await asyncio.wait_for(scheduler.run(job(prompt="next")), 1.0)
    assert result.text == SHORT and not result.cancelled
    call1 = engine.calls[0]
    assert call1.result.cancelled and call1.tokens < STOPPED_EARLY
    assert engine.calls[1].started >= call1.ended
    stats = scheduler.slots[0].stats
    assert (stats.served, stats.cancelled, stats.failed) == (1, 1, 0)


async def test_outer_cancellation_while_waiting_for_slot_never_reaches_engine(make_scheduler):
    engine = FakeEngine(output=by_prompt({"busy": "a b c d", "after": SHORT}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    t_busy = asyncio.create_task(scheduler.run(job(URI_A, prompt="busy")))
    await started(engine)
    queued = job(URI_B, prompt="queued")
    t_queued = asyncio.create_task(scheduler.run(queued))
    await queued_behind(scheduler, queued)
    t_queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t_queued
    assert queued.cancel.is_set()
    assert (await asyncio.wait_for(t_busy, 1.0)).text == "a b c d"
    # The semaphore is intact: a later job still gets the slot.
    assert (await asyncio.wait_for(scheduler.run(job(URI_B, prompt="after")), 2.0)).text == SHORT
    assert engine.prompts == ["busy", "after"]


async def test_cancel_key_abandons_waiting_job_before_engine(make_scheduler):
    engine = FakeEngine(output=by_prompt({"busy": "a b c d"}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    t_busy = asyncio.create_task(scheduler.run(job(URI_A, prompt="busy")))
    await started(engine)
    queued = job(URI_B, prompt="queued")
    t_queued = asyncio.create_task(scheduler.run(queued))
    await queued_behind(scheduler, queued)
    assert {j.prompt for j in scheduler.live_jobs()} == {"busy", "queued"}

    scheduler.cancel_key((URI_B, COMPLETION))
    result = await t_queued
    assert result.cancelled
    assert (await asyncio.wait_for(t_busy, 1.0)).text == "a b c d"
    assert engine.prompts == ["busy"]
    stats = scheduler.slots[0].stats
    assert (stats.served, stats.cancelled) == (1, 0)  # the abandoned job never reached a slot
    scheduler.cancel_key(("file:///nothing.py", COMPLETION))  # unknown key: no error


async def test_cancel_document_cancels_all_kinds_of_that_document_only(make_scheduler):
    engine = FakeEngine(output=by_prompt({"other": "fine"}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    running = job(URI_A, COMPLETION, prompt="a-completion")
    waiting = job(URI_A, "chat", prompt="a-chat")
    other = job(URI_B, COMPLETION, prompt="other")

    t_running = asyncio.create_task(scheduler.run(running))
    await started(engine)
    t_waiting = asyncio.create_task(scheduler.run(waiting))
    t_other = asyncio.create_task(scheduler.run(other))
    await queued_behind(scheduler, waiting)
    await queued_behind(scheduler, other)

    scheduler.cancel_document(URI_A)
    r_running, r_waiting = await asyncio.gather(t_running, t_waiting)
    assert r_running.cancelled and r_waiting.cancelled
    await until(lambda: engine.calls[0].ended is not None, what="the engine to stop")
    assert engine.calls[0].result.cancelled and engine.calls[0].tokens < STOPPED_EARLY
    assert (await asyncio.wait_for(t_other, 1.0)).text == "fine"
    assert engine.prompts == ["a-completion", "other"]
    assert scheduler.live_jobs() == []


async def test_close_stops_everything(make_scheduler):
    engine = FakeEngine(output=LONG, token_delay=DELAY)
    scheduler = make_scheduler(engine)
    running, waiting = job(URI_A, prompt="running"), job(URI_B, prompt="waiting")
    t_running = asyncio.create_task(scheduler.run(running))
    await started(engine)
    t_waiting = asyncio.create_task(scheduler.run(waiting))
    await queued_behind(scheduler, waiting)

    scheduler.close()
    results = await asyncio.gather(t_running, t_waiting)
    assert all(r.cancelled for r in results)
    assert running.cancel.is_set() and waiting.cancel.is_set()
    await until(lambda: engine.active == 0, what="the engine to stop")
    assert engine.calls[0].result.cancelled and engine.calls[0].tokens < STOPPED_EARLY
    assert engine.prompts == ["running"]
    assert scheduler.live_jobs() == []

    # After close, run answers at once without touching the engine.
    late = await scheduler.run(job(prompt="late"))
    assert late.cancelled and engine.prompts == ["running"]


def test_scheduler_needs_a_slot():
    with pytest.raises(ValueError):
        Scheduler([])


# --- failures --------------------------------------------------------------------------------


async def test_load_failure_makes_wait_ready_raise_naming_the_slot(make_scheduler):
    engine = FakeEngine(fail_on_load=EngineError("cannot compile model for NPU"))
    scheduler = make_scheduler(engine, names=("openvino-npu",))
    with pytest.raises(EngineError) as info:
        await asyncio.wait_for(scheduler.wait_ready(), 1.0)
    assert "openvino-npu" in str(info.value)
    assert "cannot compile model for NPU" in str(info.value)
    slot = scheduler.slots[0]
    assert slot.status()["state"] == "unhealthy" and not slot.ready
    assert "cannot compile" in slot.status()["error"]

    # A job on a scheduler with no working slot fails the same way and is not kept live.
    with pytest.raises(EngineError, match="openvino-npu"):
        await asyncio.wait_for(scheduler.run(job()), 1.0)
    assert scheduler.live_jobs() == [] and engine.calls == []
    assert engine.load_calls == 1  # loading is attempted once, not per job


async def test_engine_bug_during_load_is_reported_as_engine_error(make_scheduler):
    engine = FakeEngine(fail_on_load=RuntimeError("segfault-ish"))
    scheduler = make_scheduler(engine, names=("cpu",))
    with pytest.raises(EngineError, match="cpu: failed to load: segfault-ish"):
        await asyncio.wait_for(scheduler.wait_ready(), 1.0)


async def test_wait_ready_falls_back_to_the_next_slot(make_scheduler):
    broken = FakeEngine(fail_on_load=EngineError("no NPU"))
    working = FakeEngine(output="fine")
    scheduler = make_scheduler(broken, working, names=("npu", "cpu"))
    slot = await asyncio.wait_for(scheduler.wait_ready(), 1.0)
    assert slot.name == "cpu" and slot.ready
    assert scheduler.slots[0].status()["state"] == "unhealthy"
    assert (await asyncio.wait_for(scheduler.run(job()), 1.0)).text == "fine"
    assert broken.calls == [] and len(working.calls) == 1


async def test_a_request_error_fails_the_job_and_leaves_the_slot_healthy(make_scheduler):
    engine = FakeEngine(output="a b", fail_after_tokens=0,
                        fail_with=RequestError("the prompt is 4000 tokens, more than the KV cache leaves room for"))
    scheduler = make_scheduler(engine, retry_interval_s=0.05)
    with pytest.raises(RequestError, match="more than the KV cache"):
        await asyncio.wait_for(scheduler.run(job(prompt="long")), 1.0)
    slot = scheduler.slots[0]
    assert slot.busy_with is None and slot.ready and slot.status()["state"] == "ready"
    assert (slot.stats.served, slot.stats.failed) == (0, 1) and scheduler.live_jobs() == []
    assert len(engine.calls) == 1  # not retried: no slot could do better with the same request
    engine.fail_after_tokens = None
    assert (await asyncio.wait_for(scheduler.run(job(prompt="short")), 1.0)).text == "a b"


async def test_generation_error_propagates_and_frees_slot(make_scheduler):
    engine = FakeEngine(output="a b c d e", token_delay=0.005, fail_after_tokens=2,
                        fail_with=EngineError("GPU device lost"))
    scheduler = make_scheduler(engine, retry_interval_s=0.05)
    with pytest.raises(EngineError, match="GPU device lost"):
        await asyncio.wait_for(scheduler.run(job(prompt="bad")), 1.0)
    slot = scheduler.slots[0]
    assert slot.busy_with is None and slot.status()["state"] == "unhealthy"
    assert (slot.stats.served, slot.stats.failed) == (0, 1)
    assert scheduler.live_jobs() == []

    # The slot is probed in the background and serves again once it works.
    engine.fail_after_tokens = None
    await until(lambda: slot.ready, what="the slot to recover")
    result = await asyncio.wait_for(scheduler.run(job(prompt="good")), 1.0)
    assert result.text == "a b c d e"
    assert (slot.stats.served, slot.stats.failed) == (1, 1)


# --- stats -----------------------------------------------------------------------------------


async def test_stats_track_served_cancelled_and_timings(make_scheduler):
    engine = FakeEngine(output=by_prompt({"1": "a b c", "2": "d e f"}), token_delay=0.01)
    scheduler = make_scheduler(engine, names=("cpu",))
    slot = scheduler.slots[0]
    assert slot.status()["state"] in ("loading",) and slot.stats.ttft_ms is None

    await asyncio.wait_for(scheduler.run(job(prompt="1")), 1.0)
    assert slot.stats.served == 1
    ttft_first = slot.stats.ttft_ms
    assert ttft_first is not None and 5 <= ttft_first < 200
    assert slot.stats.tokens_per_s is not None and 10 < slot.stats.tokens_per_s < 150

    await asyncio.wait_for(scheduler.run(job(prompt="2")), 1.0)
    # A superseded one counts as cancelled, not served.
    t = asyncio.create_task(scheduler.run(job(prompt="3")))
    await started(engine, 3)
    await asyncio.wait_for(scheduler.run(job(prompt="1")), 1.0)
    assert (await t).cancelled

    status = slot.status()
    assert status["slot"] == "cpu" and status["engine"] == "fake" and status["device"] == "CPU"
    assert status["model"] == "/models/fake" and status["state"] == "ready" and not status["busy"]
    assert (status["served"], status["cancelled"], status["failed"]) == (3, 1, 0)
    assert status["ttft_ms"] is not None and status["tokens_per_s"] is not None


def test_slot_stats_moving_average():
    stats = SlotStats()
    stats.record(GenerationResult(tokens=11, first_token_s=0.100, total_s=0.600))
    assert stats.ttft_ms == pytest.approx(100.0)
    assert stats.tokens_per_s == pytest.approx(20.0)  # 10 tokens after the first in 0.5 s
    stats.record(GenerationResult(tokens=11, first_token_s=0.200, total_s=0.450))
    assert stats.ttft_ms == pytest.approx(0.8 * 100 + 0.2 * 200)
    assert stats.tokens_per_s == pytest.approx(0.8 * 20 + 0.2 * 40)
    # No token at all: nothing to average.
    stats.record(GenerationResult(tokens=0, first_token_s=None, total_s=0.01))
    assert stats.ttft_ms == pytest.approx(120.0) and stats.tokens_per_s == pytest.approx(24.0)


# --- races found in review (fixed) -------------------------------------------------------------


async def test_job_superseded_while_model_loads_returns_at_once(make_scheduler):
    gate = threading.Event()
    engine = FakeEngine(output="ok", load_gate=gate)
    scheduler = make_scheduler(engine)
    first, second = job(prompt="first"), job(prompt="second")
    t1 = asyncio.create_task(scheduler.run(first))
    await queued_behind(scheduler, first)
    t2 = asyncio.create_task(scheduler.run(second))
    try:
        # The model is still loading (its gate is shut): returning at all is not waiting for it.
        done, _ = await asyncio.wait({t1}, timeout=30)
        assert t1 in done, "superseded job still waiting for the model to load"
        assert t1.result().cancelled
    finally:
        gate.set()
        await asyncio.wait_for(asyncio.gather(t1, t2), 2.0)


async def test_cancel_right_after_dispatch_does_not_leak_the_slot(make_scheduler):
    engine = FakeEngine(output="a b c", token_delay=0.01)
    scheduler = make_scheduler(engine)
    slot = scheduler.slots[0]
    t_busy = asyncio.create_task(scheduler.run(job(URI_A, prompt="busy")))
    await started(engine)
    # Queued behind "busy", then cancelled (a $/cancelRequest) in the same loop turn in
    # which "busy" finishes and the dispatcher hands the slot over.
    queued = asyncio.create_task(scheduler.run(job(URI_B, prompt="queued")))
    await asyncio.sleep(0)
    await asyncio.wait_for(t_busy, 1.0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(queued, 1.0)
    await until(lambda: slot.busy_with is None, what="the slot to be free")
    assert engine.prompts[0] == "busy"
    result = await asyncio.wait_for(scheduler.run(job(URI_B, prompt="after")), 30)  # a leaked slot: never
    assert result.text == "a b c"


# --- background work that yields (warming a document's KV cache) ---------------------------


async def test_a_yielding_job_gives_way_to_a_completion_within_a_step(make_scheduler):
    engine = FakeEngine(output=by_prompt({"warm": LONG, "c": SHORT}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    warm = asyncio.ensure_future(scheduler.run(job("", "warm", prompt="warm")))
    await started(engine)
    result = await asyncio.wait_for(scheduler.run(job(URI_A, prompt="c")), 2.0)
    assert result.text == SHORT and not result.cancelled
    assert (await warm).cancelled
    warm_call, completion_call = engine.calls
    assert completion_call.started >= warm_call.ended  # never two generations at once
    assert warm_call.tokens < STOPPED_EARLY  # stopped for the completion, not finished first
    # Its cold prefill says nothing about answering keystrokes: not in the slot's averages.
    assert scheduler.slots[0].stats.served == 1 and scheduler.slots[0].stats.cancelled == 1


async def test_a_yielding_job_computing_the_start_of_a_waiting_prompt_finishes_first(make_scheduler):
    # Stopped, its work would only be done again for the completion, which extends its prompt.
    engine = FakeEngine(output=by_prompt({"def f": "w1 w2 w3 w4", "def f(x": SHORT}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    warm = asyncio.ensure_future(scheduler.run(job("", "warm", prompt="def f")))
    await started(engine)
    result = await asyncio.wait_for(scheduler.run(job(URI_A, prompt="def f(x")), 2.0)
    warmed = await warm
    assert not warmed.cancelled and warmed.text == "w1 w2 w3 w4" and result.text == SHORT
    assert engine.calls[1].started >= engine.calls[0].ended


async def test_a_yielding_job_waits_for_an_idle_slot_and_never_delays_other_work(make_scheduler):
    engine = FakeEngine(output=by_prompt({"warm": "w1 w2", "chat": LONG}), token_delay=DELAY)
    scheduler = make_scheduler(engine)
    # One long job (a completion: a chat job would run in chunks, each served on its own).
    chat = asyncio.ensure_future(scheduler.run(job(URI_A, COMPLETION, prompt="chat")))
    await started(engine)
    warm = asyncio.ensure_future(scheduler.run(job("", "warm", prompt="warm")))
    assert not (await chat).cancelled  # the work it would have cut into was not stopped
    warmed = await asyncio.wait_for(warm, 2.0)
    assert warmed.text == "w1 w2" and not warmed.cancelled  # then it ran, the slot being idle
    assert engine.calls[1].started >= engine.calls[0].ended
    assert scheduler.slots[0].stats.served == 2


async def test_a_newer_warm_up_supersedes_the_previous_one(make_scheduler):
    engine = FakeEngine(output=LONG, token_delay=DELAY)
    scheduler = make_scheduler(engine)
    first = asyncio.ensure_future(scheduler.run(job("", "warm", prompt="a")))
    await started(engine)
    second = await asyncio.wait_for(scheduler.run(job("", "warm", prompt="b", params=GenerationParams(max_new_tokens=1))),
                                    2.0)
    assert (await first).cancelled and not second.cancelled
    assert engine.prompts == ["a", "b"]


# --- settling an in-process engine while its slot idles ------------------------------------


class SettlingEngine(FakeEngine):
    """Records each `settle` and what `busy` said then."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.settled: list[bool] = []

    def settle(self, busy) -> None:
        time.sleep(DELAY)
        self.settled.append(busy())


async def test_an_in_process_engine_settles_after_an_answer_but_not_after_a_cancel(make_scheduler):
    engine = SettlingEngine(output=SHORT, token_delay=DELAY)
    scheduler = make_scheduler(engine)
    assert not (await scheduler.run(job(prompt="first"))).cancelled
    await until(lambda: engine.settled == [False], what="settled, nothing waiting")
    running = asyncio.ensure_future(scheduler.run(job(prompt="second", params=GenerationParams(max_new_tokens=100))))
    await started(engine, 2)
    scheduler.cancel_key(running_key := (URI_A, COMPLETION))
    assert (await running).cancelled, running_key
    assert not (await scheduler.run(job(prompt="third"))).cancelled
    await until(lambda: len(engine.settled) >= 2, what="settled after the third")
    # After the first and the third answers only: after a cancel the user moved on, the next request is coming.
    assert engine.settled == [False, False]


async def test_a_job_that_comes_while_the_engine_settles_is_seen_as_busy(make_scheduler):
    engine = SettlingEngine(output=SHORT, token_delay=DELAY)
    scheduler = make_scheduler(engine)
    await scheduler.run(job(prompt="first"))
    second = await asyncio.wait_for(scheduler.run(job(prompt="second")), 2.0)  # queued behind settling
    assert not second.cancelled
    await until(lambda: len(engine.settled) == 2, what="both settled")
    assert engine.settled[0] is True  # the engine was told, and could skip what was left
