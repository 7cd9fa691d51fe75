"""The worker-process engine: a real child process per test, running scripted engines."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from aipc_lsp.engines import process
from aipc_lsp.engines.base import CancelFlag, EngineError, EngineInfo, GenerationParams, RequestError
from aipc_lsp.engines import EngineSpec
from aipc_lsp.engines.process import ProcessEngine
from aipc_lsp.scheduler import Job, Scheduler, Slot
from fake_engine import FakeEngine

HERE = str(Path(__file__).resolve().parent)
WORDS = " ".join(f"w{i}" for i in range(40))


@pytest.fixture(autouse=True)
def _worker_imports_test_engines(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE)


def engine(cls: str = "FakeEngine", module: str = "worker_engines", **kwargs) -> ProcessEngine:
    kwargs.setdefault("output", WORDS)
    return ProcessEngine("fake", "/models/fake", "CPU", EngineSpec(module, cls, kwargs))


@pytest.fixture
def loaded():
    made = []

    def make(cls: str = "FakeEngine", **kwargs) -> ProcessEngine:
        e = engine(cls, module="fake_engine" if cls == "FakeEngine" else "worker_engines", **kwargs)
        made.append(e)
        e.load()
        return e

    yield make
    for e in made:
        e.close()


def test_streams_pieces_and_reports_the_result(loaded):
    e = loaded(token_delay=0.001)
    pieces: list[str] = []
    result = e.generate("prompt", GenerationParams(max_new_tokens=10), threading.Event(), lambda p: pieces.append(p) or True)
    assert result.tokens == 10 and "".join(pieces) == result.text == "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    assert 0 < result.first_token_s <= result.total_s
    assert not result.cancelled and not result.stopped_by_caller
    assert e.count_tokens("a b c") == 3


def test_what_the_engine_declares_about_itself_crosses_to_the_proxy(loaded):
    e = loaded(keeps_prompt_cache=True, max_prompt_tokens=900, notice="on the CPU", template="{{ m }}")
    assert e.info == EngineInfo(max_prompt_tokens=900, keeps_prompt_cache=True, notice="on the CPU",
                                chat_template="{{ m }}")
    assert loaded().info.keeps_prompt_cache is False


def test_on_text_false_stops_the_worker_soon(loaded):
    e = loaded(token_delay=0.01)
    seen: list[str] = []
    result = e.generate("p", GenerationParams(max_new_tokens=40), threading.Event(),
                        lambda p: seen.append(p) or len(seen) < 3)
    assert result.stopped_by_caller and not result.cancelled
    # The stop reaches the worker while it decodes the next token at most.
    assert 3 <= result.tokens <= 5


def test_cancel_ends_a_generation_within_a_step(loaded):
    e = loaded(token_delay=0.02)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    result = e.generate("p", GenerationParams(max_new_tokens=40), cancel)
    assert result.cancelled and result.tokens < 40


def test_a_cancel_flag_reaches_a_silent_worker_without_polling(loaded, monkeypatch):
    # No piece comes while the worker prefills; with polling switched off, only the flag's
    # callback (shared flag written + the waiting thread woken) can end this generation.
    # (Polling an hour apart: without the callback this test runs into pytest's timeout.)
    monkeypatch.setattr(process, "CANCEL_POLL_S", 3600.0)
    monkeypatch.setattr(process, "WAKE_POLL_S", 3600.0)
    e = loaded("SilentUntilCancelledEngine")
    cancel = CancelFlag()
    threading.Timer(0.2, cancel.set).start()
    assert e.generate("p", GenerationParams(max_new_tokens=40), cancel).cancelled


def test_cancel_flag_calls_back_once_and_at_once_when_already_set():
    flag, calls = CancelFlag(), []
    forget = flag.on_set(lambda: calls.append("a"))
    flag.on_set(lambda: calls.append("b"))
    forget()
    flag.set()
    flag.set()
    assert calls == ["b"] and flag.is_set()
    flag.on_set(lambda: calls.append("c"))
    assert calls == ["b", "c"]


def test_library_output_on_stdout_does_not_break_the_protocol(loaded):
    e = loaded("NoisyEngine", token_delay=0.001)
    assert e.generate("p", GenerationParams(max_new_tokens=3), threading.Event()).text == "w0 w1 w2"


def test_load_failure_is_an_engine_error_with_the_engines_message():
    e = engine("FailingLoadEngine")
    with pytest.raises(EngineError, match="no such model on this device"):
        e.load()
    e.close()


def test_unknown_engine_module_is_reported():
    e = engine("Nothing", module="no_such_module_here")
    with pytest.raises(EngineError, match="no_such_module_here"):
        e.load()
    assert e._proc is None  # a worker whose load failed is not left running
    with pytest.raises(EngineError, match="not loaded"):
        e.count_tokens("x")
    e.close()


def test_an_isolated_worker_gets_this_package_but_not_the_servers_pythonpath():
    """For another environment's interpreter: the server's PYTHONPATH (here the test engines'
    folder) would put packages with other pins in front of its own."""
    e = ProcessEngine("fake", "/m", "CPU", EngineSpec("fake_engine", "FakeEngine"), isolated=True)
    with pytest.raises(EngineError, match="No module named 'fake_engine'"):
        e.load()
    e = ProcessEngine("fake", "/m", "CPU", EngineSpec("aipc_lsp.engines.base", "NoSuchEngine"), isolated=True)
    with pytest.raises(EngineError, match="'aipc_lsp.engines.base' has no attribute 'NoSuchEngine'"):
        e.load()  # but aipc_lsp is there


def test_missing_interpreter_is_reported():
    e = ProcessEngine("fake", "/m", "CPU", EngineSpec("fake_engine", "FakeEngine"), python="/no/such/python")
    with pytest.raises(EngineError, match="could not start the worker"):
        e.load()


def test_a_crashed_worker_fails_the_generation_and_the_next_one_restarts_it(loaded):
    e = loaded("CrashingEngine", crash_after=3, token_delay=0.001)
    with pytest.raises(EngineError, match=r"exited \(code 3\)"):
        e.generate("p", GenerationParams(max_new_tokens=20), threading.Event())
    # A new worker (a fresh CrashingEngine that has crash_after=3 again): two tokens work.
    assert e.generate("p", GenerationParams(max_new_tokens=2), threading.Event()).text == "w0 w1"


def test_abort_frees_a_generation_stuck_in_native_code(loaded):
    e = loaded("HangingEngine")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()  # ignored by the engine
    threading.Timer(0.6, e.abort).start()
    with pytest.raises(EngineError, match="exited"):  # without the abort it would hang for good
        e.generate("p", GenerationParams(max_new_tokens=5), cancel)


def test_a_worker_that_ignores_a_cancel_is_killed(loaded, monkeypatch):
    monkeypatch.setattr(process, "CANCEL_GRACE_S", 0.5)
    e = loaded("HangingEngine")
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(EngineError, match="did not stop within 0s of a cancel; killed it"):
        e.generate("p", GenerationParams(max_new_tokens=5), cancel)
    assert e._proc.wait(timeout=5) == -9


def test_what_the_engine_lacks_is_the_base_class_default(loaded):
    e = loaded()
    with pytest.raises(EngineError, match="no chat template renderer"):
        e.apply_chat_template([{"role": "user", "content": "hi"}])


async def test_the_watchdog_kills_a_hung_worker_and_the_job_moves_on():
    hung = engine("HangingEngine")
    healthy = FakeEngine(output="ok", token_delay=0.001)
    scheduler = Scheduler([Slot("hung", hung), Slot("cpu", healthy)], stall_timeout_s=0.6, retry_interval_s=60)
    scheduler.start()
    try:
        await asyncio.wait_for(scheduler.wait_ready(), 30)
        while not all(s.ready for s in scheduler.slots):
            await asyncio.sleep(0.05)
        job = Job(key=("file:///a.py", "completion"), prompt="p", params=GenerationParams(max_new_tokens=4))
        result = await asyncio.wait_for(scheduler.run(job), 20)
        assert result.text == "ok"
        assert scheduler.slots[0].health.value == "unhealthy"
        assert hung._proc.wait(timeout=5) == -9  # killed
    finally:
        scheduler.close()
        hung.close()


def test_the_shared_flags_file_is_gone_once_the_worker_has_mapped_it(loaded):
    before = set(Path("/dev/shm").glob("aipc-lsp-flags-*")) if Path("/dev/shm").is_dir() else set()
    e = loaded(token_delay=0.02)
    after = set(Path("/dev/shm").glob("aipc-lsp-flags-*")) if Path("/dev/shm").is_dir() else set()
    assert e._flags_path is None and after <= before  # a killed server leaves nothing behind
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    assert e.generate("p", GenerationParams(max_new_tokens=40), cancel).cancelled  # the mapping still works


def _history_when(e: ProcessEngine, done) -> str:
    """The worker engine's generate/settle history once `done(history)` (or 5 s have passed)."""
    deadline = time.monotonic() + 5
    while not done(history := e.apply_chat_template([])) and time.monotonic() < deadline:
        time.sleep(0.01)
    return history


