"""Tests for aipc_lsp.context.build_completion_context."""

from __future__ import annotations

import pytest

from aipc_lsp.context import (CHARS_PER_TOKEN, WINDOW_STEP_LINES, LastTokenCache, NotCounted, build_completion_context,
                              open_tail)


def at(marked: str, **kw):
    """Build the context for `marked`, a document with a single `|` marking the cursor."""
    assert marked.count("|") == 1
    offset = marked.index("|")
    return build_completion_context(marked.replace("|", ""), offset, **kw)


def long_file(n_lines: int = 600) -> str:
    lines = [f"    value_{i:04d} = compute(value_{max(i - 1, 0):04d}, {i})" for i in range(n_lines)]
    return "def main():\n" + "\n".join(lines) + "\n"


def quarter(text: str) -> int:
    return len(text) // 4


def half(text: str) -> int:
    return len(text) // 2


def one_per_char(text: str) -> int:
    return len(text)


# --- splitting at the cursor -----------------------------------------------------------------


def test_split_mid_line():
    ctx = at("def greet(name):\n    print(|)\n    return name\n")
    assert ctx.prompt == "def greet(name):\n    print("
    assert ctx.suffix == ")\n    return name\n"
    assert ctx.line_prefix == "    print("
    assert ctx.line_suffix == ")"
    assert ctx.held_back == ""
    assert ctx.window_start_line == 0


def test_split_at_end_of_line_and_of_file():
    ctx = at("import os\nimport sys|\n\nprint(sys.argv)\n")
    assert ctx.line_prefix == "import sys" and ctx.line_suffix == ""
    assert ctx.suffix == "\n\nprint(sys.argv)\n"

    ctx = at("const x = 1;\nconst y = x +|")
    assert ctx.prompt == "const x = 1;\nconst y = x +"
    assert ctx.suffix == "" and ctx.line_suffix == ""


def test_split_at_start_of_file_and_empty_document():
    ctx = at("|def f():\n    pass\n")
    assert ctx.prompt == "" and ctx.line_prefix == "" and ctx.line_suffix == "def f():"
    ctx = at("|")
    assert (ctx.prompt, ctx.suffix, ctx.line_prefix, ctx.line_suffix, ctx.held_back) == ("", "", "", "", "")


def test_split_with_non_ascii_text():
    # Offsets are code points: accented letters, CJK and an astral emoji are one each.
    doc = "naïve = '日本語 😀'\ncafé = naïve.upper(|) # ✓\n"
    ctx = at(doc)
    assert ctx.prompt == "naïve = '日本語 😀'\ncafé = naïve.upper("
    assert ctx.line_prefix == "café = naïve.upper("
    assert ctx.line_suffix == ") # ✓"
    assert ctx.suffix == ") # ✓\n"
    text = doc.replace("|", "")
    assert ctx.prompt + ctx.suffix == text


def test_offset_is_clamped():
    text = "x = 1\ny = 2"
    assert build_completion_context(text, 10_000).prompt == text
    assert build_completion_context(text, 10_000).suffix == ""
    ctx = build_completion_context(text, -5)
    assert ctx.prompt == "" and ctx.suffix == text


def test_crlf_line_prefix_suffix():
    # "\r" stays with the line; the split itself is on "\n".
    ctx = at("a = 1\r\nb = |2\r\n")
    assert ctx.line_prefix == "b = " and ctx.line_suffix == "2\r"


# --- held-back space (token healing) ---------------------------------------------------------


@pytest.mark.parametrize("marked, held, prompt_end", [
    ("def f(x):\n    return |", " ", "    return"),
    ("def f(x):\n    return |x\n", " ", "    return"),
    ("x = 1  |", " ", "x = 1 "),  # only the last space is held back
    ("def f():\n    |", " ", "\n   "),  # indent-only line
    ("def f():\n\t|", "", "\n\t"),  # a tab is not held back
    ("def f():\n|", "", "def f():\n"),
    ("print(x)|", "", "print(x)"),
    ("s = 'a |b'", " ", "s = 'a"),
])
def test_held_back(marked, held, prompt_end):
    ctx = at(marked)
    assert ctx.held_back == held
    assert ctx.prompt.endswith(prompt_end)
    # The line prefix is the real text, held-back space included.
    assert ctx.line_prefix.endswith(held)
    text = marked.replace("|", "")
    assert text[: marked.index("|")] == ctx.prompt + ctx.held_back


@pytest.mark.parametrize("line_prefix, tail", [
    ("        result.append(os.path.jo", ".jo"),  # a letter run and the character before it
    ("    return", " return"),
    ("x = foo(", "("),  # punctuation: the model may write "(self" as one token
    ("x = foo(self", "(self"),
    ("if a ==", " =="),
    ("foo_bar", "_bar"),
    ("x = y.", "."),
    ("\tfoo", "\tfoo"),
    ("x = ", ""),  # a space: the plain rule
    ("    ", ""),
    ("x = 12", ""),  # a digit is a token of its own
])
def test_open_tail(line_prefix, tail):
    assert open_tail(line_prefix) == tail


