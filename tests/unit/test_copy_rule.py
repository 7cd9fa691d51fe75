"""The copy rule through the Suggester: a suggestion that repeats a line below the cursor is
dropped only when the prompt showed the model that line and the code above the cursor has none
like it (FakeEngine, real worker threads, the Qwen FIM template forced)."""

from __future__ import annotations

import dataclasses

import pytest

from aipc_lsp.config import CompletionSettings
from aipc_lsp.suggest import Suggester

from fake_engine import FakeEngine, OneSlotRuntime

URI = "file:///project/visitor.py"
BEFORE = ("class Unparser:\n    def visit_AnnAssign(self, node):\n        self.traverse(node.target)\n"
          "        if node.value:\n            self.write(' = ')\n            ")
NEXT_METHOD = "\n\n    def visit_Return(self, node):\n        if node.value:\n            self.traverse(node.value)\n"
SAME_METHOD = "\n        else:\n            self.traverse(node.value)\n"


@pytest.fixture
async def suggester():
    made = []

    def build() -> Suggester:
        runtime = OneSlotRuntime(FakeEngine(output="self.traverse(node.value)\n\n", token_delay=0.001))
        made.append(runtime.sched)
        return Suggester(runtime)

    yield build
    for scheduler in made:
        scheduler.close()
        for slot in scheduler.slots:
            slot.executor.shutdown(wait=True)


async def _answer(s: Suggester, after: str, **settings) -> str:
    text = BEFORE + after
    got = await s.suggest(text=text, offset=len(BEFORE), settings=CompletionSettings(
        max_tokens=32, fim="qwen", token_healing=False, **settings), uri=URI, version=1)
    return got.text if got is not None else ""


@pytest.mark.parametrize("scoped, expected", [(True, "self.traverse(node.value)"), (False, "")])
async def test_a_line_of_the_next_method_is_a_copy_only_when_the_prompt_held_that_method(suggester, scoped, expected):
    assert await _answer(suggester(), NEXT_METHOD, suffix_to_definition_end=scoped) == expected


async def test_a_line_the_prompt_shows_below_in_the_same_method_is_still_a_copy(suggester):
    assert await _answer(suggester(), SAME_METHOD + NEXT_METHOD) == ""


async def test_a_line_the_code_above_has_too_is_not_taken_for_a_copy(suggester):
    above = "class Unparser:\n    def visit_Assign(self, node):\n        self.traverse(node.value)\n\n"
    s = suggester()
    text = above + BEFORE[len("class Unparser:\n"):] + SAME_METHOD
    offset = len(above) + len(BEFORE) - len("class Unparser:\n")
    got = await s.suggest(text=text, offset=offset, settings=CompletionSettings(
        max_tokens=32, fim="qwen", token_healing=False), uri=URI, version=1)
    assert got is not None and got.text == "self.traverse(node.value)"
