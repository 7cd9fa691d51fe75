"""`aipc-lsp prepare --engine openvino` at a chosen precision, for real: optimum-intel exports
SmolLM2-135M (the small catalogue model, dequantised from its GGUF), NNCF compresses it to int8 and to int4 with the group
size chosen for it (64: SmolLM2's hidden size 576 is no multiple of 128), openvino-tokenizers
converts its tokenizer, and the server then completes code from those IRs.

optimum-intel pins transformers<5.6 and needs torchvision, so it lives in a converter environment
of its own, as the docs advise: built here once (a few minutes, several GB: torch comes with it),
kept in the aipc-lsp cache folder beside the models and reused while the requirements stay the
same. It runs this checkout's code (PYTHONPATH), and its outputs land in the user's model cache,
where the server's own environment finds them. AIPC_LSP_SKIP_CONVERTER_ENV=1 skips these tests."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import openvino
import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from aipc_lsp.models.catalogue import SMOLLM2_135M
from aipc_lsp.models.registry import cache_dir
from conftest import two_real_suggestions, server_config, status, wait_ready

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
# torch and torchvision built for each other, that run on a CPU: PyPI's torchvision does not
# import beside a CPU-only torch wheel from elsewhere ("operator torchvision::nms does not exist").
TORCH_PAIRS = {
    "x86_64": ["torch==2.14.1", "torchvision==0.29.1"],
    "amd64": ["torch==2.14.1", "torchvision==0.29.1"],
    "aarch64": ["torch==2.9.1", "torchvision==0.24.1"],
    "arm64": ["torch==2.9.1", "torchvision==0.24.1"],
}

pytestmark = [
    pytest.mark.model,
    # The first test pays for the converter environment and two conversions.
    pytest.mark.timeout(2400),
    pytest.mark.skipif(os.environ.get("AIPC_LSP_SKIP_CONVERTER_ENV") == "1", reason="AIPC_LSP_SKIP_CONVERTER_ENV=1"),
]



def _requirements() -> list[str]:
    """aipc-lsp's own dependencies and its prepare-openvino extra, as pyproject.toml says them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pair = TORCH_PAIRS.get(platform.machine().lower(), [])
    return [*project["dependencies"], *project["optional-dependencies"]["prepare-openvino"], *pair]


