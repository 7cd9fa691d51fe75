"""Emacs + eglot against ``aipc-lsp serve``, with the configuration of docs/editors/emacs.md.

The Emacs Lisp blocks of the doc are extracted as they stand and loaded by a batch Emacs
(``emacs --batch -l tests/clients/emacs_driver.el``), as a user would paste them into
init.el. ``aipc-lsp`` must be on ``exec-path`` there, so the test puts a small ``aipc-lsp``
wrapper (running this interpreter's ``-m aipc_lsp``) first on ``PATH``. The driver opens a
Python file (``python-mode-hook`` -> ``eglot-ensure``), calls ``eglot-completion-at-point``
and ``completion-at-point`` at the end of ``def fibonacci(n):\\n    ``, then runs the doc's
``aipc-chat`` command (``workspace/executeCommand`` ``aipc.chat``) on a region of a second
file, and writes what it saw as JSON; the assertions are made here.

Skipped, with the reason printed, only when there is no ``emacs`` or it has no eglot
(Emacs 29+ has it built in; Emacs 28 needs the elpa-eglot package of Debian/Ubuntu).

Environment knobs:

* ``AIPC_TEST_EMACS`` - path of the ``emacs`` binary (default: ``emacs`` on ``$PATH``).
* ``AIPC_TEST_SERVER_CMD`` - server command (JSON array or shell words),
  default ``[sys.executable, "-m", "aipc_lsp", "serve"]``; the doc's ``serve`` argument
  is passed on, so give the command without it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DRIVER = HERE / "emacs_driver.el"
DOC = REPO_ROOT / "docs" / "editors" / "emacs.md"

SUBPROCESS_TIMEOUT_S = 240

FIB_SOURCE = "def fibonacci(n):\n    "
ADD_SOURCE = "import os\n\n\ndef add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
CHAT_LINES = (3, 5)  # 0-based, end exclusive: the whole `def add`
INSTRUCTION = "Rename the function to plus"


# --------------------------------------------------------------------------- helpers


def _find_emacs() -> tuple[str | None, str]:
    """Return (path, info); path is None when there is no emacs with eglot."""
    emacs = os.environ.get("AIPC_TEST_EMACS") or shutil.which("emacs")
    if not emacs:
        return None, "emacs is not installed (not on PATH, AIPC_TEST_EMACS unset)"
    probe = '(princ (format "%s|%s" emacs-version (or (locate-library "eglot") "")))'
    try:
        proc = subprocess.run([emacs, "--batch", "--eval", probe], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{emacs} failed to start: {exc!r}"
    if proc.returncode != 0 or "|" not in proc.stdout:
        return None, f"{emacs} --batch exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    version, eglot = proc.stdout.strip().split("|", 1)
    if not eglot:
        return None, (f"Emacs {version} at {emacs} has no eglot (Emacs 29+ has it built in; "
                      "on Emacs 28 install the elpa-eglot package)")
    return emacs, f"Emacs {version} at {emacs}, eglot from {eglot}"


def _server_cmd() -> list[str]:
    raw = os.environ.get("AIPC_TEST_SERVER_CMD", "").strip()
    if not raw:
        return [sys.executable, "-m", "aipc_lsp"]
    if raw.startswith("["):
        cmd = [str(x) for x in json.loads(raw)]
    else:
        cmd = shlex.split(raw)
    return cmd[:-1] if cmd and cmd[-1] == "serve" else cmd


def _doc_config() -> str:
    blocks = re.findall(r"^```(?:elisp|emacs-lisp)\n(.*?)^```", DOC.read_text(encoding="utf-8"),
                        re.S | re.M)
    assert blocks, f"no elisp blocks in {DOC}"
    return "\n".join(blocks)


def _offset(text: str, line: int, character: int) -> int:
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[:line]) + character  # ASCII: utf-16 units == chars


def _apply(text: str, edit: dict, uri: str) -> str:
    edits = []
    for change in edit.get("documentChanges") or []:
        if change["textDocument"]["uri"] == uri:
            edits += change["edits"]
    edits += (edit.get("changes") or {}).get(uri, [])
    for e in sorted(edits, key=lambda e: (e["range"]["start"]["line"], e["range"]["start"]["character"]),
                    reverse=True):
        start = _offset(text, e["range"]["start"]["line"], e["range"]["start"]["character"])
        end = _offset(text, e["range"]["end"]["line"], e["range"]["end"]["character"])
        text = text[:start] + e["newText"] + text[end:]
    return text


@pytest.fixture(scope="module")
def emacs() -> str:
    path, info = _find_emacs()
    if path is None:
        reason = f"no Emacs with eglot: {info}"
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    print(f"\nusing {info}")
    return path


def _run_driver(emacs: str, tmp_path: Path) -> dict:
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)  # a project root, as in a real checkout
    fib = project / "fib.py"
    fib.write_text(FIB_SOURCE, encoding="utf-8")
    add = project / "add.py"
    add.write_text(ADD_SOURCE, encoding="utf-8")
    config = tmp_path / "config.el"
    config.write_text(_doc_config(), encoding="utf-8")
    out = tmp_path / "result.json"

    # The doc runs "aipc-lsp" from exec-path (PATH); make that this checkout's server.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "aipc-lsp"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(x) for x in _server_cmd()) + ' "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    env = dict(os.environ)
    env.update(
        PATH=os.pathsep.join([str(bindir), env.get("PATH", "")]),
        AIPC_EMACS_CONFIG=str(config),
        AIPC_EMACS_FILE=str(fib),
        AIPC_EMACS_CHAT_FILE=str(add),
        AIPC_EMACS_CHAT_START=str(CHAT_LINES[0]),
        AIPC_EMACS_CHAT_END=str(CHAT_LINES[1]),
        AIPC_EMACS_INSTRUCTION=INSTRUCTION,
        AIPC_EMACS_OUT=str(out),
    )
    # Let `python -m aipc_lsp` work from a checkout even without an install.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)

    cmd = [emacs, "--batch", "-l", str(DRIVER)]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"emacs did not finish within {SUBPROCESS_TIMEOUT_S}s\n"
                    f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}")
    if not out.exists():
        pytest.fail(f"driver wrote no result (exit {proc.returncode})\n"
                    f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    report = json.loads(out.read_text(encoding="utf-8"))
    events = report.pop("events_tail", "")
    report["_diagnostics"] = (f"exit {proc.returncode}\nstderr: {proc.stderr[-3000:]}\n"
                              f"--- eglot events (tail) ---\n{events}")
    report["_fib_uri"], report["_add_uri"] = fib.as_uri(), add.as_uri()
    assert report.get("ok") is True, f"driver error: {report.get('error')}\n{report['_diagnostics']}"
    return report


# --------------------------------------------------------------------------- test


def test_emacs_eglot_completion_and_chat_with_the_documented_config(emacs: str, tmp_path: Path) -> None:
    r = _run_driver(emacs, tmp_path)
    diag = r["_diagnostics"]
    print(f"Emacs {r['emacs_version']}, eglot {r['eglot_version']}; model ready after {r['ready_ms']} ms")

    # The documented hook and server entry took effect.
    assert r["major_mode"] == "python-mode", diag
    assert '"aipc-lsp" "serve"' in r["server_programs_entry"], diag
    assert r["server_name"] == "aipc-lsp", diag
    assert r["completion_provider"] is True, diag
    assert "aipc.chat" in r["execute_commands"], diag
    assert r["status_ready"] is True, f"model not ready: {r['status_error']}\n{diag}"

    # completion-at-point: one candidate (the suggestion's first line), its item holding
    # the whole suggestion; choosing it inserts all of it, every line.
    assert r["position"] == {"line": 1, "character": 4}, diag
    assert len(r["candidates"]) == 1, f"{r['candidates']!r}\n{diag}"
    (cand,) = r["candidates"]
    new_text = cand["new_text"]
    assert new_text and new_text.strip(), f"empty suggestion: {cand!r}\n{diag}"
    assert cand["insert_text_format"] == 1, cand  # plain text: eglot without yasnippet
    assert cand["candidate"] == cand["label"], cand
    assert new_text.startswith(cand["label"].removesuffix("...")), cand
    assert r["after_completion"] == r["completion_before"] + new_text, (
        f"completion-at-point did not insert the suggestion\n{r['after_completion']!r}\n{diag}")
    print(f"completion ({r['capf_ms']} ms, {new_text.count(chr(10)) + 1} lines): {new_text!r}")

    # aipc-chat on `def add`: pieces streamed into *aipc-chat*, the edit was applied to the
    # buffer through workspace/applyEdit, after eglot's confirmation prompt.
    assert r["chat_same_server"] is True, diag
    assert r["chat_region"] == "def add(a, b):\n    return a + b\n", diag
    assert r["chat_mode"] == "edit" and r["chat_text"], diag
    if r["chat_edit"] is None:
        pytest.fail(f"the model's answer had no code block: {r['chat_text']!r}")
    assert r["chat_chunks_buffer"] == r["chat_text"], (
        f"streamed aipc/chatChunk pieces != final text\n{r['chat_chunks_buffer']!r}\n{diag}")
    assert r["chat_applied"] is True, diag
    assert len(r["chat_confirm_prompts"]) == 1 and "add.py" in r["chat_confirm_prompts"][0], diag
    assert r["chat_before"] == ADD_SOURCE, diag
    assert r["chat_after"] == _apply(ADD_SOURCE, r["chat_edit"], r["_add_uri"]), (
        f"buffer after the chat is not the server's edit applied\n{r['chat_after']!r}\n{diag}")
    print(f"chat ({r['chat_ms']} ms): buffer now {r['chat_after']!r}")
