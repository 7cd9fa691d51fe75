"""`aipc-lsp demo`, README's first command: it drives the real server with the default model as an
editor would and prints the suggestions (issue 19's complaint: a `push` body that appended to a list
the class does not have)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.model


def test_the_demo_prints_the_default_models_suggestions():
    proc = subprocess.run([sys.executable, "-m", "aipc_lsp", "demo"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("\n")
    assert sum(line.startswith("after ") and "keystrokes" in line for line in lines) == 2, proc.stdout
    # A suggestion in the hole of `push` (its statement or its docstring: which of the model's answers
    # is shown depends on which keystroke's request was the last not superseded), never the wrong list.
    push = lines.index("    def push(self, item):")
    assert lines[push + 1].startswith("        ") and lines[push + 1].strip(), proc.stdout
    assert "stack.append" not in proc.stdout
    assert "generations served" in proc.stdout and "server says" not in proc.stderr