@pytest.mark.parametrize("marked, held, prompt_end", [
    ("import os\np = os.path.jo|", ".jo", "os.path"),
    ("def f(x):\n    return|", " return", "\n   "),
    ("def f(x):\n    return |", " ", "    return"),  # after a space: the space alone, as without healing
    ("def f():\n    |", " ", "\n   "),
    ("print(x)|", "", "print(x)"),  # after punctuation: no healing
    ("x = foo(|", "", "x = foo("),
    ("x = self._|", "._", "x = self"),
    ("total = 12|", "", "total = 12"),
])
def test_held_back_with_healing(marked, held, prompt_end):
    ctx = at(marked, last_token=lambda tail: tail)  # each open tail one token
    assert ctx.held_back == held and ctx.prompt.endswith(prompt_end)
    assert marked.replace("|", "")[: marked.index("|")] == ctx.prompt + ctx.held_back


def test_healing_holds_back_the_last_token_only():
    # A tokenizer that makes "(re" + "pr" of "(repr": the prompt ends where its tokens meet.
    ctx = at("write(repr|", last_token=lambda tail: "pr")
    assert ctx.held_back == "pr" and ctx.prompt == "write(re"
    assert at("write(repr|", last_token=lambda tail: "").held_back == ""  # a byte piece: nothing
    assert at("write(repr|", last_token=lambda tail: "xy").held_back == ""  # not the tail's end: nothing


def test_last_tokens_are_remembered_and_the_loop_never_asks():
    asked = []
    cache = LastTokenCache(lambda tail: asked.append(tail) or tail[-2:])
    with pytest.raises(NotCounted):
        cache.cached_only(".jo")
    assert cache(".jo") == "jo" and cache.cached_only(".jo") == "jo" and cache(".jo") == "jo"
    assert asked == [".jo"]


# --- the window ------------------------------------------------------------------------------


def _assert_window_shape(ctx, text: str, offset: int) -> None:
    body = text[:offset]
    body = body[: len(body) - len(ctx.held_back)]
    assert body.endswith(ctx.prompt)  # the prompt ends exactly at the cursor
    lines = body.split("\n")
    assert ctx.prompt == "\n".join(lines[ctx.window_start_line:])  # it starts at a line start


def test_short_file_is_sent_whole():
    text = long_file(20)
    ctx = build_completion_context(text, len(text))
    assert ctx.window_start_line == 0 and ctx.prompt == text


@pytest.mark.parametrize("count_tokens", [None, quarter, half], ids=["chars", "len/4", "len/2"])
def test_window_start_is_a_multiple_of_the_step(count_tokens):
    text = long_file(600)
    ctx = build_completion_context(text, len(text), budget_tokens=1536, count_tokens=count_tokens)
    assert ctx.window_start_line > 0
    assert ctx.window_start_line % WINDOW_STEP_LINES == 0
    _assert_window_shape(ctx, text, len(text))


@pytest.mark.parametrize("count_tokens", [None, quarter], ids=["chars", "len/4"])
def test_window_start_is_stable_while_typing_near_the_end(count_tokens):
    text = long_file(600)
    starts = set()
    prompts = []
    typed = ""
    for extra in "    result = compute(value_0599, 600)\n    return result\n    # done":
        typed += extra
        doc = text + typed
        ctx = build_completion_context(doc, len(doc), budget_tokens=1536, count_tokens=count_tokens)
        starts.add(ctx.window_start_line)
        prompts.append(ctx.prompt)
    assert len(starts) == 1, starts
    (start,) = starts
    assert start > 0 and start % WINDOW_STEP_LINES == 0
    # Every prompt shares the same beginning: only the tail changes, so a prefix cache hits.
    first_line = prompts[0].split("\n", 1)[0]
    assert all(p.split("\n", 1)[0] == first_line for p in prompts)
    assert all(p.startswith(prompts[0][:-1]) for p in prompts[1:] if len(p) >= len(prompts[0]))


def test_window_start_stable_when_cursor_moves_within_the_last_lines():
    text = long_file(600)
    ends = [len(text) - k for k in (1, 30, 60, 90)]
    starts = {build_completion_context(text, e).window_start_line for e in ends}
    assert len(starts) == 1


@pytest.mark.parametrize("budget", [64, 256, 1536])
@pytest.mark.parametrize("count_tokens", [quarter, half, one_per_char], ids=["len/4", "len/2", "len"])
def test_budget_respected_with_count_tokens(budget, count_tokens):
    text = long_file(600)
    offset = text.index("value_0450 =") + len("value_0450 = comp")
    ctx = build_completion_context(text, offset, budget_tokens=budget, count_tokens=count_tokens)
    assert count_tokens(ctx.prompt) <= budget
    assert ctx.prompt.endswith("value_0450 = comp")
    _assert_window_shape(ctx, text, offset)


