"""aipc_lsp.eval.tasks: the task set is deterministic, each hole is where it says, and every
corpus task's checks can tell a right completion from a wrong one."""

from __future__ import annotations

import ast
import collections

import pytest

from aipc_lsp.eval.scoring import accept, run_checks
from aipc_lsp.eval.tasks import (BUILDERS, CROSSFILE_MODULES, KINDS, ORIGINAL_PER_FILE, QUICK_PER_GROUP, SOURCES, Site,
                                 build_tasks, corpus_text, imported_names, make_task, tasks_for_file, with_unrelated)

SAMPLE = '''def total(items):
    result = 0
    for item in items:
        if item.price > 0:
            result += item.price * item.count
            seen.add(item)
    return round(result, 2)
'''


def test_the_task_set_is_the_same_on_every_build():
    first, second = build_tasks(), build_tasks()
    assert [t.id for t in first] == [t.id for t in second]
    assert [(t.text, t.expected) for t in first] == [(t.text, t.expected) for t in second]
    assert len({t.id for t in first}) == len(first)


def test_every_source_and_kind_is_represented():
    groups = collections.Counter((t.source, t.kind) for t in build_tasks())
    # The cross-file modules' few lines that use a helper's name are all taken by the other kinds.
    assert set(groups) == {(s, k) for s in SOURCES for k in KINDS} - {("crossfile", "midword")}
    assert sum(n for (s, _), n in groups.items() if s != "stdlib") >= 30  # code with checks: pass@1 means something


def test_putting_the_expected_text_back_gives_the_original_file():
    for task in build_tasks(sources=("tests", "crossfile")):
        restored = accept(task.text, task.offset, task.offset, task.expected)
        assert restored == corpus_text(task.module), task.id


@pytest.mark.parametrize("kind", KINDS)
def test_the_cursor_sits_where_the_kind_says(kind):
    for task in build_tasks(kinds=(kind,)):
        line = task.text.split("\n")[task.line]
        assert len(line) == task.column, task.id  # the hole runs to the end of the cursor line
        if kind == "midline":
            assert line.strip() and len(task.expected.strip()) >= 3 and "\n" not in task.expected
        elif kind == "midword":  # 1-3 characters into a name, at least 2 of it left
            assert line[-1].isidentifier() and task.expected[:2].isidentifier() and "\n" not in task.expected
        else:
            assert not line.strip()  # only the indentation is left
            assert task.expected == task.expected.lstrip()
        if kind == "block":
            assert 2 <= task.expected.count("\n") + 1 <= 4
        else:
            assert "\n" not in task.expected


def test_more_holes_keep_the_original_set():
    """The original 78 tasks (what the first counts alone give) are in the larger set, unchanged,
    and marked as such; the quick form picks from them only."""
    original = [t for source in SOURCES for t in BUILDERS[source](ORIGINAL_PER_FILE)]
    full = {t.id: t for t in build_tasks()}
    assert len(full) > 2 * len(original) >= 150
    assert all(full[t.id] == t for t in original)
    assert {t.id for t in full.values() if t.original} == {t.id for t in original}
    assert {t.id for t in build_tasks(quick=True)} <= {t.id for t in original}


def test_quick_and_limit_keep_every_group():
    quick = build_tasks(quick=True)
    assert collections.Counter((t.source, t.kind) for t in quick).most_common(1)[0][1] <= QUICK_PER_GROUP
    # Every group of the original set (the test suite's floors were measured on it: no mid-word tasks).
    original = {(t.source, t.kind) for t in build_tasks() if t.original}
    assert {(t.source, t.kind) for t in quick} == original and all(k != "midword" for _, k in original)
    groups = {(t.source, t.kind) for t in build_tasks()}
    limited = build_tasks(limit=len(groups))
    assert {(t.source, t.kind) for t in limited} == groups


def test_filters():
    tasks = build_tasks(sources=("tests",), kinds=("block",))
    assert tasks and all(t.source == "tests" and t.kind == "block" for t in tasks)


