"""The multi-slot rules of docs/SCHEDULER.md, with scripted fake engines."""

from __future__ import annotations

import asyncio
import time

import pytest

from aipc_lsp.engines.base import EngineError, GenerationParams
from aipc_lsp.scheduler import Health, Job, Scheduler, Slot
from fake_engine import FakeEngine, tokenize

DELAY = 0.02
LONG = " ".join(f"w{i}" for i in range(40))  # 0.8 s at DELAY


def job(uri: str, kind: str = "completion", prompt: str = "p", max_new_tokens: int = 256, **kw) -> Job:
    return Job(key=(uri, kind), prompt=prompt, params=GenerationParams(max_new_tokens=max_new_tokens), **kw)


async def until(condition, timeout: float = 2.0, what: str = "condition") -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


@pytest.fixture
async def make():
    made: list[Scheduler] = []
    problems: list[str] = []

    def build(*engines: FakeEngine, names=None, **options) -> Scheduler:
        names = names or [f"s{i}" for i in range(len(engines))]
        scheduler = Scheduler([Slot(n, e) for n, e in zip(names, engines)], on_problem=problems.append, **options)
        scheduler.problems = problems
        made.append(scheduler)
        return scheduler

    yield build
    for scheduler in made:
        scheduler.close()
        for slot in scheduler.slots:
            slot.executor.shutdown(wait=True)


async def ready(scheduler: Scheduler) -> None:
    await scheduler.wait_ready()
    await until(lambda: all(s.ready or s.error for s in scheduler.slots), what="all slots to settle")


async def test_a_job_takes_the_first_free_slot_in_order(make):
    accel, cpu = FakeEngine(output="a", token_delay=DELAY), FakeEngine(output="c", token_delay=DELAY)
    scheduler = make(accel, cpu, names=["accel", "cpu"])
    await ready(scheduler)
    result = await scheduler.run(job("file:///a.py"))
    assert result.text == "a" and cpu.calls == []


async def test_busy_accelerator_sends_the_completion_to_the_cpu_now(make):
    accel = FakeEngine(output=LONG, token_delay=DELAY)
    cpu = FakeEngine(output="from cpu", token_delay=DELAY)
    scheduler = make(accel, cpu, names=["accel", "cpu"])
    await ready(scheduler)
    long_run = asyncio.ensure_future(scheduler.run(job("file:///long.py")))
    await until(lambda: accel.calls and accel.calls[0].tokens >= 1)
    result = await scheduler.run(job("file:///other.py"))
    assert result.text == "from cpu"
    assert not long_run.done()  # answered while accel still generates: it did not wait for accel
    await long_run


async def test_a_much_faster_accelerator_about_to_be_free_is_worth_waiting_for(make):
    accel = FakeEngine(output="x y", token_delay=DELAY)
    cpu = FakeEngine(output="slow", token_delay=DELAY)
    scheduler = make(accel, cpu, names=["accel", "cpu"])
    await ready(scheduler)
    accel_slot, cpu_slot = scheduler.slots
    accel_slot.stats.ttft_ms, accel_slot.stats.tokens_per_s = 5.0, 1000.0
    cpu_slot.stats.ttft_ms, cpu_slot.stats.tokens_per_s = 2000.0, 2.0
    first = asyncio.ensure_future(scheduler.run(job("file:///a.py", max_new_tokens=2)))
    await until(lambda: accel.calls)
    second = await scheduler.run(job("file:///b.py"))
    await first
    assert second.text == "x y" and cpu.calls == []


async def test_chat_prefers_the_accelerator_even_when_the_cpu_is_free(make):
    accel, cpu = FakeEngine(output="a", token_delay=DELAY), FakeEngine(output="c", token_delay=DELAY)
    scheduler = make(accel, cpu, names=["accel", "cpu"])
    await ready(scheduler)
    busy = asyncio.ensure_future(scheduler.run(job("file:///a.py", prompt="busy")))
    await until(lambda: accel.calls)
    chat = await scheduler.run(job("file:///b.py", kind="chat"))
    await busy
    assert chat.text == "a" and [c.prompt for c in accel.calls] == ["busy", "p"] and cpu.calls == []


