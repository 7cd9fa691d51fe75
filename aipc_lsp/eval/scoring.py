"""Scores of one answer, given the document as the editor holds it after accepting the answer.

- exact: the first completed line equals the expected one (whitespace-trimmed);
- edit similarity: 1 - Levenshtein distance / longer length, between the completed text (as many
  lines as the hole held, from the cursor on) and the expected text, each line's trailing
  whitespace dropped;
- pass@1 (tasks with checks): the corpus module's checks run on the completed document, in a
  child interpreter with a time limit;
- empty: the contender offered nothing (or only whitespace).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from aipc_lsp.eval.tasks import Task

CHECK_TIMEOUT_S = 10.0

# Runs every test_* function of `<module>_checks` from the folder given; exit status 0 = all passed.
_CHECK_RUNNER = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
checks = importlib.import_module(sys.argv[2] + "_checks")
for name in sorted(dir(checks)):
    if name.startswith("test_"):
        getattr(checks, name)()
"""


def accept(text: str, start: int, end: int, insert: str) -> str:
    """What an editor holds after accepting an inline completion: [start, end) replaced."""
    return text[:start] + insert + text[end:]


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def completed_text(task: Task, accepted: str) -> str:
    """The text the answer put where the hole was, from the cursor on, as many lines as the hole held."""
    before, after = task.text.split("\n"), accepted.split("\n")
    added = len(after) - len(before)
    lines = after[task.line: task.line + max(0, added) + 1]
    prefix = before[task.line][: task.column]
    # llama.vim rewrites a blank cursor line with the model's own indentation: compare from the code.
    first = lines[0][len(prefix):] if lines[0].startswith(prefix) else lines[0].lstrip()
    return "\n".join([first] + lines[1: task.expected.count("\n") + 1])


def score(task: Task, accepted: str, suggestion: str) -> dict:
    """`accepted`: the document after accepting `suggestion` (the text the contender offered)."""
    completed = completed_text(task, accepted)
    expected_first = task.expected.split("\n")[0].strip()
    return {
        "exact": completed.split("\n")[0].strip() == expected_first,
        "edit_sim": edit_similarity(_normal(completed), _normal(task.expected)),
        "empty": not suggestion.strip(),
    }


def run_checks(task: Task, accepted: str, timeout: float = CHECK_TIMEOUT_S) -> bool | None:
    """Whether the corpus module's checks pass on the completed document (None: the task has none).
    The corpus is copied to a temporary folder with the task's module replaced by `accepted`."""
    if task.checks is None:
        return None
    corpus = resources.files("aipc_lsp.eval.corpus")
    with tempfile.TemporaryDirectory(prefix="aipc-eval-") as folder:
        for entry in corpus.iterdir():
            if entry.name.endswith(".py") and entry.name != "__init__.py":
                Path(folder, entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
        Path(folder, f"{task.checks}.py").write_text(accepted, encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-I", "-B", "-c", _CHECK_RUNNER, folder, task.checks],
                                  cwd=folder, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0


def evaluate(task: Task, answer: dict) -> dict:
    """One task's scores from a contender's answer (suggestion, accepted document, ms)."""
    result = {"id": task.id, "source": task.source, "kind": task.kind, **score(task, answer["accepted"], answer["suggestion"]),
              "passed": run_checks(task, answer["accepted"]), "ms": answer.get("ms"),
              "suggestion": answer["suggestion"], "expected": task.expected}
    if answer.get("error"):
        result["error"] = answer["error"]
    return result
