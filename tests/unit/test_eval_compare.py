"""aipc_lsp.eval.compare: two eval reports task by task (`aipc-lsp eval --compare`)."""

from __future__ import annotations

import json

import pytest

from aipc_lsp.cli import main as cli_main
from aipc_lsp.eval.compare import CompareError, compare, load_run, main, render


def result(task_id, suggestion, expected, exact, passed=None, ms=100.0):
    return {"id": task_id, "source": "dev", "kind": "line", "exact": exact, "edit_sim": 1.0 if exact else 0.5,
            "empty": not suggestion, "passed": passed, "ms": ms, "suggestion": suggestion, "expected": expected}


BEFORE = [result("a.py:1:line", "x = 1", "x = 1", True, True),
          result("a.py:2:line", "y = 0", "y = 2", False, False),
          result("a.py:3:line", "", "z = 3", False, False),
          result("a.py:4:line", "w = 4", "w = 4", True, None),
          result("only-before.py:1:line", "q", "q", True)]
AFTER = [result("a.py:1:line", "x = 2", "x = 1", False, False),
         result("a.py:2:line", "y = 2", "y = 2", True, True),
         result("a.py:3:line", "z = 3", "z = 3", True, True),
         result("a.py:4:line", "w = 4", "w = 4", True, None),
         result("only-after.py:1:line", "r", "s", False)]


def report(label, results):
    return {"tasks": len(results), "contenders": [{"label": label, "kind": "server", "results": results}]}


def test_only_the_tasks_both_runs_answered_count_and_each_change_is_listed():
    got = compare(BEFORE, AFTER)
    assert got["tasks"] == 4 and got["differ"] == 3
    assert got["before"]["exact"] == 0.5 and got["after"]["exact"] == 0.75
    assert got["before"]["pass_at_1"] == pytest.approx(1 / 3) and got["after"]["pass_at_1"] == pytest.approx(2 / 3)
    assert {k: got["exact"][k] for k in ("ours_only", "theirs_only", "tasks")} == {
        "ours_only": 2, "theirs_only": 1, "tasks": 4}
    assert got["exact"]["p"] == 1.0  # 2 against 1 says nothing
    assert (got["passed"]["ours_only"], got["passed"]["theirs_only"], got["passed"]["tasks"]) == (2, 1, 3)
    assert [(c["id"], c["won"]) for c in got["changed"]] == [
        ("a.py:1:line", False), ("a.py:2:line", True), ("a.py:3:line", True)]
    assert got["changed"][1] == {"id": "a.py:2:line", "won": True, "before": "y = 0", "after": "y = 2",
                                 "expected": "y = 2"}


def test_the_text_shows_both_figures_the_sign_test_and_the_changed_answers():
    text = render(compare(BEFORE, AFTER), "run A", "run B")
    lines = text.splitlines()
    assert lines[:3] == ["before: run A", "after:  run B",
                         "over the 4 tasks both runs answered (3 answers differ):"]
    assert "exact            50.0%     75.0%" in lines
    assert "first lines right: only after 2, only before 1 (sign test p=1.00)" in lines
    assert "checks passed: only after 2, only before 1 (sign test p=1.00)" in lines
    assert "  won  a.py:3:line: '' -> 'z = 3'  (expected 'z = 3')" in lines
    assert any(l.startswith("  lost a.py:1:line: 'x = 1' -> 'x = 2'") for l in lines)


def test_a_lopsided_split_gets_a_small_p():
    before = [result(f"t{i}", "no", "yes", False) for i in range(10)]
    after = [result(f"t{i}", "yes", "yes", True) for i in range(10)]
    assert compare(before, after)["exact"]["p"] == pytest.approx(2 / 2 ** 10)


def test_from_files_through_the_command_line(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report("without", BEFORE)))
    b.write_text(json.dumps(report("with", AFTER)))
    assert load_run(a) == ("without", BEFORE)
    assert cli_main(["eval", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"before: without ({a})\nafter:  with ({b})\n")
    assert main(str(a), str(b)) + "\n" == out


@pytest.mark.parametrize("content, message", [
    (None, "No such file"),
    ("not json", "not a report of `aipc-lsp eval --json`"),
    (json.dumps({"contenders": []}), "not a report"),
    (json.dumps({"contenders": ["a label"]}), "not a report"),
    (json.dumps({"contenders": [{"label": "x", "error": "no model"}]}), "no answers (no model)"),
    (json.dumps(report("x", [{"suggestion": "no id"}])), "lacks what"),
])
def test_a_file_that_is_not_a_report_is_a_clear_error(tmp_path, capsys, content, message):
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    good.write_text(json.dumps(report("fine", BEFORE)))
    if content is not None:
        bad.write_text(content)
    assert cli_main(["eval", "--compare", str(bad), str(good)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_runs_without_a_task_in_common_are_an_error():
    with pytest.raises(CompareError, match="no task in common"):
        compare(BEFORE[:1], AFTER[4:])