def continuing(script: str):
    """Output for a resumed chunk: the rest of `script` after what the prompt already holds."""
    words = tokenize(script)

    def rest(prompt: str):
        for done in range(len(words), -1, -1):
            if prompt.endswith("".join(words[:done])):
                return words[done:]
        return words

    return rest


async def test_chat_runs_in_chunks_and_a_completion_cuts_in(make):
    story = " ".join(f"t{i}" for i in range(24))
    engine = FakeEngine(output=lambda p: ["done"] if p == "complete me" else continuing(story)(p), token_delay=DELAY)
    scheduler = make(engine, chunk_tokens=4)
    await ready(scheduler)
    chat = asyncio.ensure_future(scheduler.run(job("file:///a.py", kind="chat", prompt="Q:")))
    await until(lambda: engine.calls and engine.calls[0].tokens >= 2)
    completion = await scheduler.run(job("file:///a.py", prompt="complete me"))
    assert completion.text == "done"
    assert not chat.done(), "the completion waited for the whole chat"
    answer = await chat
    assert answer.text == story
    assert not chat.result().cancelled
    prompts = [c.prompt for c in engine.calls]
    assert "complete me" in prompts[1:-1], prompts  # served between two chat chunks
    assert all(c.params.max_new_tokens <= 4 for c in engine.calls if c.prompt != "complete me")


async def test_a_failing_slot_is_reported_once_and_its_jobs_move_on(make):
    broken = FakeEngine(output="x", token_delay=DELAY, fail_after_tokens=1, fail_with=EngineError("GPU lost"))
    cpu = FakeEngine(output="rescued", token_delay=DELAY)
    scheduler = make(broken, cpu, names=["gpu", "cpu"], retry_interval_s=3600)
    await ready(scheduler)
    first = await scheduler.run(job("file:///a.py"))
    second = await scheduler.run(job("file:///b.py"))
    assert first.text == second.text == "rescued"
    assert len(scheduler.problems) == 1 and "gpu" in scheduler.problems[0] and "GPU lost" in scheduler.problems[0]
    assert scheduler.slots[0].status()["state"] == "unhealthy" and len(broken.calls) == 1


async def test_a_slot_that_fails_to_load_is_skipped_and_reported_once(make):
    npu = FakeEngine(fail_on_load=EngineError("no NPU driver"))
    cpu = FakeEngine(output="ok", token_delay=DELAY)
    scheduler = make(npu, cpu, names=["npu", "cpu"], retry_interval_s=3600)
    await ready(scheduler)
    assert (await scheduler.run(job("file:///a.py"))).text == "ok"
    assert len(scheduler.problems) == 1 and "no NPU driver" in scheduler.problems[0]
    assert "using cpu" in scheduler.problems[0]


async def test_a_stalled_slot_is_written_off_and_the_job_moves_on(make):
    stuck = FakeEngine(output="late", token_delay=0.6)
    cpu = FakeEngine(output="fast", token_delay=DELAY)
    scheduler = make(stuck, cpu, names=["npu", "cpu"], stall_timeout_s=0.1, retry_interval_s=3600)
    await ready(scheduler)
    result = await scheduler.run(job("file:///a.py"))
    assert result.text == "fast"  # not "late": the job moved on once the slot was written off
    assert scheduler.slots[0].status()["state"] == "unhealthy"
    assert "no token" in scheduler.problems[0]


async def test_a_long_prefill_before_the_first_token_is_not_a_stall(make):
    """A cold prompt's prefill gets PREFILL_STALL_FACTOR times the stall limit before its first token."""
    slow_prefill = FakeEngine(output=["x"], token_delay=0.25)
    scheduler = make(slow_prefill, stall_timeout_s=0.15, retry_interval_s=3600)
    await ready(scheduler)
    assert (await scheduler.run(job("file:///a.py"))).text == "x"
    assert scheduler.slots[0].status()["state"] == "ready" and not scheduler.problems


