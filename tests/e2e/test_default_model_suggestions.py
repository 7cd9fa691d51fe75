"""Suggestions of the default model end to end (Qwen2.5-Coder-0.5B-Instruct through OpenVINO GenAI, not the test
session's small model): fill-in-the-middle completions that use the code after the cursor, the
single-line rule mid-line, and inline chat in the model's own chat template."""

from __future__ import annotations

import argparse
import ast

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.eval.tasks import build_tasks
from conftest import configure, inline, open_document, plain, server_config, status, wait_ready

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

# The hole is the first branch: only the code after it says that 3 and 5 are handled below.
FIZZ = (
    "def fizzbuzz(limit):\n"
    "    for n in range(1, limit + 1):\n"
    "        |\n"
    "        elif n % 3 == 0:\n"
    "            print(\"Fizz\")\n"
    "        elif n % 5 == 0:\n"
    "            print(\"Buzz\")\n"
    "        else:\n"
    "            print(n)\n"
)
MID_LINE = (
    "def by_age(people):\n"
    "    return sorted(people, key=|)\n"
    "\n"
    "\n"
    "print(by_age([{\"name\": \"a\", \"age\": 3}]))\n"
)


def at_marker(text: str) -> tuple[str, types.Position]:
    before, after = text.split("|")
    lines = before.split("\n")
    return before + after, types.Position(line=len(lines) - 1, character=len(lines[-1]))


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    lsp_client.set_configuration({"aipc": {}})
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"),
        initialization_options={"model": "default", "chat": {"max_tokens": 96}}))
    state = await wait_ready(lsp_client, timeout=900)  # a fresh machine fetches and converts it first
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


async def test_a_hole_is_filled_from_the_code_on_both_sides(client: LanguageClient):
    text, position = at_marker(FIZZ)
    open_document(client, "file:///project/fizz.py", text)
    [suggestion] = await inline(client, "file:///project/fizz.py", position)
    first = suggestion.split("\n")[0]
    assert first.startswith("if "), suggestion
    assert "15" in first or ("3" in first and "5" in first), suggestion  # FizzBuzz comes first
    assert "elif n % 3" not in suggestion, suggestion  # the code after the cursor is not repeated
    assert (await status(client))["completionPrompt"] == "qwen"


async def test_mid_line_the_suggestion_is_one_line_that_fits_before_the_rest(client: LanguageClient):
    text, position = at_marker(MID_LINE)
    open_document(client, "file:///project/people.py", text)
    [suggestion] = await inline(client, "file:///project/people.py", position)
    assert suggestion and "\n" not in suggestion, suggestion
    assert "age" in suggestion, suggestion
    assert suggestion.count("(") - suggestion.count(")") >= 0, suggestion  # the `)` after the cursor stays the only one


def hole_in_module(module, before: str, hole: str, after: str) -> tuple[str, types.Position]:
    """A standard-library module's source with `hole` cut out between `before` and `after`."""
    source = open(module.__file__, encoding="utf-8").read()
    if source.count(before + hole + after) != 1:
        pytest.skip(f"this Python's {module.__name__}.py does not have the lines this test cuts")
    head = source[: source.index(before + hole + after) + len(before)]
    lines = head.split("\n")
    return head + source[len(head) + len(hole):], types.Position(line=len(lines) - 1, character=len(lines[-1]))


@pytest.mark.parametrize("module, before, hole, after", [
    # The next method (not in the prompt: the suffix ends with visit_AnnAssign) has this line too.
    (ast, '            self.write(" = ")\n            ', "self.traverse(node.value)",
     "\n\n    def visit_Return(self, node):"),
    # The next branch repeats it, and so does the branch above: the code's own, not a copy.
    (argparse, "        elif action.nargs == PARSER:\n            ",
     "value = [self._get_value(action, v) for v in arg_strings]\n            self._check_value(action, value[0])",
     "\n\n        # SUPPRESS"),
], ids=["next-method", "alike-branches"])
async def test_a_right_line_that_also_comes_below_is_not_dropped_as_a_copy(client: LanguageClient, module, before,
                                                                          hole, after):
    text, position = hole_in_module(module, before, hole, after)
    uri = f"file:///project/{module.__name__}.py"
    open_document(client, uri, text)
    [suggestion] = await inline(client, uri, position)
    assert suggestion.split("\n")[0] == hole.split("\n")[0], suggestion


def eval_task(task_id: str, sources: tuple[str, ...]):
    task = next((t for t in build_tasks(sources=sources) if t.id == task_id), None)
    if task is None:
        pytest.skip(f"no task {task_id} here (its source is not on this machine)")
    return task, types.Position(line=task.line, character=task.column)


async def test_a_started_line_the_model_writes_again_is_suggested_as_its_rest(client: LanguageClient):
    # `        self.|` in LRUCache.__init__: on an AMX host (bf16) the model ends the line and writes
    # `self.hits = 0` again below, which accepted left `self.` dangling; computing in f32 it writes
    # the rest of the line straight away. Either way the suggestion is the rest of this line and
    # the accepted document is Python.
    task, position = eval_task("corpus/lru.py:13:midline", ("tests",))
    uri = "file:///project/corpus/lru.py"
    open_document(client, uri, task.text)
    [suggestion] = await inline(client, uri, position)
    assert suggestion.strip() and "\n" not in suggestion, suggestion
    lines = task.text.split("\n")
    lines[task.line] = lines[task.line][:task.column] + suggestion + lines[task.line][task.column:]
    compile("\n".join(lines), "lru.py", "exec")


async def test_the_fim_order_setting_reaches_the_model(client: LanguageClient):
    # heapq.merge: with the suffix first the default model recalls this line; in PSM it writes another.
    task, position = eval_task("stdlib/heapq.py:369:line", ("dev",))
    answers = {}
    for order in ("spm", "psm"):
        await configure(client, {"model": "default", "chat": {"max_tokens": 96}, "completion": {"fim_order": order}})
        uri = f"file:///project/{order}/heapq.py"
        open_document(client, uri, task.text)
        [answers[order]] = await inline(client, uri, position)
    await configure(client, {"model": "default", "chat": {"max_tokens": 96}})
    assert answers["spm"].split("\n")[0] == task.expected.split("\n")[0] == "yield from next.__self__", answers
    assert answers["psm"].split("\n")[0] != answers["spm"].split("\n")[0], answers


async def test_inline_chat_speaks_the_code_models_own_template(client: LanguageClient):
    uri = "file:///project/add.py"
    open_document(client, uri, "def add(a, b):\n    return a + b\n")
    result = plain(await client.protocol.send_request_async("aipc/inlineChat", {
        "textDocument": {"uri": uri},
        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 0}},
        "instruction": "What does this function return? Answer in one sentence."}))
    answer = result["text"]
    assert answer.strip(), result
    assert "<|im_" not in answer and "<|endoftext|>" not in answer, answer  # the template's markers end it
    assert "sum" in answer.lower() or "a + b" in answer or "add" in answer.lower(), answer