def test_holes_of_each_kind_in_a_sample():
    tasks = tasks_for_file(source="tests", path="x/sample.py", text=SAMPLE,
                           per_kind={"line": 10, "midline": 10, "block": 10})
    by_kind = collections.defaultdict(list)
    for task in tasks:
        by_kind[task.kind].append(task)
    # Simple statements alone on their line, inside the function; blocks of 2-4 lines.
    assert {t.expected for t in by_kind["line"]} <= {"result = 0", "result += item.price * item.count",
                                                     "seen.add(item)", "return round(result, 2)"}
    # The for's body or the if's inside it (they overlap: one is chosen).
    assert [t.expected for t in by_kind["block"]] in (
        ["if item.price > 0:\n            result += item.price * item.count\n            seen.add(item)"],
        ["result += item.price * item.count\n            seen.add(item)"])
    # No line is the hole of two tasks.
    lines = [line for t in tasks for line in range(t.line, t.line + t.expected.count("\n") + 1)]
    assert len(lines) == len(set(lines))


def test_make_task_cuts_the_hole():
    task = make_task(source="tests", kind="midline", path="x/sample.py", text=SAMPLE, site=Site(6, 6, 16))
    assert task.text.split("\n")[6] == "    return round"
    assert task.expected == "(result, 2)"
    assert task.id == "x/sample.py:7:midline"


def test_crossfile_tasks_use_what_only_the_helper_defines():
    tasks = build_tasks(sources=("crossfile",))
    assert len(tasks) >= 9
    for task in tasks:
        helper = CROSSFILE_MODULES[task.module]
        (path, text), = task.other_files
        assert path == f"corpus/{helper}.py" and text == corpus_text(helper)
        names = imported_names(corpus_text(task.module), helper)
        assert any(name in task.expected for name in names), task.id
        defined = {n.name for n in ast.walk(ast.parse(corpus_text(task.module)))
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not names & defined  # only the helper says what they are


def test_unrelated_files_are_opened_before_a_tasks_own_and_never_its_own():
    tasks = build_tasks(sources=("tests", "crossfile"))
    with_two = with_unrelated(tasks, 2)
    assert with_unrelated(tasks, 0) == tasks and with_unrelated(tasks, 2) == with_two  # a fixed choice
    for task, widened in zip(tasks, with_two):
        extra = widened.other_files[:2]
        assert widened.other_files[2:] == task.other_files and len({p for p, _ in extra}) == 2
        own = {task.path} | {p for p, _ in task.other_files}
        for path, text in extra:
            assert path not in own and text == corpus_text(path.removeprefix("corpus/").removesuffix(".py"))
            assert not imported_names(corpus_text(task.module), path.removeprefix("corpus/").removesuffix(".py"))
    assert len({t.other_files[0][0] for t in with_two}) > 3  # not the same file for every task


def test_every_corpus_task_passes_its_checks_completed_and_fails_them_left_empty():
    for task in build_tasks(sources=("tests", "crossfile")):
        assert run_checks(task, accept(task.text, task.offset, task.offset, task.expected)) is True, task.id
        assert run_checks(task, task.text) is False, task.id


def test_stdlib_tasks_have_no_checks_and_come_from_this_interpreter():
    tasks = build_tasks(sources=("stdlib",))
    assert len(tasks) >= 30
    assert all(t.checks is None and t.path.startswith("stdlib/") for t in tasks)
    assert run_checks(tasks[0], tasks[0].text) is None


def test_project_tasks_are_holes_in_this_servers_own_modules_and_not_in_the_eval():
    import aipc_lsp
    from pathlib import Path

    package = Path(aipc_lsp.__file__).resolve().parent
    tasks = build_tasks(sources=("project",))
    assert len(tasks) >= 200 and {t.kind for t in tasks} == set(KINDS)
    for task in tasks[:40]:
        assert task.path.startswith("aipc_lsp/") and "/eval/corpus/" not in task.path and task.checks is None
        original = (package.parent / task.path).read_text(encoding="utf-8")
        assert accept(task.text, task.offset, task.offset, task.expected) == original, task.id
    assert not {t.source for t in build_tasks()} & {"project", "dev"}