def _env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(scope="session")
def converter_python() -> Path:
    requirements = _requirements()
    key = hashlib.sha256(json.dumps([sys.version_info[:2], platform.machine(), requirements]).encode()).hexdigest()[:12]
    env = cache_dir() / "converter-envs" / key
    ready = env / "aipc-ready"
    if ready.is_file():
        return _env_python(env)
    shutil.rmtree(env, ignore_errors=True)  # a build that stopped half-way
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    (env / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    done = subprocess.run([str(_env_python(env)), "-m", "pip", "install", "-q", "-r", str(env / "requirements.txt")],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    size = sum(f.stat().st_size for f in env.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\nconverter environment {env}: {time.monotonic() - started:.0f}s, {size / 1e9:.1f} GB")
    ready.write_text("\n".join(requirements), encoding="utf-8")
    return _env_python(env)


def _in_converter(python: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    """`aipc-lsp ARGS` in the converter environment, running this checkout's code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([str(python), "-m", "aipc_lsp", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _prepare(python: Path, precision: str) -> Path:
    started = time.monotonic()
    done = _in_converter(python, "prepare", SMOLLM2_135M.name, "--engine", "openvino", "--precision", precision)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "%" in done.stderr  # progress was shown
    assert len(done.stdout.strip().splitlines()) == 1, done.stdout  # stdout holds the path alone
    path = Path(done.stdout.strip())
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"\nprepare {SMOLLM2_135M.name} --engine openvino --precision {precision}: {path.name}, "
          f"{size / 1e6:.0f} MB, {time.monotonic() - started:.0f}s")
    return path


@pytest.fixture(scope="session")
def converted(converter_python) -> dict[str, Path]:
    return {"int8": _prepare(converter_python, "int8"), "int4": _prepare(converter_python, "int4")}


def test_int8_and_int4_irs_are_made_listed_and_described(converted):
    int8, int4 = converted["int8"], converted["int4"]
    assert int8.name == f"{SMOLLM2_135M.name}-openvino-int8"
    assert int4.name == f"{SMOLLM2_135M.name}-openvino-int4-g64"  # the group size chosen for 576 channels
    for path, bits, mode, group in ((int8, 8, "int8_asym", "-1"), (int4, 4, "int4_asym", "64")):
        for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml"):
            assert (path / name).is_file(), f"{path} lacks {name}"
        manifest = json.loads((path / "aipc-prepare.json").read_text())
        assert manifest["route"] == "optimum-intel" and manifest["source_checksum"] == SMOLLM2_135M.sha256
        quantization = json.loads((path / "openvino_config.json").read_text())["quantization_config"]
        assert quantization["bits"] == bits and ".tmp-" not in json.dumps(quantization), quantization
        # What NNCF itself recorded in the IR.
        model = openvino.Core().read_model(str(path / "openvino_model.xml"))
        compression = {key: model.get_rt_info(["nncf", "weight_compression", key]).astype(str)
                       for key in ("mode", "group_size")}
        assert compression == {"mode": mode, "group_size": group}, compression
    assert json.loads((int4 / "aipc-prepare.json").read_text())["used"]["group_size"] == 64
    assert (int4 / "openvino_model.bin").stat().st_size < 0.75 * (int8 / "openvino_model.bin").stat().st_size
    # The server's own environment lists them.
    listed = json.loads(subprocess.run([sys.executable, "-m", "aipc_lsp", "models", "list", "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    kinds = {entry["path"]: entry["kind"] for entry in listed}
    assert kinds[str(int8)] == kinds[str(int4)] == "openvino-ir"


def test_refusals_are_clear_and_leave_nothing_behind(converter_python, tmp_path):
    """Through the real optimum-intel: an architecture it cannot export, a group size that does
    not fit the model, and a converter that fails half-way."""
    models = tmp_path / "models"
    whisper = tmp_path / "whisper-tiny"
    whisper.mkdir()
    (whisper / "config.json").write_text(json.dumps({"architectures": ["WhisperForConditionalGeneration"],
                                                     "model_type": "whisper"}))
    done = _in_converter(converter_python, "prepare", str(whisper), "--engine", "openvino", "--precision", "int8",
                         "--output", str(models / "whisper"), timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "cannot export the 'WhisperForConditionalGeneration' architecture" in done.stderr, done.stderr[-2000:]

    done = _in_converter(converter_python, "prepare", SMOLLM2_135M.name, "--engine", "openvino", "--precision", "int4",
                         "--group-size", "128", "--output", str(models / "g128"), timeout=600)
    assert done.returncode == 1
    assert "--group-size 128 does not divide the model's channel count(s) 576" in done.stderr, done.stderr[-2000:]

    # A model folder without weights: optimum-intel fails once it loads the model.
    empty = tmp_path / "llama-without-weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                   "hidden_size": 64, "intermediate_size": 128}))
    done = _in_converter(converter_python, "prepare", str(empty), "--engine", "openvino", "--precision", "int8",
                         "--output", str(models / "empty"), timeout=600)
    assert done.returncode == 1
    assert "optimum-intel could not export LlamaForCausalLM" in done.stderr, done.stderr[-2000:]
    assert not models.exists() or list(models.iterdir()) == []  # no output and no hidden temp folder


@pytest_lsp.fixture(config=server_config(), scope="module", params=["int8", "int4"])
async def client(lsp_client: LanguageClient, request, converted):
    options = {"engine": "openvino", "model": str(converted[request.param]), "completion": {"max_tokens": 32}}
    lsp_client.set_configuration({"aipc": {}})
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"), initialization_options=options))
    state = await wait_ready(lsp_client, timeout=300)
    assert state["ready"], state
    yield
    await lsp_client.shutdown_session()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_server_completes_from_the_prepared_ir(client: LanguageClient, converted, request):
    slot = (await status(client))["slots"][0]
    assert slot["engine"] == "openvino", slot
    assert Path(slot["model"]) == converted[request.node.callspec.params["client"]], slot
    await two_real_suggestions(client)
    assert (await status(client))["slots"][0]["served"] >= 2
