"""aipc_lsp.eval.scoring and report: the metrics on known answers."""

from __future__ import annotations

import pytest

from aipc_lsp.eval.report import check_targets, render_table, sign_test, summarize
from aipc_lsp.eval.scoring import accept, completed_text, edit_similarity, evaluate, levenshtein, run_checks, score
from aipc_lsp.eval.tasks import Site, build_tasks, corpus_text, make_task

TEXT = "def f(items):\n    total = 0\n    for x in items:\n        total += x\n    return total\n"


def line_task():
    return make_task(source="stdlib", kind="line", path="x/f.py", text=TEXT, site=Site(3, 3, 8))


def accepted_with(task, insert):
    return accept(task.text, task.offset, task.offset, insert)


@pytest.mark.parametrize("a, b, distance", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "abc", 0),
                                            ("flaw", "lawn", 2)])
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def test_edit_similarity():
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)


def test_an_exact_line_with_other_trailing_space_and_more_lines_after_it():
    task = line_task()
    got = score(task, accepted_with(task, "total += x  \n        print(total)"), "total += x  \n        print(total)")
    # The first line matches; edit similarity looks at as many lines as the hole held (one).
    assert got == {"exact": True, "edit_sim": 1.0, "empty": False}


def test_a_wrong_line():
    task = line_task()
    got = score(task, accepted_with(task, "total -= x"), "total -= x")
    assert not got["exact"] and got["edit_sim"] == pytest.approx(1 - 1 / 10)


def test_no_suggestion():
    task = line_task()
    got = score(task, task.text, "")
    assert got == {"exact": False, "edit_sim": 0.0, "empty": True}


def test_a_line_rewritten_with_its_own_indentation_is_compared_from_its_code():
    # llama.vim replaces a blank cursor line with the model's line, indentation included.
    task = line_task()
    lines = task.text.split("\n")
    lines[task.line] = "      total += x"
    assert completed_text(task, "\n".join(lines)) == "total += x"
    assert score(task, "\n".join(lines), "total += x")["exact"]


def test_a_block_is_compared_over_its_lines():
    task = make_task(source="stdlib", kind="block", path="x/f.py", text=TEXT.replace("total += x", "y = x\n        total += y"),
                     site=Site(3, 4, 8))
    assert task.expected == "y = x\n        total += y"
    assert score(task, accepted_with(task, task.expected + "\n        extra()"), task.expected)["edit_sim"] == 1.0
    half = score(task, accepted_with(task, "y = x"), "y = x")
    assert half["exact"] and 0.2 < half["edit_sim"] < 0.5


def test_a_midline_answer_that_replaces_a_range():
    task = make_task(source="stdlib", kind="midline", path="x/f.py", text=TEXT, site=Site(4, 4, 8))
    assert task.expected == "rn total"
    # The editor replaces [start, end) with the item's text: here the word typed before the cursor too.
    accepted = accept(task.text, task.offset - 4, task.offset, "return total")
    assert score(task, accepted, "return total")["exact"]


def test_checks_pass_fail_and_time_out():
    task = next(t for t in build_tasks(sources=("tests",)) if t.module == "intervals")
    assert run_checks(task, corpus_text("intervals")) is True
    assert run_checks(task, corpus_text("intervals").replace("return merged", "return merged[:1]")) is False
    assert run_checks(task, "this is not python") is False
    looping = corpus_text("intervals") + "\nwhile True:\n    pass\n"
    assert run_checks(task, looping, timeout=2) is False


def test_evaluate_and_summarize():
    task = next(t for t in build_tasks(sources=("tests",), kinds=("line",)))
    right = evaluate(task, {"suggestion": task.expected, "accepted": accepted_with(task, task.expected), "ms": 100.0})
    wrong = evaluate(task, {"suggestion": "", "accepted": task.text, "ms": 300.0})
    assert right["exact"] and right["passed"] and not right["empty"]
    assert not wrong["exact"] and wrong["passed"] is False and wrong["empty"]
    s = summarize([right, wrong])
    assert s["exact"] == 0.5 and s["pass_at_1"] == 0.5 and s["empty"] == 0.5 and s["n_checked"] == 2
    assert s["ms_p50"] in (100.0, 300.0) and s["ms_p95"] == 300.0


