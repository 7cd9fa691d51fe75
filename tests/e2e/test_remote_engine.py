"""The remote engine end to end: the real server over stdio serving from a real llama.cpp server
(llama-cpp-python[server] 0.3.36) on 127.0.0.1 with the default model's GGUF (Qwen2.5-Coder-0.5B,
whose FIM tokens llama.cpp's tokenizer has; SmolLM2's GGUF leaves its FIM tokens ordinary text
there), and SmolLM2-135M on OpenVINO as the local slot behind it: a streamed completion with the
FIM prompt found and counted by the server's tokenizer, a chat through
/v1/chat/completions, a cancel that closes the stream (the llama.cpp server sees the client go), a
stopped server and a killed one (the next slot answers, the user is told once), `aipc-lsp
devices`, and an API key that never reaches the log.

The llama.cpp server is built once per machine into the user cache (llama-cpp-python builds from
source: ~6 min on 2 cores) and reused; AIPC_TEST_LLAMA_SERVER_PYTHON may name the interpreter of an
environment that has it already."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import platformdirs
import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.models.catalogue import QWEN_CODER_05B, SMOLLM2_135M
from aipc_lsp.models.fetch import resolve_model
from conftest import (cancel_and_expect_slot_free, configure, end_position, inline, open_document, plain, server_config,
                      status, wait_ready)

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(2400)]

LLAMA_CPP_PYTHON = "llama-cpp-python[server]==0.3.36"
# ggml's instruction-set options and the CPU flags (Linux /proc/cpuinfo) each needs.
GGML_CPU_OPTIONS = {
    "GGML_SSE42": ("sse4_2",), "GGML_AVX": ("avx",), "GGML_AVX2": ("avx2",), "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",), "GGML_F16C": ("f16c",), "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",), "GGML_AVX512_VNNI": ("avx512_vnni",), "GGML_AVX512_BF16": ("avx512_bf16",),
}
BUILD_TIMEOUT_S = 2400
KEY = "sk-aipc-test-3f9c2a7e51d04b88"
KEY_ENV = "AIPC_TEST_REMOTE_KEY"
# remote.timeout_s: roomy for a first token from a 2-core box other work keeps busy; the test of a
# stopped server gives up on it sooner.
TIMEOUT_S = 30.0
STOPPED_TIMEOUT_S = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORT = _free_port()
URL = f"http://127.0.0.1:{PORT}/v1"
WORK = Path(tempfile.gettempdir()) / f"aipc-remote-test-{os.getpid()}"  # made by the `llama` fixture
SETTINGS = WORK / "settings.toml"
SERVER_LOG = WORK / "aipc-lsp.log"
LLAMA_LOG = WORK / "llama-server.log"
TEAM_ONLY = [{"name": "team", "engine": "remote"}]
TEAM_THEN_LOCAL = [*TEAM_ONLY, {"name": "local", "engine": "openvino", "device": "CPU", "threads": 1}]
STACK = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
LONG = "PRIMES = [\n    2,\n    3,\n    5,\n    7,\n    11,\n    13,\n"
SETTINGS_TEXT = f"""# The remote engine's test: its URL and key variable come from the settings file.
model = "{SMOLLM2_135M.name}"

[remote]
url = "{URL}"
api_key_env = "{KEY_ENV}"
timeout_s = {TIMEOUT_S}
connect_timeout_s = 1.0
retries = 1

[completion]
other_files = false
warm_on_open = false
"""


def llama_cmake_args() -> str:
    """Build for this CPU's instruction sets but never ggml's AMX code: `-DGGML_NATIVE=ON` (-march=native)
    turns it on where the CPU has AMX, and on a VM that advertises AMX its first matrix product died
    of a general protection fault (`ldtilecfg`) here. Without /proc/cpuinfo: native."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "-DGGML_NATIVE=ON"
    options = [f"-D{option}={'ON' if set(needs) <= flags else 'OFF'}" for option, needs in GGML_CPU_OPTIONS.items()]
    return " ".join(["-DGGML_NATIVE=OFF", *options, "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"])


