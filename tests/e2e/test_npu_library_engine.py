"""Completion and cancel end to end through the npu_library engine: the real
intel-npu-acceleration-library in its own environment, run by the real worker process, with the
small catalogue model, SmolLM2-135M (the Hugging Face folder dequantised from its GGUF).

The environment is built once by scripts/build-npu-library.sh into the user cache (a few
minutes the first time; later sessions reuse it while the script is unchanged). With no NPU,
which is the case on CI, the library runs on OpenVINO's CPU device: everything up to the NPU
itself is tested, and the server must say that it runs on the CPU."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.models.catalogue import SMOLLM2_135M
from aipc_lsp.models.registry import cache_dir
from conftest import cancel_and_expect_slot_free, configure, end_position, inline, open_document, server_config, status, wait_ready

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-npu-library.sh"
STACK = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
LONG = "CODES = {\n" + "".join(f'    "k{i}": {i},\n' for i in range(1, 16)) + "    "


def _python311() -> str | None:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    return shutil.which("python3.11")


@pytest.fixture(scope="session")
def npu_python() -> str:
    """The interpreter of an environment with the library: AIPC_NPU_PYTHON, or one built by
    scripts/build-npu-library.sh into the cache (reused while the script is unchanged)."""
    given = os.environ.get("AIPC_NPU_PYTHON")
    if given:
        return given
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"scripts/build-npu-library.sh builds for Linux x86_64 only (this is {sys.platform} "
                    f"{platform.machine()})")
    python = _python311()
    if python is None:
        pytest.skip("scripts/build-npu-library.sh needs Python 3.11 (the library's pins have wheels for it)")
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("scripts/build-npu-library.sh needs a C++ compiler (the library is source-only)")
    env_dir = cache_dir() / "npu-library-env"
    marker = env_dir / "aipc-npu-library.ok"
    wanted = hashlib.sha256(BUILD.read_bytes()).hexdigest()
    if marker.is_file() and marker.read_text().strip() == wanted and (env_dir / "bin" / "python").exists():
        return str(env_dir / "bin" / "python")
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    log = env_dir.parent / "npu-library-build.log"
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run(["bash", str(BUILD), str(env_dir)], stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env={**os.environ, "PYTHON": python}, timeout=1500)
    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
    assert done.returncode == 0 and marker.is_file(), f"build-npu-library.sh failed (log {log}):\n{tail}"
    print(f"\nbuilt intel-npu-acceleration-library into {env_dir} in {time.monotonic() - started:.0f}s")
    return str(env_dir / "bin" / "python")


async def test_devices_reports_the_library_and_the_missing_npu(npu_python, tmp_path):
    config = tmp_path / "settings.toml"
    config.write_text(f"[npu_library]\npython = {json.dumps(npu_python)}\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "aipc_lsp", "devices", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    npu = {r["engine"]: r for r in json.loads(done.stdout)}["npu_library"]
    assert npu["available"] and npu["version"], npu
    if npu["devices"] != ["NPU"]:
        assert npu["devices"] == ["CPU (fallback: no NPU)"] and "sees no NPU" in npu["note"], npu


@pytest.fixture(scope="module")
def options(npu_python) -> dict:
    # A catalogue name finds the folder `prepare NAME --engine transformers` made, or makes it.
    return {"engine": "npu_library", "device": "NPU", "model": SMOLLM2_135M.name, "precision": "",
            "npu_library": {"python": npu_python}, "completion": {"max_tokens": 16}}


@pytest_lsp.fixture(config=server_config(), scope="module")
async def client(lsp_client: LanguageClient, options):
    lsp_client.set_configuration({"aipc": {}})
    started = time.monotonic()
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"), initialization_options=options))
    state = await wait_ready(lsp_client, timeout=900)
    assert state["ready"], state
    print(f"\nnpu_library: ready in {time.monotonic() - started:.1f}s")
    yield
    await lsp_client.shutdown_session()


async def test_the_slot_runs_the_library_and_says_where(client: LanguageClient):
    slot = (await status(client))["slots"][0]
    assert slot["engine"] == "npu_library" and slot["state"] == "ready", slot
    assert Path(slot["model"]).name.startswith(f"{SMOLLM2_135M.name}-transformers-"), slot
    if slot["device"] == "CPU":  # no NPU here: it runs on the library's CPU fallback, and says so
        shown = [m.message for m in client.messages if m.type == types.MessageType.Warning]
        assert any("sees no NPU" in m and "CPU" in m for m in shown), client.messages
    else:  # pragma: no cover - machines with an NPU
        assert slot["device"] == "NPU", slot


async def test_inline_completion_is_real(client: LanguageClient):
    open_document(client, "file:///project/stack.py", STACK)
    started = time.monotonic()
    items = await inline(client, "file:///project/stack.py", end_position(STACK, "utf-8"))
    assert len(items) == 1 and "self" in items[0], items
    slot = (await status(client))["slots"][0]
    assert slot["served"] >= 1
    print(f"\nnpu_library completion in {time.monotonic() - started:.1f}s: {items[0]!r}; "
          f"ttft {slot['ttft_ms']:.0f} ms, {slot['tokens_per_s'] or 0:.1f} tok/s")


async def test_cancel_request_stops_the_generation_within_a_step(client: LanguageClient):
    await configure(client, {"completion": {"max_tokens": 400, "max_lines": 200}})
    uri = "file:///project/codes.py"
    open_document(client, uri, LONG)
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end_position(LONG, "utf-8"),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    request = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params)
    msg_id = next(reversed(client.protocol._request_futures))
    deadline = time.monotonic() + 60
    while not (await status(client))["slots"][0]["busy"]:
        assert time.monotonic() < deadline, "generation never started"
        await asyncio.sleep(0.02)
    # Busy: the generation runs in the library's worker (its prefill or its decode loop).
    await cancel_and_expect_slot_free(client, request, msg_id)
    slot = (await status(client))["slots"][0]
    assert slot["cancelled"] >= 1 and slot["state"] == "ready", slot
    await configure(client, {})
