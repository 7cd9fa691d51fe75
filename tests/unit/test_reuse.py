"""Tests for the work reuse in aipc_lsp.suggest / aipc_lsp.generation: typed-ahead reuse of
the running or last generation, the prompt-keyed result cache, and that a reused answer is
never stale or wrong. The engine is FakeEngine (scripted output, real worker threads)."""

from __future__ import annotations

import asyncio

import pytest

from aipc_lsp.config import CompletionSettings
from aipc_lsp.scheduler import Scheduler, Slot
from aipc_lsp.suggest import Suggester

from fake_engine import FakeEngine, OneSlotRuntime
from waiting import until

# The suggestion computed ahead for an accept is off where a test counts what the engine computed for
# something else (its own tests are at the end).
SETTINGS = CompletionSettings(max_tokens=32, suggest_ahead=False)
URI = "file:///project/a.py"


@pytest.fixture
async def make():
    made: list[Scheduler] = []

    def build(output, delay: float = 0.002) -> tuple[Suggester, FakeEngine]:
        engine = FakeEngine(output=output, token_delay=delay)
        runtime = OneSlotRuntime(engine)
        made.append(runtime.sched)
        return Suggester(runtime), engine

    yield build
    for scheduler in made:
        scheduler.close()
        for slot in scheduler.slots:
            slot.executor.shutdown(wait=True)


async def ask(s: Suggester, text: str, version: int, offset: int | None = None, settings=SETTINGS):
    return await s.suggest(text=text, offset=len(text) if offset is None else offset,
                           settings=settings, uri=URI, version=version)


def script(mapping: dict[str, str], default: str = "\n"):
    """Engine output by prompt ending, so a test states what the model says after what."""
    def output(prompt: str) -> str:
        for end, out in mapping.items():
            if prompt.endswith(end):
                return out
        return default
    return output


async def test_typed_ahead_is_answered_from_the_last_generation(make):
    s, engine = make(script({"total =": " compute(a, b)\n\nprint(total)\n"}))
    first = await ask(s, "total = ", 1)
    assert first.text == "compute(a, b)" and first.source == "generated"
    for version, typed in enumerate(["c", "co", "compute(", "compute(a, "], start=2):
        s.document_changed(URI, "total = " + typed)
        got = await ask(s, "total = " + typed, version)
        assert got.source == "typed-ahead", typed
        assert got.text == "compute(a, b)"[len(typed):]
    assert len(engine.calls) == 1


async def test_healing_holds_back_the_unfinished_word_and_typing_along_reuses_the_answer(make):
    s, engine = make(script({"p = os.path": ".join(root, name)\n"}))
    engine.constrains_start = True
    first = await ask(s, "p = os.path.jo", 1)
    assert first.text == "in(root, name)" and first.source == "generated"
    assert engine.calls[0].prompt == "p = os.path" and engine.calls[0].params.start == ".jo"
    for version, typed in enumerate(["i", "in", "in(", "in(ro"], start=2):
        s.document_changed(URI, "p = os.path.jo" + typed)
        got = await ask(s, "p = os.path.jo" + typed, version)
        assert got.source == "typed-ahead" and got.text == "in(root, name)"[len(typed):], typed
    assert len(engine.calls) == 1


@pytest.mark.parametrize("constrains, setting", [(False, True), (True, False)])
async def test_no_healing_without_an_engine_that_constrains_or_with_it_turned_off(make, constrains, setting):
    s, engine = make(script({"p = os.path.jo": "in(root, name)\n"}))
    engine.constrains_start = constrains
    got = await ask(s, "p = os.path.jo", 1, settings=CompletionSettings(max_tokens=32, token_healing=setting))
    assert got.text == "in(root, name)"
    assert engine.calls[0].prompt == "p = os.path.jo" and engine.calls[0].params.start == ""


async def test_typing_off_the_prediction_starts_a_new_generation(make):
    s, engine = make(script({"total =": " compute(a, b)\n", "total = cx": "y\n"}))
    await ask(s, "total = ", 1)
    s.document_changed(URI, "total = cx")
    got = await ask(s, "total = cx", 2)
    assert got.source == "generated" and got.text == "y"
    assert engine.prompts == ["total =", "total = cx"]


async def test_a_typed_space_is_not_taken_for_the_predicted_one(make):
    # The model predicted "total =" + "(" ... ; the user typed a space instead: no reuse.
    s, engine = make(script({"total =": "(1)\n", "total = ": " 2\n"}))
    first = await ask(s, "total =", 1)
    assert first.text == "(1)"
    got = await ask(s, "total = ", 2)
    assert got.source == "generated" and len(engine.calls) == 2