def test_settle_reaches_the_engine_in_the_worker(loaded):
    e = loaded("SettlingEngine", token_delay=0.01)
    e.generate("prompt", GenerationParams(max_new_tokens=3), threading.Event())
    assert e.apply_chat_template([]) == "g"  # the worker settles only when told (the scheduler decides when)
    e.settle()
    assert _history_when(e, lambda h: h.endswith("s")) == "gs"


async def test_the_scheduler_settles_a_worker_engine_after_an_answer_but_not_after_a_cancel():
    e = engine("SettlingEngine", token_delay=0.01)  # 40 words: 0.4 s
    scheduler = Scheduler([Slot("cpu", e)])

    def job(tokens: int) -> Job:
        return Job(key=("file:///a.py", "completion"), prompt="p", params=GenerationParams(max_new_tokens=tokens))

    try:
        await asyncio.wait_for(scheduler.wait_ready(), 30)
        await scheduler.run(job(3))
        assert await asyncio.to_thread(_history_when, e, lambda h: h.endswith("s")) == "gs"
        cancelled = job(1000)
        running = asyncio.ensure_future(scheduler.run(cancelled))
        while not scheduler.slots[0].busy_with:
            await asyncio.sleep(0.01)
        cancelled.abandon()
        assert (await running).cancelled
        await scheduler.run(job(3))
        # A cancel means the user moved on (the next request comes now): no settle between.
        assert await asyncio.to_thread(_history_when, e, lambda h: len(h) >= 5) == "gsggs"
    finally:
        scheduler.close()