def test_the_table_has_a_row_per_contender():
    task = line_task()
    result = evaluate(task, {"suggestion": "total += x", "accepted": accepted_with(task, "total += x"), "ms": 80.0})
    report = {"quick": True, "tasks": 1, "task_counts": {"stdlib": 1}, "python": "3.x", "other_files": True,
              "kinds": ["line"], "contenders": [
                  {"label": "ours", "summary": summarize([result]), "by_source": {"stdlib": summarize([result])},
                   "by_kind": {"line": summarize([result])},
                   "slots": [{"slot": "openvino-cpu", "state": "unhealthy", "error": "no token for 60 s"}]},
                  {"label": "theirs", "error": "http://x is unreachable"}]}
    table = render_table(report)
    assert "ours" in table and "100.0%" in table and "theirs" in table and "unreachable" in table
    assert "slot openvino-cpu ended the run unhealthy: no token for 60 s" in table
    assert "other files opened\n" in table
    assert "other files opened, and 2 unrelated per task" in render_table({**report, "unrelated": 2})
    assert "other files not opened" in render_table({**report, "other_files": False})


def test_targets_against_the_peer_and_the_baseline():
    def row(kind, exact, passed):
        return {"kind": kind, "label": kind, "summary": {"exact": exact, "pass_at_1": passed}}

    report = {"contenders": [row("server", 0.40, 0.30), row("remote", 0.35, 0.30), row("baseline", 0.2, 0.1)]}
    verdicts = {t["target"]: t["met"] for t in check_targets(report)}
    assert verdicts == {"exact match ahead of llama.cpp (llama.vim's prompt)": True,
                        "exact match >= 2x the prefix-only baseline": True,
                        "pass@1 ahead of llama.cpp (llama.vim's prompt)": False,  # a tie is not ahead
                        "pass@1 >= 2x the prefix-only baseline": True}
    assert check_targets({"contenders": [row("server", 0.4, 0.3)]}) == []
    assert all("paired" not in t for t in check_targets(report))  # no per-task results: no pairs
    failed = {"contenders": [row("server", 0.4, 0.3), {"kind": "remote", "label": "r", "error": "unreachable"}]}
    assert [t["met"] for t in check_targets(failed)] == [None, None]
    # A peer whose requests failed is scored as answering nothing: no verdict on that.
    down = {"contenders": [row("server", 0.4, 0.3), {**row("remote", 0.0, 0.0), "summary": {
        "exact": 0.0, "pass_at_1": 0.0, "errors": 187}}]}
    assert [(t["met"], t["failed"]) for t in check_targets(down)] == [(None, 187), (None, 187)]
    assert "not measured (187 requests failed)" in render_table(
        {"quick": False, "tasks": 1, "task_counts": {}, "python": "3.x", "other_files": True, "kinds": [],
         "contenders": [], "targets": check_targets(down)})


def test_targets_count_the_tasks_only_one_side_got_right():
    def result(i, exact, passed=None):
        return {"id": f"t{i}", "exact": exact, "passed": passed}

    ours = [result(0, True, True), result(1, True, False), result(2, False, None), result(3, True, True)]
    theirs = [result(0, True, False), result(1, False, False), result(2, True, None), result(3, False, True)]
    report = {"contenders": [{"kind": "server", "summary": {"exact": 0.75, "pass_at_1": 0.67}, "results": ours},
                             {"kind": "remote", "summary": {"exact": 0.5, "pass_at_1": 0.33}, "results": theirs}]}
    rows = {t["target"].split(" ahead")[0]: t for t in check_targets(report)}
    assert rows["exact match"]["paired"] == {"ours_only": 2, "theirs_only": 1, "tasks": 4, "p": 1.0}
    assert rows["pass@1"]["paired"] == {"ours_only": 1, "theirs_only": 0, "tasks": 3, "p": 1.0}
    assert "right only here 2, only there 1, sign test p=1.00" in render_table(
        {"quick": False, "tasks": 4, "task_counts": {"tests": 4}, "python": "3.x", "other_files": True,
         "kinds": ["line"], "contenders": [], "targets": check_targets(report)})


@pytest.mark.parametrize("wins, losses, p", [(0, 0, 1.0), (3, 3, 1.0), (8, 3, 0.2266), (10, 0, 0.00195), (0, 6, 0.03125)])
def test_sign_test(wins, losses, p):
    assert sign_test(wins, losses) == pytest.approx(p, abs=1e-4)
