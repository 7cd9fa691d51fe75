"""The chat pipeline on the fake engine: prompt, history bound, streaming, code extraction."""

import asyncio

import pytest

from aipc_lsp.chat import ChatRequest, ChatService, ChatSuperseded, ChatTooLong, extract_code, fit_code, guess_mode
from aipc_lsp.config import ChatSettings
from fake_engine import FakeEngine, OneSlotRuntime
from waiting import until

SMOL = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_guess_mode():
    assert guess_mode("Add a docstring") == "edit"
    assert guess_mode("rewrite with pathlib") == "edit"
    assert guess_mode("why does this fail?") == "ask"
    assert guess_mode("Explain this") == "ask"


def test_extract_code_takes_the_first_closed_block():
    assert extract_code("Sure:\n```python\nx = 1\n```\nand\n```\ny\n```") == "x = 1\n"
    assert extract_code("```python\nx = 1\n") is None  # cut off before the block closed
    assert extract_code("no code") is None


def test_fit_code_reindents_like_the_selection():
    code = "def f():\n    return 1\n"
    assert fit_code(code, "    def g():\n        pass\n", "    ", True) == "    def f():\n        return 1\n"
    # Mid-line selection: the first line stays where it is, the rest take the line's indent.
    assert fit_code("a +\nb", "x", "    ", False) == "a +\n    b"
    # Blank lines carry no indentation; a selection without a final newline gets none.
    assert fit_code("a\n\nb\n", "q", "  ", True) == "  a\n\n  b"


def _request(**kw):
    base = dict(uri="file:///a.py", instruction="Add a docstring", selection="def f():\n    return 1\n",
                language_id="python")
    base.update(kw)
    return ChatRequest(**base)


async def test_answer_streams_through_the_model_template_and_stops_after_the_code_block():
    engine = FakeEngine(output="Here:\n```python\ndef f():\n    return 2\n```\nThat is all.<|im_end|>junk",
                        template=SMOL, token_delay=0.001)
    service = ChatService(OneSlotRuntime(engine))
    pieces = []
    answer = await service.answer(_request(), ChatSettings(), pieces.append)
    assert answer.mode == "edit" and answer.code == "def f():\n    return 2\n"
    assert "".join(pieces) == answer.text
    assert "That is all" not in answer.text  # stopped once the block closed
    prompt = engine.calls[0].prompt
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "Add a docstring\n\n```python\ndef f():\n    return 1\n```<|im_end|>" in prompt
    assert "<|im_end|>" in engine.calls[0].params.stop


async def test_ask_answers_stop_at_the_turn_end_and_history_is_kept_then_bounded():
    engine = FakeEngine(output="It returns one.<|im_end|>more", template=SMOL, token_delay=0.001)
    service = ChatService(OneSlotRuntime(engine))
    settings = ChatSettings(history_turns=2)
    for i in range(4):
        answer = await service.answer(_request(instruction=f"what is {i}?"), settings)
        assert answer.text == "It returns one." and answer.code is None
    assert answer.history_turns == 2
    last = engine.calls[-1].prompt
    assert "what is 3?" in last and "what is 2?" in last and "what is 1?" in last and "what is 0?" not in last
    # A client-given history replaces the server's.
    await service.answer(_request(instruction="what now?", history=[]), settings)
    assert "what is" not in engine.calls[-1].prompt.split("what now?")[0]


async def test_history_dropped_to_fit_the_budget_and_too_long_reported():
    engine = FakeEngine(output="ok", template=SMOL, token_delay=0.0)
    service = ChatService(OneSlotRuntime(engine))
    settings = ChatSettings(context_tokens=200, max_tokens=50)
    for _ in range(3):
        await service.answer(_request(instruction="why " + "word " * 20 + "?"), settings)
    prompt = engine.calls[-1].prompt
    assert engine.count_tokens(prompt) <= 150
    with pytest.raises(ChatTooLong):
        await service.answer(_request(selection="x = 1\n" * 200), settings)


async def test_a_newer_chat_on_the_same_document_supersedes():
    engine = FakeEngine(output="word " * 200, template=SMOL, token_delay=0.01)
    service = ChatService(OneSlotRuntime(engine))
    first = asyncio.ensure_future(service.answer(_request(instruction="why?"), ChatSettings()))
    await until(lambda: engine.calls and engine.calls[0].tokens, "the first chat's first token")
    second = await service.answer(_request(instruction="what?", mode="ask"), ChatSettings(max_tokens=3))
    with pytest.raises(ChatSuperseded):
        await first
    assert second.text