def test_a_request_error_crosses_as_one_and_the_worker_serves_on(loaded):
    e = loaded("FussyEngine", limit=10, token_delay=0.001)
    pid = e._proc.pid
    with pytest.raises(RequestError, match="the prompt is 20 characters, more than 10"):
        e.generate("x" * 20, GenerationParams(max_new_tokens=2), threading.Event())
    assert e.generate("short", GenerationParams(max_new_tokens=2), threading.Event()).text == "w0 w1"
    assert e._proc.pid == pid  # the same worker: nothing was wrong with it


def test_a_cancel_or_stop_that_comes_after_its_generation_ended_leaves_nothing_behind(monkeypatch):
    """The engine reads the shared flag first and may end before the cancel's (or stop's) message reaches
    the worker: that message must not leave a flag behind, one per late message for the worker's life."""
    import io
    import json
    import sys

    from aipc_lsp.engines.worker import Worker

    def stdin(*messages: dict) -> io.StringIO:
        return io.StringIO("".join(json.dumps(m) + "\n" for m in messages))

    worker = Worker({}, io.StringIO())
    worker.engine = FakeEngine(output="a b c", token_delay=0)
    worker.engine.load()
    monkeypatch.setattr(sys, "stdin", stdin(*({"op": "generate", "id": rid, "prompt": "p",
                                               "params": {"max_new_tokens": 3}} for rid in (1, 2))))
    worker.run()  # both generations, then the end of input closes it
    assert [json.loads(line)["result"]["tokens"] for line in worker.out.getvalue().splitlines()
            if "result" in line] == [3, 3]
    monkeypatch.setattr(sys, "stdin", stdin({"op": "cancel", "id": 1}, {"op": "stop", "id": 2}))
    worker.read_requests()
    assert (worker.cancels, worker.stops) == ({}, {})
    assert not worker.live


def test_the_worker_logs_what_python_allocations_grew_when_asked(loaded, monkeypatch, caplog):
    """AIPC_LSP_TRACEMALLOC: the worker traces Python's allocations and, when it closes, logs what grew
    since the model was loaded (for finding a leak in a long session)."""
    import logging

    from waiting import until_sync

    monkeypatch.setenv("AIPC_LSP_TRACEMALLOC", "3")
    caplog.set_level(logging.INFO, logger="aipc_lsp.engines.process")
    e = loaded(token_delay=0)
    e.generate("prompt", GenerationParams(max_new_tokens=5), threading.Event())
    e.close()
    lines = lambda: [r.getMessage() for r in caplog.records if "tracemalloc:" in r.getMessage()]  # noqa: E731
    until_sync(lambda: len(lines()) == 4, "the summary and 3 places in the log")
    assert "since the model was loaded" in lines()[0] and " blocks at " in lines()[1]