async def test_an_unhealthy_slot_is_retried_and_serves_again(make):
    flaky = FakeEngine(output="back", token_delay=DELAY, fail_after_tokens=0, fail_with=EngineError("hiccup"))
    scheduler = make(flaky, retry_interval_s=0.05)
    await ready(scheduler)
    with pytest.raises(EngineError):
        await scheduler.run(job("file:///a.py"))
    flaky.fail_after_tokens = None
    await until(lambda: scheduler.slots[0].ready, what="the background retry")
    assert (await scheduler.run(job("file:///a.py"))).text == "back"


async def test_a_typing_storm_never_runs_two_generations_for_one_document(make):
    engines = [FakeEngine(output=LONG, token_delay=DELAY), FakeEngine(output=LONG, token_delay=DELAY)]
    scheduler = make(*engines)
    await ready(scheduler)
    runs = []
    for i in range(30):
        runs.append(asyncio.ensure_future(scheduler.run(job("file:///storm.py", prompt=f"v{i}", max_new_tokens=5))))
        await asyncio.sleep(DELAY / 2)
    results = await asyncio.gather(*runs)
    assert scheduler.max_generations_per_key == 1
    assert not results[-1].cancelled and results[-1].text
    assert all(r.cancelled for r in results[:-1])  # every older keystroke was superseded
    assert max(e.max_concurrent for e in engines) == 1


async def test_healing_only_where_every_usable_slot_constrains_decoding(make):
    npu, cpu = FakeEngine(output="n"), FakeEngine(output="c")
    cpu.constrains_start = True
    scheduler = make(npu, cpu, names=["npu", "cpu"])
    await ready(scheduler)
    assert not scheduler.constrains_start()  # a prompt with held-back text could be routed to the NPU
    npu.constrains_start = True
    assert scheduler.constrains_start()
    npu.constrains_start = False
    scheduler.slots[0].health = Health.UNHEALTHY
    assert scheduler.constrains_start()  # the unhealthy one gets no completions


async def test_prompt_limit_is_the_strictest_healthy_slot(make):
    from aipc_lsp.config import OpenVINOSettings
    from aipc_lsp.engines.openvino import OpenVINOEngine

    npu = OpenVINOEngine("m.gguf", "NPU", options=OpenVINOSettings(npu_max_prompt_len=512))
    assert npu.max_prompt_tokens == 512 and not npu.prefix_caching and npu.kv_capacity is None  # static LLMPipeline
    # The paged KV cache holds kv_cache_tokens (whole blocks): prompts get all but the answer's room.
    assert OpenVINOEngine("m.gguf", "CPU").max_prompt_tokens == 3072 - 512
    assert OpenVINOEngine("m.gguf", "CPU", options=OpenVINOSettings(kv_cache_tokens=1000)).max_prompt_tokens == 512  # 1024 // 2
    assert OpenVINOEngine("m.gguf", "GPU", options=OpenVINOSettings(kv_cache_tokens=8200)).kv_capacity == 8208  # 16-token blocks
    assert OpenVINOEngine("m.gguf", "CPU", options=OpenVINOSettings(prefix_caching=False)).max_prompt_tokens is None
    # A prompt's KV outlives its request only with prefix caching: what makes warming a file worth it.
    assert OpenVINOEngine("m.gguf", "CPU").prefix_caching and not npu.prefix_caching
    npu, cpu = FakeEngine(output="n"), FakeEngine(output="c")
    npu.max_prompt_tokens = 512
    scheduler = make(npu, cpu, names=["npu", "cpu"])
    await ready(scheduler)
    assert scheduler.prompt_limit() == 512  # prompts are built before routing: fit the NPU
    scheduler.slots[0].health = Health.UNHEALTHY
    assert scheduler.prompt_limit() is None  # an unhealthy NPU does not shrink the CPU's prompts