async def test_different_text_after_the_cursor_is_never_served_from_reuse(make):
    s, engine = make(script({"x =": " f(1)\n"}))
    await ask(s, "x = \ny = 2\n", 1, offset=4)
    got = await ask(s, "x = f\ny = 3\n", 2, offset=5)  # the line below changed too
    assert got.source == "generated" and len(engine.calls) == 2


async def test_reuse_needs_a_final_answer_for_the_new_cursor(make):
    # The owner's suggestion (a single line after "x = ") ends at the newline, so the
    # generation stops there; at the start of the next line nothing after it is known.
    s, engine = make(script({"x =": " 1\n\ny = 2\n", "x = 1\n": "w = 4\n\n"}))
    first = await ask(s, "x = ", 1)
    assert first.text == "1" and engine.calls[0].result.stopped_by_caller
    got = await ask(s, "x = 1\n", 2)
    assert got.source == "generated" and got.text == "w = 4"


async def test_undo_and_revisit_are_answered_from_the_result_cache(make):
    s, engine = make(script({"a =": " 1\n", "b =": " 2\n"}))
    assert (await ask(s, "a = ", 1)).text == "1"
    assert (await ask(s, "b = ", 2)).text == "2"
    back = await ask(s, "a = ", 3)
    assert back.text == "1" and back.source == "cache"
    assert len(engine.calls) == 2
    # Other settings (max_lines) are another key.
    other = await ask(s, "a = ", 4, settings=CompletionSettings(max_tokens=32, max_lines=2))
    assert other.source == "generated"


async def test_the_running_generation_serves_the_next_keystroke(make):
    s, engine = make(script({"total =": " compute(alpha, beta, gamma, delta)\n"}), delay=0.03)
    first = asyncio.ensure_future(ask(s, "total = ", 1))
    await until(lambda: engine.calls and engine.calls[0].tokens >= 2, "two tokens")
    # The user types what is already predicted: the old request is answered with nothing
    # at once, the generation goes on and answers the new one.
    s.document_changed(URI, "total = comp")
    second = asyncio.ensure_future(ask(s, "total = comp", 2))
    assert await first is None  # answered with nothing, not made to wait for the generation
    got = await second
    assert got.source == "typed-ahead" and got.text == "ute(alpha, beta, gamma, delta)"
    assert len(engine.calls) == 1 and not engine.calls[0].result.cancelled


async def test_typing_off_a_running_prediction_stops_it_at_once(make):
    s, engine = make(script({"total =": " compute(alpha, beta, gamma, delta)\n", "total = x": "y\n"}), delay=0.03)
    first = asyncio.ensure_future(ask(s, "total = ", 1))
    await until(lambda: engine.calls and engine.calls[0].tokens >= 1, "the first token")
    s.document_changed(URI, "total = x")
    assert await first is None  # answered with nothing, not made to wait for the generation
    got = await ask(s, "total = x", 2)
    assert got.text == "y" and got.source == "generated"
    assert engine.calls[0].result.cancelled
    assert engine.calls[0].tokens < 5  # stopped long before its 8 tokens


async def test_a_cancelled_request_stops_its_generation(make):
    s, engine = make(script({"x =": " " + " ".join(f"w{i}" for i in range(60)) + "\n"}), delay=0.02)
    request = asyncio.ensure_future(ask(s, "x = ", 1))
    await until(lambda: engine.calls and engine.calls[0].tokens >= 1, "the first token")
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await until(lambda: engine.calls[0].ended is not None, "the generation to end")
    assert engine.calls[0].result.cancelled and engine.calls[0].tokens < 20


async def test_recent_records_say_how_each_answer_was_made(make):
    s, engine = make(script({"t =": " f(1)\n"}))
    await ask(s, "t = ", 1)
    s.document_changed(URI, "t = f")
    await ask(s, "t = f", 2)
    sources = [r["source"] for r in s.recent]
    assert sources == ["generated", "typed-ahead"]
    assert all(r["firstTokenMs"] is not None and r["firstTokenMs"] <= r["totalMs"] for r in s.recent)