@pytest.fixture(scope="session")
def llama_server_python(request) -> str:
    """An interpreter with llama-cpp-python[server]: AIPC_TEST_LLAMA_SERVER_PYTHON, or an environment
    built once into the user cache for this CPU (llama_cmake_args) and reused."""
    given = os.environ.get("AIPC_TEST_LLAMA_SERVER_PYTHON")
    if given:
        return given
    env_dir = Path(platformdirs.user_cache_dir("aipc-lsp-tests", appauthor=False)) / "llama-cpp-server"
    python = env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    marker = env_dir / "aipc-test.ok"
    cmake_args = llama_cmake_args()
    built_as = f"{LLAMA_CPP_PYTHON} {cmake_args}"
    if marker.is_file() and marker.read_text().strip() == built_as and python.exists():
        return str(python)
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip(f"{LLAMA_CPP_PYTHON} builds from source and needs a C/C++ compiler")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def say(message: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"[llama.cpp server build] {message}", file=sys.stderr, flush=True)

    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    log = env_dir.parent / "llama-cpp-server-build.log"
    say(f"building {LLAMA_CPP_PYTHON} into {env_dir} (once per machine; ~6 min on 2 cores; log {log})")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    with open(log, "w", encoding="utf-8") as out:
        # No wheel cache: pip keys it by the package, not CMAKE_ARGS, so a wheel built for other flags
        # (e.g. -march=native on an AMX host, which crashes) would be installed without a build.
        pip = subprocess.Popen([str(python), "-m", "pip", "install", "--no-cache-dir", "--progress-bar", "off",
                                LLAMA_CPP_PYTHON],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                               env={**os.environ, "CMAKE_ARGS": cmake_args})
        for line in pip.stdout:
            out.write(line)
            if line.startswith(("Collecting", "Building", "Successfully", "ERROR")) or "Running" in line:
                say(f"{time.monotonic() - started:4.0f}s {line.rstrip()}")
        code = pip.wait(timeout=BUILD_TIMEOUT_S)
    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
    assert code == 0, f"pip install {LLAMA_CPP_PYTHON} failed (log {log}):\n{tail}"
    marker.write_text(built_as + "\n")
    say(f"built in {time.monotonic() - started:.0f}s")
    return str(python)


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1, its output in LLAMA_LOG."""

    def __init__(self, python: str, gguf: Path):
        self.log = open(LLAMA_LOG, "a", encoding="utf-8")
        self.process = subprocess.Popen(
            [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(PORT),
             "--n_threads", "1", "--n_ctx", "2048", "--api_key", KEY],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"the llama.cpp server exited:\n{self.output()[-3000:]}"
            try:
                if httpx.get(f"{URL}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the llama.cpp server did not start:\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def output(self) -> str:
        return LLAMA_LOG.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def llama(llama_server_python) -> LlamaServer:
    WORK.mkdir(exist_ok=True)
    SETTINGS.write_text(SETTINGS_TEXT, encoding="utf-8")
    server = LlamaServer(llama_server_python, Path(resolve_model(QWEN_CODER_05B.name)))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest_lsp.fixture(config=server_config("-v", "--config", str(SETTINGS), "--log-file", str(SERVER_LOG),
                                         env={**os.environ, KEY_ENV: KEY}), scope="module")
async def client(lsp_client: LanguageClient, llama: LlamaServer):
    @lsp_client.feature("aipc/chatChunk")
    def on_chunk(ls, params):
        CHUNKS.append(plain(params))

    lsp_client.set_configuration({"aipc": {"slots": TEAM_ONLY}})
    await lsp_client.initialize_session(types.InitializeParams(
        # Nothing computed ahead for an accept: this module counts the server's jobs and warm-ups.
        capabilities=client_capabilities("neovim@v0.11.0"), initialization_options={"slots": TEAM_ONLY, "completion": {"suggest_ahead": False}}))
    state = await wait_ready(lsp_client)
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


CHUNKS: list[dict] = []


def _slot(state: dict, name: str) -> dict:
    return next(s for s in state["slots"] if s["slot"] == name)


async def _until(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.1)
    return value


async def test_a_completion_streams_from_the_team_server(client: LanguageClient, llama: LlamaServer):
    open_document(client, "file:///project/stack.py", STACK)
    items = await inline(client, "file:///project/stack.py", end_position(STACK, "utf-8"))
    assert len(items) == 1 and items[0].strip(), items
    state = await status(client)
    team = _slot(state, "team")
    assert team["engine"] == "remote" and team["device"] == URL and team["served"] >= 1, team
    assert team["ttft_ms"] is not None, team  # its measured latency
    # Qwen's FIM markers are single tokens for the server's tokenizer (its /extras/tokenize/count).
    assert state["completionPrompt"] == "qwen", state
    assert '"POST /v1/completions HTTP/1.1" 200' in llama.output()
    print(f"\nremote completion: {items[0]!r}; ttft {team['ttft_ms']:.0f} ms, {team['tokens_per_s'] or 0:.0f} tok/s")


async def test_a_chat_goes_to_chat_completions_as_one_stream(client: LanguageClient, llama: LlamaServer):
    text = "def add(a, b):\n    return a + b\n"
    open_document(client, "file:///project/add.py", text)
    asked = llama.output().count("POST /v1/chat/completions")
    CHUNKS.clear()
    await configure(client, {"slots": TEAM_ONLY, "chat": {"max_tokens": 80}, "scheduler": {"chat_chunk_tokens": 16}})
    await wait_ready(client)
    result = plain(await client.protocol.send_request_async("aipc/inlineChat", {
        "textDocument": {"uri": "file:///project/add.py"}, "instruction": "What does this function do?",
        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 0}}}))
    assert result["mode"] == "ask" and result["text"].strip(), result
    assert "".join(c["text"] for c in CHUNKS) == result["text"]
    # Answered in chunks of 16 tokens (completions may cut in between), all from one stream.
    assert llama.output().count("POST /v1/chat/completions") == asked + 1
    print(f"\nremote chat ({len(CHUNKS)} pieces): {result['text'][:120]!r}")


async def test_a_cancel_closes_the_stream_and_the_server_stops(client: LanguageClient, llama: LlamaServer):
    await configure(client, {"slots": TEAM_ONLY, "completion": {"max_tokens": 400, "max_lines": 200}})
    await wait_ready(client)
    uri = "file:///project/primes.py"
    open_document(client, uri, LONG)
    gone = llama.output().count("Disconnected from client")
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end_position(LONG, "utf-8"),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    request = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params)
    msg_id = next(reversed(client.protocol._request_futures))

    async def streaming():
        return _slot(await status(client), "team")["busy"]
    await _until(streaming, "the generation started", 60)
    await cancel_and_expect_slot_free(client, request, msg_id, within=2.0)

    async def server_saw_it():
        return llama.output().count("Disconnected from client") > gone
    # Deadline roomy for a busy box: the server notices between two steps, after a prefill perhaps.
    await _until(server_saw_it, "the llama.cpp server saw the client go (and stopped generating)", 60)
    assert _slot(await status(client), "team")["state"] == "ready"


async def test_devices_shows_the_team_server_and_its_latency(llama: LlamaServer):
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "aipc_lsp", "devices", "--json", "--config", str(SETTINGS)],
        capture_output=True, text=True, timeout=120, env={**os.environ, KEY_ENV: KEY})
    assert done.returncode == 0, done.stderr
    remote = {r["engine"]: r for r in json.loads(done.stdout)}["remote"]
    assert remote["available"], remote
    assert any(URL in d and " ms" in d for d in remote["devices"]), remote
    assert KEY not in done.stdout + done.stderr


async def test_eval_runs_its_server_with_the_settings_file_it_is_given(llama: LlamaServer):
    """`aipc-lsp eval --config F --set engine=remote`: the server it starts reads F, so remote.url (a
    setting only a file may give) reaches it and the team server answers the tasks. (Before the tests
    that stop and kill the team server.)"""
    asked = llama.output().count("/v1/completions")
    report_path = WORK / "eval.json"
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "aipc_lsp", "eval", "--config", str(SETTINGS), "--set", "engine=remote",
                         "--quick", "--limit", "3", "--json", str(report_path)],
        capture_output=True, text=True, timeout=900, env={**os.environ, KEY_ENV: KEY})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ours = json.loads(report_path.read_text(encoding="utf-8"))["contenders"][0]
    assert "error" not in ours, ours.get("error")
    assert sum(slot["served"] or 0 for slot in ours["slots"]) >= 1, ours["slots"]
    assert llama.output().count("/v1/completions") > asked
    assert KEY not in done.stdout + done.stderr


async def _both_ready(client: LanguageClient, settings: dict) -> None:
    await configure(client, {"slots": TEAM_THEN_LOCAL, **settings})
    await wait_ready(client)

    async def ready():
        state = await status(client)
        return len(state["slots"]) == 2 and all(s["state"] == "ready" for s in state["slots"])
    await _until(ready, "both slots ready", 120)


async def _answer_from_local(client: LanguageClient, uri: str, text: str, timeout_s: float) -> tuple[list[str], float]:
    before = _slot(await status(client), "local")["served"]
    open_document(client, uri, text)
    started = time.monotonic()
    # A deadline, not a measurement: the slot gives up after remote.timeout_s; without it the stall
    # watchdog would wait 60 s, and a hung read for ever. The rest is the local slot's answer.
    items = await asyncio.wait_for(inline(client, uri, end_position(text, "utf-8")), timeout_s + 45)
    took = time.monotonic() - started
    assert len(items) == 1 and items[0].strip(), items
    assert _slot(await status(client), "local")["served"] == before + 1
    return items, took


def _told(client: LanguageClient, since: int) -> list[str]:
    return [m.message for m in client.messages[since:] if "team" in m.message]


async def test_a_stopped_server_times_out_to_the_next_slot_and_is_told_once(client: LanguageClient, llama: LlamaServer):
    await _both_ready(client, {"scheduler": {"retry_interval_s": 2.0}, "remote": {"timeout_s": STOPPED_TIMEOUT_S}})
    told = len(client.messages)
    llama.process.send_signal(signal.SIGSTOP)  # it accepts connections and answers nothing
    try:
        items, took = await _answer_from_local(client, "file:///project/slow.py", "# slow\n" + STACK, STOPPED_TIMEOUT_S)
        assert _slot(await status(client), "team")["state"] == "unhealthy"
        messages = _told(client, told)
        assert len(messages) == 1 and "remote.timeout_s" in messages[0], messages
        print(f"\nserver stopped: the local slot answered {items[0]!r} {took:.1f}s after the request")
    finally:
        llama.process.send_signal(signal.SIGCONT)

    async def recovered():
        return _slot(await status(client), "team")["state"] == "ready"
    await _until(recovered, "the team slot recovered (background probe)", 60)


async def test_a_killed_server_hands_over_to_the_next_slot_told_once(client: LanguageClient, llama: LlamaServer):
    await _both_ready(client, {"scheduler": {"retry_interval_s": 30.0}})  # a new scheduler: no measured rates yet
    told = len(client.messages)
    llama.process.kill()
    llama.process.wait(30)
    items, took = await _answer_from_local(client, "file:///project/killed.py", "# killed\n" + STACK, 0)
    again, _ = await _answer_from_local(client, "file:///project/killed2.py", "import json\n\n\ndef load(path):\n    ", 0)
    messages = _told(client, told)
    assert len(messages) == 1 and "cannot reach" in messages[0], messages
    print(f"\nserver killed: the local slot answered {items[0]!r} {took:.1f}s after the request")


async def test_the_api_key_never_reached_the_log(llama: LlamaServer):
    log = SERVER_LOG.read_text(encoding="utf-8", errors="replace")
    assert "remote" in log and KEY not in log

