"""Nothing that asks the engine runs on the event loop (docs/ARCHITECTURE.md): with the engine in
a worker process a token count or a chat template is a round trip to it, answered only between
two decode steps, and the loop must meanwhile read `didChange` and `$/cancelRequest`."""

from __future__ import annotations

import threading

import pytest

from aipc_lsp.chat import ChatRequest, ChatService
from aipc_lsp.config import ChatSettings, CompletionSettings
from aipc_lsp.suggest import Suggester

from fake_engine import FakeEngine, OneSlotRuntime
from waiting import until

URI = "file:///project/a.py"
SETTINGS = CompletionSettings(max_tokens=8)


def _recording(engine: FakeEngine) -> list[tuple[str, str]]:
    """Wrap the engine's tokenizer-side calls: each records its name and the thread it ran on."""
    calls: list[tuple[str, str]] = []
    for name in ("count_tokens", "chat_template", "special_tokens", "apply_chat_template"):
        method = getattr(engine, name, None)
        if method is None:
            continue  # not every engine has each

        def recorded(*args, _method=method, _name=name):
            calls.append((_name, threading.current_thread().name))
            return _method(*args)

        setattr(engine, name, recorded)
    return calls


def _on(calls: list[tuple[str, str]], thread: str) -> list[str]:
    return [name for name, ran_on in calls if ran_on == thread]


def _building(calls: list[tuple[str, str]]) -> list[str]:
    """Counts asked while building a prompt (not by the engine's own generate, in its slot's thread)."""
    return [name for name, ran_on in calls if not ran_on.startswith("aipc-slot-")]


@pytest.fixture
async def engine():
    engine = FakeEngine(output=" value\n", token_delay=0.001, keeps_prompt_cache=True)
    yield engine
    engine.close()


@pytest.fixture
async def runtime(engine):
    runtime = OneSlotRuntime(engine)
    yield runtime
    runtime.sched.close()
    for slot in runtime.sched.slots:
        slot.executor.shutdown(wait=True)


@pytest.fixture
def calls(engine) -> list[tuple[str, str]]:
    """(method, thread) of each tokenizer-side call the engine gets."""
    return _recording(engine)


@pytest.fixture
def loop_thread() -> str:
    return threading.current_thread().name  # the test runs on the event loop's thread


async def test_completion_prompts_are_counted_off_the_loop(engine, runtime, calls, loop_thread):
    suggester = Suggester(runtime)
    text = "".join(f"line_{i} = {i}\n" for i in range(400)) + "total = "
    # A new document, then a new line: both need counts the cache lacks.
    for version, typed in enumerate(["", "x\nmore = "], start=1):
        await suggester.suggest(text=text + typed, offset=len(text + typed), settings=SETTINGS, uri=URI, version=version)
    assert _on(calls, loop_thread) == [] and _building(calls), calls
    # A keystroke on the same line needs no count the cache lacks: built on the loop, asking nothing.
    asked = len(calls)
    same_line = text + "x\nmore = q"
    await suggester.suggest(text=same_line, offset=len(same_line), settings=SETTINGS, uri=URI, version=3)
    assert len(engine.calls) == 3  # a new generation for a new prompt
    assert _on(calls[asked:], loop_thread) == [] and _building(calls[asked:]) == [], calls


async def test_a_warm_up_counts_off_the_loop(runtime, calls, loop_thread):
    suggester = Suggester(runtime)
    suggester.warm(URI, "".join(f"def f{i}(a, b):\n    return a * {i} + b\n\n" for i in range(300)), SETTINGS)
    await until(lambda: suggester.warmups, "the warm-up")
    assert suggester.warmups[0]["promptChars"] > 0
    assert calls and _on(calls, loop_thread) == [], calls


async def test_chat_renders_and_fits_its_prompt_off_the_loop(runtime, calls, loop_thread):
    history = [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y " * 400}] * 4
    request = ChatRequest(uri=URI, instruction="Why?", selection="def f():\n    return 1\n", history=history)
    answer = await ChatService(runtime).answer(request, ChatSettings(context_tokens=512, max_tokens=64))
    assert answer.history_turns < 4  # the oldest turns were dropped to fit: counted more than once
    assert "count_tokens" in {name for name, _ in calls}
    assert _on(calls, loop_thread) == [], calls
