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
    assert set(reports) == {"openvino", "onnxruntime", "transformers", "npu_library", "remote"}
    # No team server configured: the remote engine says which setting names one.
    assert reports["remote"]["available"] and "remote.url" in reports["remote"]["note"], reports["remote"]
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


def test_an_engine_that_cannot_run_says_what_is_missing(tmp_path):
    code = tmp_path / "a.py"
    code.write_text("def add(a, b):\n    return a", encoding="utf-8")
    # intel-npu-acceleration-library is not in this environment: the user is told where it must live.
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}", encoding="utf-8")
    (hf / "model.safetensors").write_bytes(b"")
    npu = tmp_path / "npu.toml"
    npu.write_text(f'engine = "npu_library"\ndevice = "NPU"\nprecision = "int4"\nmodel = "{hf.as_posix()}"\n',
                   encoding="utf-8")
    done = _run("complete", f"{code}:2:13", "--config", str(npu))
    assert done.returncode == 1, done.stderr
    assert "intel-npu-acceleration-library" in done.stderr and "npu_library.python" in done.stderr, done.stderr
    # The library targets the NPU (falling back to the CPU by itself): other devices are refused.
    npu.write_text('engine = "npu_library"\n', encoding="utf-8")
    done = _run("complete", f"{code}:2:13", "--config", str(npu))
    assert done.returncode == 1 and 'device = "NPU"' in done.stderr, done.stderr
    # ONNX Runtime GenAI cannot read a GGUF: the user is told the prepare command that fixes it.
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 32)
    ort = tmp_path / "ort.toml"
    ort.write_text(f'engine = "onnxruntime"\nmodel = "{gguf.as_posix()}"\n', encoding="utf-8")
    done = _run("complete", f"{code}:2:13", "--config", str(ort))
    assert done.returncode == 1, done.stderr
    assert f"aipc-lsp prepare {gguf} --engine onnxruntime --precision int4" in done.stderr, done.stderr