@pytest.mark.parametrize("budget", [64, 512])
def test_budget_respected_by_characters_without_count_tokens(budget):
    text = long_file(600)
    ctx = build_completion_context(text, len(text), budget_tokens=budget)
    assert len(ctx.prompt) <= budget * CHARS_PER_TOKEN
    _assert_window_shape(ctx, text, len(text))


def test_window_uses_as_much_as_fits_in_coarse_steps():
    # Dropping one more step would be needless: the window before it did not fit.
    text = long_file(600)
    ctx = build_completion_context(text, len(text), budget_tokens=1536, count_tokens=quarter)
    lines = text.split("\n")
    earlier = "\n".join(lines[ctx.window_start_line - WINDOW_STEP_LINES:])
    assert quarter(earlier) > 1536 or len(earlier) > 1536 * CHARS_PER_TOKEN


def test_one_huge_line_is_cut_to_fit():
    minified = "var a=" + ",".join(f"f{i}(x{i})" for i in range(3000)) + ";"
    text = "// bundle\n" + minified
    ctx = build_completion_context(text, len(text), budget_tokens=100, count_tokens=quarter)
    assert quarter(ctx.prompt) <= 100
    assert ctx.prompt and text.endswith(ctx.prompt)  # the tail, up to the cursor
    assert ctx.window_start_line == 1


def test_one_huge_dense_line_is_cut_to_fit():
    text = "s = '" + "日本語のテキスト" * 1000
    ctx = build_completion_context(text, len(text), budget_tokens=100, count_tokens=one_per_char)
    assert one_per_char(ctx.prompt) <= 100


def test_line_count_cache_counts_the_unchanged_lines_once_and_bounds_the_cursor_line():
    from aipc_lsp.context import BOUNDED_LINE_BYTES, LineCountCache

    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return len(text.split())

    cache = LineCountCache(count)
    head = "def f(a, b):\n    return a\n"
    assert cache(head + "x = 1") == 5 + 5  # 5 words above, the cursor line's 5 bytes
    assert cache(head + "x = 12") == 5 + 6
    assert cache(head + "s = 'é'") == 5 + 8  # bytes, not characters: a bound
    assert counted == [head]  # typing on the cursor's line asks the tokenizer nothing
    long_line = "y = " + "a + " * BOUNDED_LINE_BYTES
    assert cache(head + long_line) == 5 + len(long_line.split())  # counted: a bound would be far off
    assert cache("no newline here") == 3


# --- the suffix ends with the definition holding the cursor --------------------------------------

from aipc_lsp.context import definition_end  # noqa: E402
from aipc_lsp.fim import QWEN  # noqa: E402

CLASS = ("class Stack:\n    def push(self, item):\n        X\n        self.count += 1\n\n"
         "    @property\n    def size(self):\n        return len(self.items)\n")


def _split(text: str) -> tuple[str, str]:
    at = text.index("X")
    return text[:at], text[at + 1:]


def test_the_suffix_stops_at_the_next_definition_at_the_level_of_the_one_holding_the_cursor():
    before, after = _split(CLASS)
    assert after[:definition_end(before, after, 10_000)] == "\n        self.count += 1\n\n"
    ctx = build_completion_context(before + after, len(before), fim=QWEN, suffix_to_definition_end=True)
    assert ctx.suffix_window == "\n        self.count += 1"
    assert ctx.suffix == after  # post-processing still sees the whole rest of the document
    whole = build_completion_context(before + after, len(before), fim=QWEN)
    assert "def size" in whole.suffix_window


@pytest.mark.parametrize("text, kept", [
    # A function nested in the one being written is part of it.
    ("def outer():\n    X\n    def inner():\n        return 1\n    return inner\n\ndef other():\n    pass\n",
     "\n    def inner():\n        return 1\n    return inner\n\n"),
    # Code outside any definition: the rest of the file.
    ("import os\nX\nprint(os.sep)\ndef later():\n    pass\n", "\nprint(os.sep)\ndef later():\n    pass\n"),
    # JavaScript, Go, Rust.
    ("function a() {\n  X\n  return 1;\n}\n\nexport function b() {}\n", "\n  return 1;\n}\n\n"),
    ("func A() {\n\tX\n}\n\nfunc B() {}\n", "\n}\n\n"),
    ("impl S {\n    pub fn a(&self) {\n        X\n    }\n    pub fn b(&self) {}\n}\n", "\n    }\n"),
    # The cursor's own line is never cut, even when it opens a definition itself.
    ("class A:\n    pass\ndef fX(): pass\ndef g(): pass\n", "(): pass\n"),
])
def test_where_a_definition_ends(text, kept):
    before, after = _split(text)
    assert after[:definition_end(before, after, 10_000)] == kept


def test_the_search_for_the_end_stays_within_the_limit():
    before, after = _split(CLASS)
    assert definition_end(before, after, 10) == len(after)  # the next definition is further: nothing cut