async def test_nothing_from_a_previous_model_is_served(make):
    s, engine = make(script({"a =": " 1\n"}))
    assert (await ask(s, "a = ", 1)).text == "1"
    # Settings changed: the runtime now has another model (a new scheduler).
    other = FakeEngine(output=script({"a =": " 2\n"}), token_delay=0.002)
    old = s.runtime.sched
    s.runtime.sched = Scheduler([Slot("other", other)])
    try:
        again = await ask(s, "a = ", 2)
        assert again.text == "2" and again.source == "generated"
        s.document_changed(URI, "a = 2")  # typed-ahead must not use the old model's "1" either
    finally:
        s.runtime.sched.close()
        s.runtime.sched.slots[0].executor.shutdown(wait=True)
        s.runtime.sched = old


# --- warming an opened document -------------------------------------------------------------


async def warm_ups_ended() -> None:
    """Wait for every warm-up task there is to end: one postponed rather than stopped would run
    to its end here (and be recorded)."""
    tasks = [t for t in asyncio.all_tasks()
             if t.get_coro().__qualname__ in ("Suggester._warm", "Suggester._compute_ahead", "Suggester._suggest_ahead")]
    await asyncio.gather(*tasks, return_exceptions=True)


async def warm_and_wait(s: Suggester, text: str, budget: int = 1536):
    s.warm(URI, text, CompletionSettings(context_tokens=budget))
    await warm_ups_ended()
    return s.warmups[-1] if s.warmups else None


@pytest.mark.parametrize("keeps", [True, False])
async def test_an_opened_document_is_warmed_only_on_an_engine_that_keeps_prompt_caches(make, keeps):
    s, engine = make("x")
    engine.keeps_prompt_cache = keeps
    text = "def f(a):\n    return a\n"
    record = await warm_and_wait(s, text)
    if keeps:  # the prompt of a cursor at the end: every cursor's prompt in this file is a prefix of it
        assert record["uri"] == URI and not record["cancelled"] and engine.prompts == [text]
        assert engine.calls[0].params.max_new_tokens == 1
    else:  # e.g. OpenVINO on the NPU: a warm-up would be lost work
        assert record is None and engine.prompts == []


async def test_a_long_document_warms_the_window_a_cursor_near_its_top_gets(make):
    s, engine = make("x")
    engine.keeps_prompt_cache = True
    lines = [f"value_{i} = compute({i}, {i + 1})\n" for i in range(400)]
    text = "".join(lines)
    await warm_and_wait(s, text, budget=256)
    (prompt,) = engine.prompts
    assert text.startswith(prompt) and prompt.endswith("\n") and engine.count_tokens(prompt) <= 256
    # The same prompt the completion builds for a cursor at the start of the next line.
    from aipc_lsp.context import build_completion_context
    assert build_completion_context(text, len(prompt), budget_tokens=256,
                                    count_tokens=engine.count_tokens).prompt == prompt


async def test_with_the_code_after_the_cursor_first_an_opened_document_is_not_warmed(make):
    """SPM's prompt begins with the code after a cursor not known yet: nothing computed at open
    would begin it (the client's aipc/warm, where the cursor rests, still warms)."""
    s, engine = make("x")
    engine.keeps_prompt_cache = True
    text = "".join(f"value_{i} = compute({i}, {i + 1})\n" for i in range(400))
    s.warm(URI, text, CompletionSettings(context_tokens=512, suffix_tokens=128, fim="qwen", fim_order="spm"))
    await warm_ups_ended()
    assert engine.prompts == []
    assert s.warmups[-1]["at"] == "open" and "first" in s.warmups[-1]["skipped"]
    s.warm(URI, text, CompletionSettings(context_tokens=512, suffix_tokens=128, fim="qwen", fim_order="spm"),
           offset=text.index("value_200 ="))
    await warm_ups_ended()
    (prompt,) = engine.prompts
    assert prompt.startswith("<|fim_prefix|><|fim_suffix|>value_") and s.warmups[-1]["at"] == "cursor"


async def test_with_fim_the_first_window_leaves_the_code_after_the_cursor_its_share(make):
    s, engine = make("x")
    engine.keeps_prompt_cache = True
    lines = [f"value_{i} = compute({i}, {i + 1})\n" for i in range(400)]
    text = "".join(lines)
    settings = CompletionSettings(context_tokens=512, suffix_tokens=128, fim="qwen", fim_order="psm-line")
    s.warm(URI, text, settings)
    await warm_ups_ended()
    (prompt,) = engine.prompts
    assert prompt.startswith("<|fim_prefix|>value_0 =") and engine.count_tokens(prompt) <= 512
    # A cursor inside that window sends a prompt that begins as the warmed one, up to the cursor.
    from aipc_lsp import fim
    from aipc_lsp.context import build_completion_context
    cursor = len("".join(lines[:5]))
    asked = build_completion_context(text, cursor, budget_tokens=512, count_tokens=engine.count_tokens,
                                     fim=fim.ordered(fim.QWEN, "psm-line"), suffix_tokens=128).prompt
    shared = "<|fim_prefix|>" + text[:cursor]
    assert asked.startswith(shared) and prompt.startswith(shared)


