"""The ring of other files' snippets: what a request picks, and that it stays put while the user types."""

from __future__ import annotations

from collections import Counter

import pytest

from aipc_lsp.snippets import (MIN_TRIMMED_LINES, WINDOWS_PER_DOCUMENT, Snippet, SnippetRing, declared_names,
                               outline_lines, similarity)

ROOT = "file:///home/me/proj"
A, B, C = f"{ROOT}/pkg/a.py", f"{ROOT}/pkg/b.py", f"{ROOT}/lib/c.py"


def module(name: str, functions: int = 40) -> str:
    """A Python module longer than a chunk: imports, a constant, functions with docstrings and bodies."""
    parts = ["import os", "import sys", "", f"{name.upper()}_LIMIT = 10", ""]
    for i in range(functions):
        parts += [f"def {name}_{i}(value, *, scale={i}):", f'    """Scale {name} number {i}."""',
                  f"    result = value * scale + {i}", f"    return os.path.join(str(result), '{name}{i}')", ""]
    return "\n".join(parts)


def numbered(name: str, count: int = 400) -> str:
    """A document whose every line is distinct, to check which lines a window holds."""
    return "\n".join(f"{name}_line_{i} = compute({i}, '{name}')" for i in range(count))


def ring(**kwargs) -> SnippetRing:
    r = SnippetRing(**kwargs)
    r.set_root(ROOT)
    return r


def paths(snippets: list[Snippet]) -> list[str]:
    return [s.path for s in snippets]


def visited_b(line: int, budget: int = 100_000) -> tuple[SnippetRing, Snippet, list[str]]:
    """A ring where B's cursor rested at `line`, and the one snippet of it a request in A picks."""
    r = ring()
    r.visited(B, numbered("b"), line)
    (snippet,) = r.pick(A, "", budget)
    return r, snippet, snippet.text.split("\n")


# --- what a request picks ------------------------------------------------------------------------

def test_only_other_documents_root_relative_oldest_first():
    r = ring()
    r.opened(A, module("alpha"))
    r.opened(B, module("beta"))
    r.opened(C, module("gamma"))
    assert paths(r.pick(A, "", 100_000)) == ["pkg/b.py", "lib/c.py"]
    assert paths(r.pick(C, "", 100_000)) == ["pkg/a.py", "pkg/b.py"]


def test_an_opened_module_gives_its_outline_not_its_first_lines():
    r = ring()
    r.opened(B, module("beta"))
    (snippet,) = r.pick(A, "", 100_000)
    lines = snippet.text.split("\n")
    assert "def beta_39(value, *, scale=39):" not in lines  # a chunk holds at most chunk_lines lines
    assert lines[:4] == ["BETA_LIMIT = 10", "def beta_0(value, *, scale=0):", '    """Scale beta number 0."""',
                         "def beta_1(value, *, scale=1):"]
    assert not any(l.startswith("import") or "result" in l for l in lines)
    assert len(lines) == 64


def test_typing_in_the_current_document_never_changes_its_pick():
    r = ring(max_chunks=4)
    text_a = numbered("a")
    r.opened(A, text_a)
    r.opened(B, module("beta"))
    r.visited(C, numbered("c"), 200)
    r.opened(A, text_a)  # A active again: B's and C's events are in the ring now
    before = r.pick(A, "", 100_000)
    assert paths(before) == ["pkg/b.py", "lib/c.py"]
    # Keystrokes, cursor rests and saves all over A, enough to fill the ring many times over.
    for step in range(60):
        line = step * 131 % 400
        text_a = text_a.replace(f"a_line_{line} =", f"a_line_{line}_x =")
        r.edited(A, text_a, line)
        r.visited(A, text_a, (line + 200) % 400)
        if step % 10 == 0:
            r.saved(A, text_a)
        r.edited(A, text_a, None)
        assert r.pick(A, "", 100_000) == before
    # The user moves to B: what A's events made is in the ring for B (A's outline and windows).
    after_b = r.pick(B, "", 100_000)
    assert "pkg/a.py" in paths(after_b)
    assert any("a_line_" in s.text and "_x =" in s.text for s in after_b if s.path == "pkg/a.py")


def test_a_new_chunk_changes_only_the_end_of_the_list():
    r = ring()
    r.opened(B, module("beta"))
    r.opened(C, module("gamma"))
    before = r.pick(A, "", 100_000)
    r.visited(f"{ROOT}/d.py", numbered("d"), 100)
    after = r.pick(A, "", 100_000)
    assert after[: len(before)] == before and paths(after[len(before):]) == ["d.py"]


def test_a_cursor_moving_a_few_lines_makes_the_same_window():
    r = ring()
    r.visited(B, numbered("b"), 100)
    first = r.pick(A, "", 100_000)
    for line in (101, 103, 97):
        r.visited(B, numbered("b"), line)
        assert r.pick(A, "", 100_000) == first
    assert r.chunk_count == 1


