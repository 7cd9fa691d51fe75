"""Completion end to end through every engine that installs here, with a real model (SmolLM2-135M,
the test session's small model, by its catalogue name):
OpenVINO GenAI on an IR that `aipc-lsp prepare` made, ONNX Runtime GenAI on a folder that
`aipc-lsp prepare` made through its model builder, and transformers on the Hugging Face folder
`aipc-lsp prepare` dequantised from the GGUF.

`prepare` runs through the command line once per session; its outputs land in the user's
model cache with a manifest (source checksum + options), so a later run reuses them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.models.catalogue import SMOLLM2_135M
from conftest import two_real_suggestions, cancel_and_expect_slot_free, configure, end_position, open_document, server_config, status, wait_ready

# The first test also pays for the session's `prepare` runs (a few minutes on a fresh machine).
pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

# A table every engine keeps extending line after line: a long generation to cancel.
LONG = "CODES = {\n" + "".join(f'    "k{i}": {i},\n' for i in range(1, 16)) + "    "


def _prepare(engine: str, precision: str) -> Path:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "aipc_lsp", "prepare", SMOLLM2_135M.name, "--engine", engine,
                           "--precision", precision], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "%" in done.stderr  # progress was shown
    path = Path(done.stdout.strip().splitlines()[-1])
    print(f"\nprepare {SMOLLM2_135M.name} --engine {engine} --precision {precision}: {path} in {time.monotonic() - started:.0f}s")
    return path


@pytest.fixture(scope="session")
def prepared() -> dict[str, Path]:
    return {"openvino": _prepare("openvino", "int4"), "onnxruntime": _prepare("onnxruntime", "int4"),
            "transformers": _prepare("transformers", "fp32")}


async def test_prepared_models_are_in_the_cache_and_listed(prepared):
    listed = json.loads(subprocess.run([sys.executable, "-m", "aipc_lsp", "models", "list", "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    kinds = {entry["path"]: entry["kind"] for entry in listed}
    assert kinds[str(prepared["openvino"])] == "openvino-ir"
    assert kinds[str(prepared["onnxruntime"])] == "onnxruntime-genai"
    assert kinds[str(prepared["transformers"])] == "transformers"
    for engine, path in prepared.items():
        manifest = json.loads((path / "aipc-prepare.json").read_text())
        assert manifest["options"]["engine"] == engine
        assert manifest["source_checksum"] == SMOLLM2_135M.sha256
    # Preparing again is a no-op thanks to the manifest: the folder is not made again.
    manifest = prepared["onnxruntime"] / "aipc-prepare.json"
    made = manifest.stat().st_mtime_ns
    assert _prepare("onnxruntime", "int4") == prepared["onnxruntime"]
    assert manifest.stat().st_mtime_ns == made


ENGINES = {
    # OpenVINO on the IR that prepare saved (int4, the GGUF's own 4-bit weights).
    "openvino-ir": lambda prepared: {"engine": "openvino", "model": str(prepared["openvino"])},
    # A catalogue name with onnxruntime finds the folder `prepare NAME --engine onnxruntime` made.
    "onnxruntime": lambda prepared: {"engine": "onnxruntime", "model": SMOLLM2_135M.name},
    # A catalogue name with transformers finds the folder `prepare NAME --engine transformers` made.
    # One torch thread: with the test client and other servers sharing 2 cores, two OpenMP
    # threads spin against each other and a decode step can take over a second.
    "transformers": lambda prepared: {"engine": "transformers", "model": SMOLLM2_135M.name, "precision": "fp32",
                                      "threads": 1},
}


@pytest_lsp.fixture(config=server_config(), scope="module", params=list(ENGINES))
async def client(lsp_client: LanguageClient, request, prepared):
    options = {**ENGINES[request.param](prepared), "completion": {"max_tokens": 32}}
    lsp_client.set_configuration({"aipc": {}})
    started = time.monotonic()
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"), initialization_options=options))
    state = await wait_ready(lsp_client, timeout=600)
    assert state["ready"], state
    print(f"\n{request.param}: ready in {time.monotonic() - started:.1f}s")
    yield
    await lsp_client.shutdown_session()


async def test_the_slot_runs_the_chosen_engine(client: LanguageClient, request):
    slot = (await status(client))["slots"][0]
    engine = request.node.callspec.params["client"].split("-")[0]
    assert slot["engine"] == engine, slot
    if engine in ("onnxruntime", "transformers"):
        assert Path(slot["model"]).parent.name == "models", slot  # the prepared folder in the cache
        assert Path(slot["model"]).name.startswith(f"{SMOLLM2_135M.name}-{engine}-"), slot


async def test_inline_completion_is_real_and_depends_on_the_code(client: LanguageClient):
    stack, _ = await two_real_suggestions(client)
    assert "self" in stack, stack
    slot = (await status(client))["slots"][0]
    assert slot["served"] >= 2


async def test_cancel_request_stops_the_generation_within_a_step(client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 400, "max_lines": 200}})
    uri = "file:///project/primes.py"
    open_document(client, uri, LONG)
    position = end_position(LONG, "utf-8")
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    request = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params)
    msg_id = next(reversed(client.protocol._request_futures))
    deadline = time.monotonic() + 30
    while not (await status(client))["slots"][0]["busy"]:
        assert time.monotonic() < deadline, "generation never started"
        await asyncio.sleep(0.02)
    await cancel_and_expect_slot_free(client, request, msg_id)
    assert (await status(client))["slots"][0]["cancelled"] >= 1
    await configure(client, {})


async def test_onnxruntime_refuses_a_prompt_past_its_max_length_as_a_request_and_serves_on(prepared):
    """The real engine (in this process, no server): a prompt that does not fit is the request's
    error (the scheduler keeps the slot), and the engine declares the limit prompts are built within."""
    import threading

    from aipc_lsp.config import OnnxRuntimeSettings
    from aipc_lsp.engines.base import GenerationParams, RequestError
    from aipc_lsp.engines.onnxruntime import OnnxRuntimeGenAIEngine

    engine = OnnxRuntimeGenAIEngine(prepared["onnxruntime"], options=OnnxRuntimeSettings(max_length=128))
    try:
        info = engine.load()
        assert info.max_prompt_tokens == 64 and info.keeps_prompt_cache and info.chat_template
        with pytest.raises(RequestError, match="onnxruntime.max_length = 128"):
            engine.generate("x = 1\n" * 100, GenerationParams(max_new_tokens=4), threading.Event())
        assert engine.generate("def add(a, b):\n    return", GenerationParams(max_new_tokens=4),
                               threading.Event()).tokens >= 1
    finally:
        engine.close()