async def test_a_request_stops_a_pending_warm_up(make):
    s, engine = make(script({"return": " a + b\n"}))
    engine.keeps_prompt_cache = True
    s.warm("file:///project/other.py", "x = 1\n" * 50, SETTINGS)
    answer = await ask(s, "def add(a, b):\n    return ", version=1)
    await warm_ups_ended()  # it was stopped, not postponed
    assert answer.text == "a + b" and len(engine.prompts) == 1 and not s.warmups


async def test_a_cursor_warm_up_computes_the_prompt_a_request_there_sends_unless_it_ran_last(make):
    s, engine = make(script({"return": " a + b\n"}))
    engine.keeps_prompt_cache = True
    lines = [f"value_{i} = compute({i}, {i + 1})\n" for i in range(400)]
    text = "".join(lines)
    cursor = len("".join(lines[:300]))  # far beyond the first window of a 256-token budget
    settings = CompletionSettings(context_tokens=256, suggest_ahead=False)
    s.warm(URI, text, settings, cursor)
    await warm_ups_ended()
    assert s.warmups[-1]["at"] == "cursor" and not s.warmups[-1]["cancelled"]
    (warmed,) = engine.prompts
    assert warmed.endswith(text[:cursor][-40:]) and engine.calls[0].params.max_new_tokens == 1
    # The request at that cursor sends the very prompt the warm-up computed.
    await s.suggest(text=text, offset=cursor, settings=settings, uri=URI, version=1)
    assert engine.prompts[1] == warmed
    # The client reports the cursor where the user stopped typing: the last prompt computed is
    # not computed again; another place is.
    s.warm(URI, text, settings, cursor)
    await warm_ups_ended()
    assert len(engine.prompts) == 2 and len(s.warmups) == 1
    s.warm(URI, text, settings, cursor - len(lines[299]))
    await warm_ups_ended()
    assert len(engine.prompts) == 3 and s.warmups[-1]["at"] == "cursor"


LINE_ABOVE = "def total(items):\n    result = 0\n    for item in items:\n        "
LINE_BELOW = "\n    return result\n"


@pytest.mark.parametrize("order, enabled, warmed", [("psm-line", True, True), ("psm-line", False, False),
                                                    ("psm", True, False)])
async def test_after_a_suggestion_on_a_line_of_indentation_the_prompt_typing_there_extends_is_computed(
        make, order, enabled, warmed):
    s, engine = make(script({"<|fim_middle|>": "result += item.price\n"}))
    engine.keeps_prompt_cache = True
    settings = CompletionSettings(max_tokens=32, fim="qwen", fim_order=order, warm_at_cursor=enabled,
                                  suggest_ahead=False)
    answer = await s.suggest(text=LINE_ABOVE + LINE_BELOW, offset=len(LINE_ABOVE), settings=settings, uri=URI,
                             version=1)
    assert answer.text == "result += item.price"
    await warm_ups_ended()
    assert [w["at"] for w in s.warmups] == (["line"] if warmed else [])
    if not warmed:
        assert len(engine.prompts) == 1
        return
    first, ahead = engine.prompts
    assert engine.calls[1].params.max_new_tokens == 1 and ahead != first
    # The user types something else than the suggestion: that prompt extends the one computed ahead.
    text = LINE_ABOVE + "t" + LINE_BELOW
    s.document_changed(URI, text)
    await s.suggest(text=text, offset=len(LINE_ABOVE) + 1, settings=settings, uri=URI, version=2)
    assert len(engine.prompts) == 3 and engine.prompts[2].startswith(ahead)


async def test_a_keystroke_that_extends_the_prompt_being_computed_ahead_waits_for_it(make):
    s, engine = make(script({"<|fim_middle|>": "result += item.price\n"}), delay=0.05)
    engine.keeps_prompt_cache = True
    settings = CompletionSettings(max_tokens=32, fim="qwen", fim_order="psm-line", suggest_ahead=False)
    await s.suggest(text=LINE_ABOVE + LINE_BELOW, offset=len(LINE_ABOVE), settings=settings, uri=URI, version=1)
    await until(lambda: len(engine.calls) == 2, "the line's prompt computed ahead")
    text = LINE_ABOVE + "t" + LINE_BELOW
    s.document_changed(URI, text)
    await s.suggest(text=text, offset=len(LINE_ABOVE) + 1, settings=settings, uri=URI, version=2)
    await warm_ups_ended()
    assert [(w["at"], w["cancelled"]) for w in s.warmups] == [("line", False)]
    assert engine.calls[2].started >= engine.calls[1].ended and engine.prompts[2].startswith(engine.prompts[1])
    # A request elsewhere does not wait for it.
    await s.suggest(text=LINE_ABOVE + LINE_BELOW, offset=len(LINE_ABOVE), settings=settings, uri=URI, version=3)