def test_an_unchanged_save_or_reopen_keeps_the_order():
    r = ring()
    r.opened(B, module("beta"))
    r.opened(C, module("gamma"))
    before = r.pick(A, "", 100_000)
    r.saved(B, module("beta"))
    r.opened(A, "x = 1")
    assert r.pick(A, "", 100_000) == before


# --- against the cursor's window ------------------------------------------------------------------

def test_a_chunk_the_local_window_mostly_holds_is_left_out():
    r, window, lines = visited_b(100)
    most = "\n".join(lines[: len(lines) // 2 + 2])
    assert r.pick(A, "    " + most.replace("\n", "\n    "), 100_000) == []  # indentation does not matter
    some = "\n".join(lines[: len(lines) // 3])
    assert r.pick(A, some, 100_000) == [window]


def test_lines_that_say_nothing_do_not_count_as_shared():
    r = ring()
    text = "\n".join(["def f(x):", "    if x:", "        return 1", "    else:", "        pass", "    return 0",
                      "", "def g(y):", "    return f(y) + 1"])
    r.opened(B, text)
    local = "else:\n    pass\nreturn 0\n}\n)\nreturn\n"
    assert paths(r.pick(A, local, 100_000)) == ["pkg/b.py"]


# --- the budget ------------------------------------------------------------------------------------

def cost(snippets: list[Snippet]) -> int:
    return sum(len(s.path) + len(s.text) + 2 for s in snippets)


def test_whole_chunks_within_the_budget_the_oldest_dropped_first():
    r = ring()
    for name in ("one", "two", "three"):
        r.visited(f"{ROOT}/{name}.py", "\n".join(f"{name} = {i}" for i in range(10)), 0)
    everything = r.pick(A, "", 100_000)
    assert paths(everything) == ["one.py", "two.py", "three.py"]
    two_fit = cost(everything[1:])
    assert r.pick(A, "", two_fit) == everything[1:]
    assert r.pick(A, "", two_fit + 5) == everything[1:]  # not enough for a part of "one" worth sending
    assert r.pick(A, "", 0) == []


def test_the_newest_chunk_over_budget_is_trimmed_to_whole_lines_around_its_focus():
    _, snippet, lines = visited_b(150, 400)
    assert cost([snippet]) <= 400 and len(lines) >= MIN_TRIMMED_LINES
    assert "b_line_150 = compute(150, 'b')" in lines
    assert all(l in numbered("b").split("\n") for l in lines)
    numbers = [int(l.split("_")[2].split()[0]) for l in lines]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # contiguous


def test_a_trimmed_chunk_begins_and_ends_on_code():
    r = ring()
    r.visited(B, module("beta"), 60)
    for budget in range(250, 600, 7):
        (snippet,) = r.pick(A, "", budget)
        lines = snippet.text.split("\n")
        assert lines[0].strip() and lines[-1].strip() and cost([snippet]) <= budget


def test_a_trimmed_outline_keeps_its_head():
    r = ring()
    r.opened(B, module("beta"))
    (snippet,) = r.pick(A, "", 300)
    assert snippet.text.startswith("BETA_LIMIT = 10\ndef beta_0(") and cost([snippet]) <= 300


# --- replacing and bounding ------------------------------------------------------------------------

def test_a_window_replaces_the_overlapping_window_of_its_document():
    for flush_between in (False, True):  # B's places merged while pending, or replaced in the ring
        r = ring()
        r.visited(B, numbered("b"), 100)
        if flush_between:
            r.pick(A, "", 100_000)
        r.visited(B, numbered("b"), 130)
        (snippet,) = r.pick(A, "", 100_000)
        assert "b_line_130 = compute(130, 'b')" in snippet.text
        r.visited(B, numbered("b"), 300)
        assert len(r.pick(A, "", 100_000)) == 2


def test_a_document_keeps_its_newest_windows_only():
    r = ring()
    text = numbered("b", 2000)
    for i in range(WINDOWS_PER_DOCUMENT + 2):
        r.visited(B, text, i * 200)
        r.pick(A, "", 0)  # B's places into the ring one at a time
    kept = r.pick(A, "", 100_000)
    assert len(kept) == WINDOWS_PER_DOCUMENT
    assert f"b_line_{(WINDOWS_PER_DOCUMENT + 1) * 200} =" in kept[-1].text
    assert "b_line_0 =" not in "".join(s.text for s in kept)


def test_a_saved_document_replaces_its_outline():
    r = ring()
    r.opened(B, module("beta"))
    r.saved(B, module("beta").replace("def beta_0(", "def beta_zero("))
    (snippet,) = r.pick(A, "", 100_000)
    assert "def beta_zero(" in snippet.text and r.chunk_count == 1


def test_a_chunk_much_like_a_new_one_is_evicted():
    r = ring()
    r.opened(B, module("beta"))
    r.opened(C, module("beta").replace("BETA_LIMIT = 10", "BETA_LIMIT = 11"))  # a copy of b.py
    assert paths(r.pick(A, "", 100_000)) == ["lib/c.py"] and r.evicted == 1


def test_the_ring_is_bounded():
    r = ring(chunk_lines=8, max_chunks=3, max_line_chars=40)
    for i in range(6):
        r.visited(f"{ROOT}/f{i}.py", "\n".join([f"x{i}_{j} = {j}" for j in range(50)] + ["y = '" + "z" * 60 + "'"]), 49)
    picked = r.pick(A, "", 100_000)
    assert paths(picked) == ["f3.py", "f4.py", "f5.py"]
    for s in picked:
        lines = s.text.split("\n")
        assert len(lines) <= 8 and all(len(l) <= 40 for l in lines)


def test_tiny_chunks_are_not_kept():
    r = ring()
    r.opened(B, "x = 1\n\n")
    r.visited(C, "\n\n\ny = 2\n", 3)
    assert r.pick(A, "", 100_000) == [] and r.chunk_count == 0


# --- documents coming and going --------------------------------------------------------------------

def test_a_closed_document_keeps_its_chunks_and_its_last_edit():
    r = ring()
    r.opened(B, numbered("b"))
    text = numbered("b").replace("b_line_250 =", "b_line_250_edited =")
    r.edited(B, text, 250)
    r.closed(B)
    picked = r.pick(A, "", 100_000)
    assert paths(picked) == ["pkg/b.py", "pkg/b.py"]
    assert "b_line_250_edited =" in picked[1].text


def test_a_whole_document_change_finds_its_first_changed_line():
    r = ring()
    text = numbered("b")
    r.opened(B, text)
    r.edited(B, text.replace("b_line_300 =", "b_line_300_new ="), None)
    windows = r.pick(A, "", 100_000)[1:]
    assert len(windows) == 1 and "b_line_300_new =" in windows[0].text


def test_the_setting_off_clears_everything():
    r = ring()
    r.opened(B, module("beta"))
    r.clear()
    assert r.pick(A, "", 100_000) == [] and r.chunk_count == 0


# --- paths -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("root, uri, path", [
    ("file:///home/me/proj", "file:///home/me/proj/pkg/a.py", "pkg/a.py"),
    ("file:///home/me/proj/", "file:///home/me/proj/a%20b.py", "a b.py"),
    ("/home/me/proj", "file:///home/me/proj/pkg/a.py", "pkg/a.py"),
    ("file:///home/me/proj", "file:///home/me/projects/a.py", "a.py"),  # a sibling, not under the root
    ("file:///home/me/proj", "file:///etc/hosts.py", "hosts.py"),
    ("file:///C:/Users/me/proj", "file:///c%3A/Users/me/proj/pkg/a.py", "pkg/a.py"),
    ("C:\\Users\\me\\proj", "file:///c%3A/Users/me/proj/pkg/a.py", "pkg/a.py"),
    ("c:/users/ME/proj", "file:///C:/Users/me/proj/pkg/a.py", "pkg/a.py"),  # Windows paths ignore case
    ("file:///home/me/proj", "untitled:Untitled-1", "Untitled-1"),
    ("file:///home/me/proj", "vscode-notebook-cell:/home/me/proj/nb.ipynb#W0sZmlsZQ%3D%3D", "nb.ipynb"),
    (None, "file:///home/me/proj/pkg/a.py", "a.py"),
])
def test_paths_as_the_model_sees_them(root, uri, path):
    r = SnippetRing()
    r.set_root(root)
    assert r.path_of(uri) == path


def test_the_deepest_workspace_folder_holds_the_path():
    r = SnippetRing()
    r.set_roots(["file:///home/me/proj", "file:///home/me/proj/sub"])
    assert r.path_of("file:///home/me/proj/sub/x.py") == "x.py"
    assert r.path_of("file:///home/me/proj/y.py") == "y.py"
    assert r.path_of("file:///home/me/proj/pkg/z.py") == "pkg/z.py"


# --- outlines --------------------------------------------------------------------------------------

def test_outline_of_python_signatures_docstrings_constants_fields():
    text = '''"""Module docstring that goes on
and on (about things) for a while.
"""
import os
from typing import Any

LIMIT = 3
log = make_logger(__name__)


@dataclass(frozen=True)
class Point:
    """A point."""

    x: float
    y: float = 0.0  # the default

    def distance(
        self,
        other: "Point",
    ) -> float:
        """
        How far.
        More.
        """
        dx = self.x - other.x
        return dx


async def fetch(url: str) -> bytes:
    data = await get(url)
    return data
''' + "\n" * 80
    lines = outline_lines(text.split("\n"), 64)
    assert lines == ["LIMIT = 3", "log = make_logger(__name__)", "@dataclass(frozen=True)", "class Point:",
                     '    """A point."""', "    x: float", "    y: float = 0.0  # the default",
                     "    def distance(", "        self,", '        other: "Point",', "    ) -> float:",
                     '        """', "        How far.", "async def fetch(url: str) -> bytes:"]


def test_outline_of_other_languages():
    ts = "\n".join(["import { x } from './x';", "export const LIMIT = 3;", "export interface Shape {",
                    "  area(): number;", "}", "export class Circle implements Shape {", "  radius: number;",
                    "  constructor(r: number) {", "    this.radius = r;", "  }", "}",
                    "export function make(r: number): Circle {", "  const c = new Circle(r);", "  return c;", "}"]
                   + [""] * 80)
    assert outline_lines(ts.split("\n"), 64) == [
        "export const LIMIT = 3;", "export interface Shape {", "  area(): number;",
        "export class Circle implements Shape {", "  radius: number;", "  constructor(r: number) {",
        "export function make(r: number): Circle {"]
    go = "\n".join(["package shapes", "", "type Circle struct {", "\tRadius float64", "}", "",
                    "func (c Circle) Area() float64 {", "\treturn 3.14 * c.Radius * c.Radius", "}"] + [""] * 80)
    assert outline_lines(go.split("\n"), 64) == ["type Circle struct {", "\tRadius float64",
                                                 "func (c Circle) Area() float64 {"]


def test_a_short_document_goes_in_whole_and_prose_gives_its_head():
    short = "x = 1\ny = 2\nprint(x + y)"
    assert outline_lines(short.split("\n"), 64) == short.split("\n")
    prose = [f"Paragraph {i} of the guide, in which we type the following words." for i in range(200)]
    assert outline_lines(prose, 64) == prose[:64]


def test_similarity():
    assert similarity(Counter("a b c".split()), Counter("a b c".split())) == 1.0
    assert similarity(Counter("a b".split()), Counter("c d".split())) == 0.0
    assert similarity(Counter(), Counter()) == 1.0
    assert similarity(Counter("a a b".split()), Counter("a b b".split())) == pytest.approx(2 * 2 / 6)


# --- only the files the code around the cursor uses ------------------------------------------------

MONEY = """from dataclasses import dataclass


@dataclass(frozen=True)
class Money:
    cents: int
    currency: str = "EUR"

    def plus(self, other):
        return Money(self.cents + other.cents, self.currency)


TAX_RATE = 0.2


def parse_amount(text, currency="EUR"):
    \"\"\"'12.50' -> Money(1250).\"\"\"
    whole, _, fraction = text.partition(".")
    return Money(int(whole) * 100 + int(fraction), currency)


def zero(currency="EUR"):
    return Money(0, currency)
"""
MONEY_URI = f"{ROOT}/billing/money.py"


def test_declared_names_are_what_other_code_calls_a_module_by():
    names = declared_names(MONEY.split("\n"))
    assert names == {"Money", "plus", "TAX_RATE", "parse_amount", "zero"}  # not fields, decorators, docstrings
    assert declared_names(["function renderRow(row) {", "export const MAX_ROWS = 50;", "pub fn parse_line(s: &str) {",
                           "func (r *Reader) ReadAll() error {"]) == {"renderRow", "MAX_ROWS", "parse_line", "ReadAll"}


@pytest.mark.parametrize("code, used", [
    ("price = parse_amount(text)", True),  # one telling name
    ("total = Money(0)", True),
    ("import money\nx = 1", True),  # the module's name
    ("a = b.plus(c)\nreturn zero()", True),  # two plain names
    ("seen.plus(item)", False),  # one plain name: could be anything's
    ("rows = sorted(rows)\nreturn rows", False),
])
def test_a_file_goes_in_only_when_the_code_around_the_cursor_uses_it(code: str, used: bool):
    r = ring()
    r.opened(MONEY_URI, MONEY)
    expected = ["billing/money.py"] if used else []
    assert paths(r.pick(A, code, 100_000, used_only=True)) == expected
    assert paths(r.pick(A, code, 100_000)) == ["billing/money.py"]  # every file, as llama.vim sends them


def test_a_window_of_a_file_counts_as_that_file():
    r = ring()
    r.visited(MONEY_URI, MONEY, 20)
    assert [s.path for s in r.pick(A, "amount = parse_amount(raw)", 100_000, used_only=True)] == ["billing/money.py"]
    assert r.pick(A, "items.append(item)", 100_000, used_only=True) == []
