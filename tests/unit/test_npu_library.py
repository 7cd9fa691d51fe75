"""The npu_library engine's own part (the probe's verdicts, the precision, the device it
reports, the model folder, the messages) and how it runs on the generic worker process: a fake
model engine (tests/unit/fake_npu_model.py) built by the real worker, and the real model engine up
to the point where it needs the library. The real library runs in
tests/e2e/test_npu_library_engine.py."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from aipc_lsp.config import NpuLibrarySettings
from aipc_lsp.engines import npu_library, npu_model
from aipc_lsp.engines.base import EngineError, GenerationParams
from aipc_lsp.engines.npu_library import NpuLibraryEngine, Probe

HERE = str(Path(__file__).resolve().parent)


@pytest.fixture
def no_npu(monkeypatch):
    """The library imports (in the worker's interpreter) and sees no NPU, as on this machine; the
    worker builds the fake model engine."""
    probes = []
    monkeypatch.setattr(npu_library, "probe",
                        lambda python="", timeout=60.0: probes.append(python) or Probe(python, True, "v-fake", False))
    monkeypatch.setattr(npu_library, "MODEL_ENGINE", ("fake_npu_model", "FakeNpuModel"))
    monkeypatch.setenv("PYTHONPATH", HERE)
    return probes


def _folder(tmp_path: Path, **behaviour) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "fake.json").write_text(json.dumps(behaviour), encoding="utf-8")
    return folder


def _engine(tmp_path: Path, precision: str = "", **behaviour) -> NpuLibraryEngine:
    # python "" = the server's interpreter, which keeps PYTHONPATH (the fake's folder) as it is.
    return NpuLibraryEngine(_folder(tmp_path, **behaviour), "NPU", precision=precision, threads=2)


@pytest.fixture
def loaded(tmp_path, no_npu, request):
    engine = _engine(tmp_path, **getattr(request, "param", {}))
    engine.load()
    yield engine
    engine.close()


def test_loads_on_the_cpu_fallback_and_says_so(loaded):
    assert loaded.info.device == "CPU" and loaded.device == "NPU"  # where it really runs, and what was asked
    assert "sees no NPU" in loaded.info.notice and "CPU" in loaded.info.notice
    # The default without an NPU is fp16 (int4/int8 garble there); the worker ran in a folder of its own.
    workdir = Path(loaded.cwd)
    assert loaded.info.chat_template == f"{{{{ fake fp16 2 {workdir.name} }}}}"
    assert workdir.name.startswith("aipc-npu-worker-")
    assert loaded.count_tokens("a b c") == 3
    loaded.close()
    assert not workdir.exists() and loaded.cwd is None


def test_generation_streams_pieces_and_fills_the_result(loaded):
    pieces = []
    result = loaded.generate("one two", GenerationParams(max_new_tokens=4), threading.Event(),
                             lambda piece: pieces.append(piece) is None)
    assert pieces == ["tok1 ", "tok2 ", "tok3 ", "tok4 "]
    assert result.text == "tok1 tok2 tok3 tok4 " and result.tokens == 4
    assert result.first_token_s is not None and result.total_s >= result.first_token_s
    assert not result.cancelled and not result.stopped_by_caller


def test_stop_strings_and_on_text_false_end_generation(loaded):
    result = loaded.generate("x", GenerationParams(max_new_tokens=50, stop=("tok3",)), threading.Event())
    assert result.stopped_by_caller and result.text == "tok1 tok2 tok3 "
    seen = []
    result = loaded.generate("x", GenerationParams(max_new_tokens=50), threading.Event(),
                             lambda piece: seen.append(piece) is None and len(seen) < 2)
    assert result.stopped_by_caller and not result.cancelled
    assert 2 <= result.tokens <= 4  # pieces are not acknowledged: the stop lands within a step or two
    # The worker is ready for the next request at once.
    assert loaded.generate("x", GenerationParams(max_new_tokens=1), threading.Event()).text == "tok1 "


@pytest.mark.parametrize("loaded", [{"delay": 0.05}], indirect=True)
def test_cancel_lands_within_a_step(loaded):
    pid = loaded._proc.pid
    cancel = threading.Event()
    seen: list[str] = []

    def third_piece_cancels(piece: str) -> bool:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()  # as a cancel from another thread: the worker hears it through the flags file
        return True

    result = loaded.generate("x", GenerationParams(max_new_tokens=1000), cancel, third_piece_cancels)
    # Pieces are not acknowledged: the cancel lands within a step or two of the third.
    assert result.cancelled and 3 <= result.tokens < 20, result
    assert loaded.generate("x", GenerationParams(max_new_tokens=2), threading.Event()).text == "tok1 tok2 "
    assert loaded._proc.pid == pid
    cancel = threading.Event()
    cancel.set()
    assert loaded.generate("x", GenerationParams(), cancel).cancelled  # before it starts: no work at all


@pytest.mark.parametrize("loaded", [{"delay": 0.05}], indirect=True)
def test_tokens_are_counted_while_another_thread_generates(loaded):
    """The event loop counts tokens on every keystroke while the slot thread generates: the
    answers must not wait for the generation, nor get mixed up with its stream."""
    outcome = {}
    streaming = threading.Event()
    worker = threading.Thread(target=lambda: outcome.update(result=loaded.generate(
        "x", GenerationParams(max_new_tokens=30), threading.Event(), lambda piece: streaming.set() or True)))
    worker.start()
    assert streaming.wait(30), "the generation never streamed"
    for n in range(1, 6):
        assert loaded.count_tokens(" ".join("a" * n)) == n
    assert worker.is_alive()  # answered while it was still generating, not after
    worker.join(10)
    assert outcome["result"].text == "".join(f"tok{i} " for i in range(1, 31))


@pytest.mark.parametrize("loaded", [{"crash_after": 3}], indirect=True)
def test_a_worker_that_dies_is_restarted_without_probing_again(loaded, no_npu):
    first = loaded._proc.pid
    with pytest.raises(EngineError, match=r"npu_library: the worker process exited \(code 3\).*crashes now"):
        loaded.generate("x", GenerationParams(max_new_tokens=100), threading.Event())
    # The scheduler's retry (or the next request) gets a new worker with the model loaded again,
    # in the same folder and precision; the probe (seconds in the library's interpreter) is not repeated.
    result = loaded.generate("x", GenerationParams(max_new_tokens=2), threading.Event())
    assert result.text == "tok1 tok2 " and loaded._proc.pid != first
    assert loaded.info.chat_template.startswith("{{ fake fp16 2 aipc-npu-worker-")
    assert len(no_npu) == 1


@pytest.mark.parametrize("loaded", [{"hang_after": 2}], indirect=True)
def test_the_stall_watchdog_aborts_a_stuck_worker(loaded):
    stuck = threading.Event()  # set at the second piece: the worker hangs after it
    pieces: list[str] = []

    def on_text(piece: str) -> bool:
        pieces.append(piece)
        if len(pieces) == 2:
            stuck.set()
        return True

    # The scheduler's watchdog calls abort from the event loop's thread.
    watchdog = threading.Thread(target=lambda: stuck.wait(30) and loaded.abort())
    watchdog.start()
    with pytest.raises(EngineError, match="exited"):
        loaded.generate("x", GenerationParams(max_new_tokens=100), threading.Event(), on_text)
    watchdog.join(30)
    assert loaded.generate("x", GenerationParams(max_new_tokens=1), threading.Event()).text == "tok1 "


def test_a_missing_interpreter_is_an_engine_error(tmp_path, no_npu):
    engine = NpuLibraryEngine(_folder(tmp_path), options=NpuLibrarySettings(python=str(tmp_path / "no-python")))
    with pytest.raises(EngineError, match="npu_library: could not start the worker process .*no-python"):
        engine.load()
    engine.close()


def test_a_model_that_fails_to_load_leaves_no_worker(tmp_path, no_npu, monkeypatch):
    monkeypatch.setattr(npu_library, "MODEL_ENGINE", ("aipc_lsp.engines.npu_model", "NpuModelEngine"))
    engine = _engine(tmp_path)
    (tmp_path / "hf" / "config.json").unlink()  # not a model folder: the worker's load says so
    with pytest.raises(EngineError, match="no config.json"):
        engine.load()
    assert engine._proc is None
    engine.close()


def test_bad_precision_and_device_are_refused_before_any_process(tmp_path, no_npu):
    with pytest.raises(EngineError, match="int4, int8 or fp16"):
        _engine(tmp_path, precision="fp32").load()
    engine = NpuLibraryEngine(_folder(tmp_path), "CPU")
    with pytest.raises(EngineError, match="device = \"NPU\""):
        engine.load()
    assert engine._proc is None and not no_npu  # not even the probe


def test_explicit_precision_reaches_the_worker(tmp_path, no_npu):
    engine = _engine(tmp_path, precision="INT8")
    engine.load()
    try:
        assert engine.info.chat_template.startswith("{{ fake int8 2 ")
    finally:
        engine.close()


def test_generate_before_load_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError, match="not loaded"):
        NpuLibraryEngine(_folder(tmp_path)).generate("x", GenerationParams(), threading.Event())


# -- the real model engine, without the library ----------------------------------------------------

def test_the_model_engine_checks_its_arguments_before_importing_anything(tmp_path):
    with pytest.raises(EngineError, match="precision 'fp32' is not supported"):
        npu_model.NpuModelEngine(str(_folder(tmp_path)), precision="fp32").load()
    with pytest.raises(EngineError, match="no config.json"):
        npu_model.NpuModelEngine(str(tmp_path / "nothing"), precision="fp16").load()


def test_the_real_worker_reports_a_missing_library(tmp_path, no_npu, monkeypatch):
    pytest.importorskip("torch")
    import subprocess

    if subprocess.run([sys.executable, "-c", "import intel_npu_acceleration_library"], capture_output=True).returncode == 0:
        pytest.skip("the library is importable here")  # pragma: no cover
    monkeypatch.setattr(npu_library, "MODEL_ENGINE", ("aipc_lsp.engines.npu_model", "NpuModelEngine"))
    engine = NpuLibraryEngine(_folder(tmp_path), options=NpuLibrarySettings(python=sys.executable))  # isolated, like the library's
    with pytest.raises(EngineError, match="npu_library: ModuleNotFoundError: .*intel_npu_acceleration_library"):
        engine.load()
    assert engine._proc is None


def test_transformers_5_rope_settings_are_passed_to_transformers_4(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}), encoding="utf-8")
    assert npu_model.legacy_config_overrides(str(tmp_path)) == {"rope_theta": 100000.0}
    (tmp_path / "config.json").write_text(json.dumps(
        {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}), encoding="utf-8")
    assert npu_model.legacy_config_overrides(str(tmp_path)) == {
        "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    (tmp_path / "config.json").write_text(json.dumps({"rope_theta": 1e4}), encoding="utf-8")
    assert npu_model.legacy_config_overrides(str(tmp_path)) == {}


def test_prefill_chunks_are_powers_of_two():
    engine = npu_model.NpuModelEngine("m", precision="fp16")
    assert [engine._chunk_size(n) for n in (1, 2, 3, 255, 256, 257, 5000)] == [1, 2, 2, 128, 256, 256, 256]


# -- which model folder it loads --------------------------------------------------------------------

def test_a_gguf_becomes_the_hugging_face_folder_prepare_makes_before_the_engine_starts(tmp_path, monkeypatch):
    from aipc_lsp.config import Settings
    from aipc_lsp.models import resolve
    from aipc_lsp.models.catalogue import SMOLLM2_135M

    calls = []
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache" / "models").mkdir(parents=True)
    gguf = tmp_path / "cache" / "models" / SMOLLM2_135M.filename  # a catalogue model: prepared by its name
    gguf.write_bytes(b"GGUF" + b"\0" * 32)
    monkeypatch.setattr(resolve, "prepare", lambda source, options, **kw: calls.append((source, options)) or tmp_path)
    assert resolve.engine_model(gguf, "npu_library", Settings()) == tmp_path
    assert calls[0][0] == "smollm2-135m" and (calls[0][1].engine, calls[0][1].precision) == ("transformers", "fp32")
    assert resolve.ready_for_engines(gguf, Settings(engine="npu_library")) == [f"npu_library loads {gguf}"]
    assert len(calls) == 1  # `models fetch` makes nothing that needs extra installs

    def refuse(source, options, **kw):
        raise resolve.PrepareError("dequantising a GGUF needs torch")

    monkeypatch.setattr(resolve, "prepare", refuse)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 32)
    with pytest.raises(resolve.PrepareError,
                       match=r"needs torch.*aipc-lsp prepare .*other.gguf --engine transformers --precision fp32"):
        resolve.engine_model(other, "npu_library", Settings())


def test_the_default_model_uses_the_transformers_folder(tmp_path, monkeypatch):
    from aipc_lsp.models import compat
    from aipc_lsp.models.catalogue import DEFAULT_MODEL

    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path))
    models = tmp_path / "models"
    models.mkdir()
    gguf = models / DEFAULT_MODEL.filename
    gguf.write_bytes(b"GGUF")
    assert compat.model_for_engine(gguf, "npu_library") == gguf  # dequantised before the engine loads
    hf = models / f"{DEFAULT_MODEL.name}-transformers-fp32"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert compat.model_for_engine(gguf, "npu_library") == hf


async def test_the_scheduler_tells_the_user_what_an_engine_notices():
    from aipc_lsp.scheduler import Scheduler, Slot
    from fake_engine import FakeEngine

    engine = FakeEngine(notice="npu_library: no NPU here; it runs on OpenVINO's CPU device instead")
    told = []
    scheduler = Scheduler([Slot("npu", engine)], on_problem=told.append)
    try:
        await scheduler.wait_ready()
    finally:
        scheduler.close()
    assert told == [f"aipc-lsp: slot npu: {engine.notice}"]


def test_npu_library_is_not_wrapped_in_a_second_worker_process():
    from aipc_lsp.config import Settings, SlotSettings
    from aipc_lsp.engines import create_engine

    settings = Settings()
    assert settings.scheduler.engine_process  # the other engines run in a worker of the server's interpreter
    engine = create_engine(SlotSettings(engine="npu_library", device="NPU", threads=2), "model", settings)
    assert isinstance(engine, NpuLibraryEngine)  # it has its own, in the library's environment
    assert engine.precision == "" and engine.threads == 2  # "" = int4 on an NPU, fp16 without