# --- the suggestion that follows an accepted one (completion.suggest_ahead) ---------------------

AHEAD = CompletionSettings(max_tokens=32)
BODY = "def f():\n    a = 1\n    "


def statements(prompt: str) -> str:
    """Two statements on an empty line; at the end of the second, a newline and the next one."""
    return "\n    d = 4\n\n" if prompt.endswith("c = 3") else " b = 2\n    c = 3\n\n"


async def test_the_suggestion_after_an_accepted_one_is_computed_while_the_user_reads_it(make):
    s, engine = make(statements)
    engine.keeps_prompt_cache = True
    first = await ask(s, BODY, 1, settings=AHEAD)
    assert first.text == "b = 2\n    c = 3" and len(engine.calls) == 1
    await warm_ups_ended()
    assert [(w["at"], w["cancelled"]) for w in s.warmups] == [("accept", False)]
    assert engine.calls[1].prompt.endswith("c = 3") and engine.calls[1].params.max_new_tokens == 32
    # The user accepts (Tab): the editor inserts the suggestion and asks at its end.
    accepted = BODY + first.text
    s.document_changed(URI, accepted)
    second = await ask(s, accepted, 2, settings=AHEAD)
    assert second.source == "cache" and second.text == "\n    d = 4" and len(engine.calls) == 2
    # And the one after that is computed ahead in turn.
    await warm_ups_ended()
    assert len(engine.calls) == 3 and engine.calls[2].prompt.endswith("d = 4")


async def test_an_accept_while_it_is_computed_is_answered_from_it(make):
    s, engine = make(statements, delay=0.05)
    engine.keeps_prompt_cache = True
    first = await ask(s, BODY, 1, settings=AHEAD)
    await until(lambda: len(engine.calls) == 2 and engine.calls[1].tokens, "the next suggestion being computed")
    accepted = BODY + first.text
    s.document_changed(URI, accepted)
    second = await ask(s, accepted, 2, settings=AHEAD)
    assert second.source == "ahead" and second.text == "\n    d = 4"
    assert len(engine.calls) == 2  # no generation of its own


async def test_typing_something_else_stops_it_and_is_answered_as_always(make):
    s, engine = make(statements, delay=0.05)
    engine.keeps_prompt_cache = True
    await ask(s, BODY, 1, settings=AHEAD)
    await until(lambda: len(engine.calls) == 2 and engine.calls[1].tokens, "the next suggestion being computed")
    typed = BODY + "x"
    s.document_changed(URI, typed)
    got = await ask(s, typed, 2, settings=AHEAD)
    assert got.source == "generated" and engine.calls[2].prompt.endswith("x")
    assert engine.calls[1].result.cancelled and engine.calls[2].started >= engine.calls[1].ended
    assert s.warmups[0]["at"] == "accept" and s.warmups[0]["cancelled"]


async def test_an_accept_before_the_user_paused_is_a_request_like_any_other(make):
    s, engine = make(statements)
    engine.keeps_prompt_cache = True
    first = await ask(s, BODY, 1, settings=AHEAD)
    accepted = BODY + first.text
    s.document_changed(URI, accepted)
    second = await ask(s, accepted, 2, settings=AHEAD)  # sooner than SUGGEST_AHEAD_DELAY_S
    assert second.source == "generated" and second.text == "\n    d = 4" and len(engine.calls) == 2
    assert not s.warmups


@pytest.mark.parametrize("keeps, enabled", [(True, False), (False, True)])
async def test_nothing_is_computed_ahead_when_turned_off_or_without_a_prompt_cache(make, keeps, enabled):
    s, engine = make(statements)
    engine.keeps_prompt_cache = keeps
    await ask(s, BODY, 1, settings=CompletionSettings(max_tokens=32, suggest_ahead=enabled))
    await warm_ups_ended()
    await asyncio.sleep(0.4)
    assert len(engine.calls) == 1 and not s.warmups
