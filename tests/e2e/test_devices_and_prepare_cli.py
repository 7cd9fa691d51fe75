"""`aipc-lsp devices` and `aipc-lsp prepare`'s refusals, through the installed command line."""

from __future__ import annotations

import json
import subprocess
import sys

CLI = [sys.executable, "-m", "aipc_lsp"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_devices_lists_every_engine_with_versions_and_devices():
    done = _run("devices", "--json")
    assert done.returncode == 0, done.stderr
    reports = {r["engine"]: r for r in json.loads(done.stdout)}
    assert set(reports) == {"openvino", "onnxruntime", "transformers", "npu_library"}
    # The engines the dev extra installs import here and see the CPU.
    for engine in ("openvino", "onnxruntime", "transformers"):
        assert reports[engine]["available"], reports[engine]
        assert reports[engine]["version"], reports[engine]
        assert any(d.lower().startswith("cpu") for d in reports[engine]["devices"]), reports[engine]
    npu = reports["npu_library"]
    if not npu["available"]:
        assert npu["error"] and "npu_library.python" in npu["note"], npu
    table = _run("devices")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["engine", "available", "version"]
    assert "onnxruntime" in table.stdout and "why not" in table.stdout or npu["available"]


def test_prepare_refuses_what_it_cannot_do_with_a_reason(tmp_path):
    done = _run("prepare", "default", "--engine", "transformers", "--precision", "int4", "--output", str(tmp_path / "x"))
    assert done.returncode == 1 and "not supported for transformers" in done.stderr, done.stderr
    done = _run("prepare", str(tmp_path / "missing"), "--engine", "onnxruntime", "--precision", "int4")
    assert done.returncode == 1 and "neither a file, a folder nor a hub id" in done.stderr, done.stderr
    assert not (tmp_path / "x").exists()
