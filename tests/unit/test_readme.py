"""README opens with exactly two set-up commands, and CI runs the second one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    head = readme.split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", head, flags=re.S)


def test_readme_opens_with_two_commands():
    commands = _commands()
    assert len(commands) == 2, commands
    assert "aipc-lsp demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _commands()[1] in ci.splitlines()


def test_readme_names_the_fast_tier_below_the_set_up_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = readme.split("\n## ", 1)[1]
    assert 'python -m pytest -m "not model"' in body
