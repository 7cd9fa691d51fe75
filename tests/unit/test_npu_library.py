"""The npu_library engine's worker protocol and error paths, with a fake worker
(tests/unit/fake_npu_worker.py) that speaks the protocol without the library, and the real
worker script up to the point where it needs the library. The real library runs in
tests/e2e/test_npu_library_engine.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aipc_lsp.engines import npu_library, npu_worker
from aipc_lsp.engines.base import EngineError, GenerationParams
from aipc_lsp.engines.npu_library import NpuLibraryEngine, Probe, hf_folder_for

FAKE = Path(__file__).with_name("fake_npu_worker.py")
WORKER = Path(npu_library.__file__).with_name("npu_worker.py")


@pytest.fixture
def no_npu(monkeypatch):
    """The library imports (in the fake's interpreter) and sees no NPU, as on this machine."""
    monkeypatch.setattr(npu_library, "probe", lambda python="", timeout=60.0: Probe(python, True, "v-fake", False))


def _folder(tmp_path: Path, **behaviour) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "fake.json").write_text(json.dumps(behaviour), encoding="utf-8")
    return folder


def _engine(tmp_path: Path, precision: str = "", **behaviour) -> NpuLibraryEngine:
    return NpuLibraryEngine(_folder(tmp_path, **behaviour), "NPU", precision=precision, python=sys.executable,
                            worker_script=FAKE)


@pytest.fixture
def loaded(tmp_path, no_npu, request):
    engine = _engine(tmp_path, **getattr(request, "param", {}))
    engine.load()
    yield engine
    engine.close()


def test_loads_on_the_cpu_fallback_and_says_so(loaded):
    assert loaded.device == "CPU"  # where it really runs, for status and the log
    assert "sees no NPU" in loaded.notice and "CPU" in loaded.notice
    assert loaded.info["precision"] == "fp16"  # the default without an NPU: int4/int8 garble there
    assert loaded.count_tokens("a b c") == 3
    assert loaded.chat_template() == "{{ fake }}"


def test_generation_streams_pieces_and_fills_the_result(loaded):
    pieces = []
    result = loaded.generate("one two", GenerationParams(max_new_tokens=4), threading.Event(),
                             lambda piece: pieces.append(piece) is None)
    assert pieces == ["tok1 ", "tok2 ", "tok3 ", "tok4 "]
    assert result.text == "tok1 tok2 tok3 tok4 " and result.tokens == 4 and result.prompt_tokens == 2
    assert result.first_token_s is not None and result.total_s >= result.first_token_s
    assert not result.cancelled and not result.stopped_by_caller


def test_stop_strings_and_on_text_false_end_generation(loaded):
    result = loaded.generate("x", GenerationParams(max_new_tokens=50, stop=("tok3",)), threading.Event())
    assert result.stopped_by_caller and result.text == "tok1 tok2 tok3 "
    seen = []
    result = loaded.generate("x", GenerationParams(max_new_tokens=50), threading.Event(),
                             lambda piece: seen.append(piece) is None and len(seen) < 2)
    assert result.stopped_by_caller and not result.cancelled
    assert result.text == "tok1 tok2 " and result.tokens == 2
    # The worker is ready for the next request at once.
    assert loaded.generate("x", GenerationParams(max_new_tokens=1), threading.Event()).text == "tok1 "


@pytest.mark.parametrize("loaded", [{"delay": 0.05}], indirect=True)
def test_cancel_lands_within_a_step(loaded):
    pid = loaded._worker.pid
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result = loaded.generate("x", GenerationParams(max_new_tokens=1000), cancel)
    assert result.cancelled and 0 < result.tokens < 20
    assert time.monotonic() - started < 1.5
    assert loaded.generate("x", GenerationParams(max_new_tokens=2), threading.Event()).text == "tok1 tok2 "
    assert loaded._worker.pid == pid
    cancel = threading.Event()
    cancel.set()
    assert loaded.generate("x", GenerationParams(), cancel).cancelled  # before it starts: no work at all


@pytest.mark.parametrize("loaded", [{"delay": 0.05}], indirect=True)
def test_tokens_are_counted_while_another_thread_generates(loaded):
    """The event loop counts tokens on every keystroke while the slot thread generates: the
    answers must not wait for the generation, nor get mixed up with its stream."""
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=loaded.generate(
        "x", GenerationParams(max_new_tokens=30), threading.Event())))
    worker.start()
    time.sleep(0.2)
    for n in range(1, 6):
        asked = time.monotonic()
        assert loaded.count_tokens("a " * n) == n
        assert time.monotonic() - asked < 0.5
    assert worker.is_alive()  # still generating meanwhile
    worker.join(10)
    assert outcome["result"].text == "".join(f"tok{i} " for i in range(1, 31))


@pytest.mark.parametrize("loaded", [{"crash_after": 3}], indirect=True)
def test_a_worker_that_dies_mid_generation_is_an_engine_error_and_is_restarted(loaded):
    first = loaded._worker.pid
    with pytest.raises(EngineError, match=r"exited with code 3.*crashes now"):
        loaded.generate("x", GenerationParams(max_new_tokens=100), threading.Event())
    # The scheduler's retry (or the next request) gets a new worker with the model loaded again.
    result = loaded.generate("x", GenerationParams(max_new_tokens=2), threading.Event())
    assert result.text == "tok1 tok2 " and loaded._worker.pid != first


@pytest.mark.parametrize("loaded", [{"hang_after": 2}], indirect=True)
def test_a_hung_worker_is_killed_after_a_cancel(loaded, monkeypatch):
    monkeypatch.setattr(npu_library, "CANCEL_GRACE_S", 0.5)
    worker = loaded._worker
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()  # what the scheduler's stall watchdog does
    started = time.monotonic()
    with pytest.raises(EngineError, match="did not stop within"):
        loaded.generate("x", GenerationParams(max_new_tokens=100), cancel)
    assert time.monotonic() - started < 5
    assert worker.proc.poll() is not None  # killed, not left behind


@pytest.mark.parametrize("loaded", [{"hang_after": 2}], indirect=True)
def test_the_stall_watchdog_aborts_a_stuck_worker(loaded):
    threading.Timer(0.5, loaded.abort).start()  # the scheduler calls it from the event loop's thread
    started = time.monotonic()
    with pytest.raises(EngineError, match="exited"):
        loaded.generate("x", GenerationParams(max_new_tokens=100), threading.Event())
    assert time.monotonic() - started < 3
    assert loaded.generate("x", GenerationParams(max_new_tokens=1), threading.Event()).text == "tok1 "


@pytest.mark.parametrize("loaded", [{"hang_after": 1}], indirect=True)
def test_a_silent_worker_is_killed(loaded, monkeypatch):
    monkeypatch.setattr(npu_library, "SILENCE_TIMEOUT_S", 0.5)
    with pytest.raises(EngineError, match="sent nothing"):
        loaded.generate("x", GenerationParams(max_new_tokens=100), threading.Event())
    assert loaded._worker is None or not loaded._worker.alive()


def test_a_missing_worker_or_interpreter_is_an_engine_error(tmp_path, no_npu):
    engine = NpuLibraryEngine(_folder(tmp_path), python=sys.executable, worker_script=tmp_path / "gone.py")
    with pytest.raises(EngineError, match="worker script .* is missing"):
        engine.load()
    engine = NpuLibraryEngine(_folder(tmp_path), python=str(tmp_path / "no-python"), worker_script=FAKE)
    with pytest.raises(EngineError, match="cannot start"):
        engine.load()


def test_something_that_is_not_a_worker_is_an_engine_error(tmp_path, no_npu):
    impostor = tmp_path / "impostor.py"
    impostor.write_text("print('hello, I am not JSON')\nimport sys\nsys.exit(7)\n", encoding="utf-8")
    engine = NpuLibraryEngine(_folder(tmp_path), python=sys.executable, worker_script=impostor)
    with pytest.raises(EngineError, match="exited with code 7"):
        engine.load()
    assert engine._worker is None


def test_bad_precision_and_device_are_refused_before_any_process(tmp_path, no_npu):
    with pytest.raises(EngineError, match="int4, int8 or fp16"):
        _engine(tmp_path, precision="fp32").load()
    engine = NpuLibraryEngine(_folder(tmp_path), "CPU", python=sys.executable, worker_script=FAKE)
    with pytest.raises(EngineError, match="device = \"NPU\""):
        engine.load()
    assert engine._worker is None


def test_explicit_precision_reaches_the_worker(tmp_path, no_npu):
    engine = _engine(tmp_path, precision="int8")
    engine.load()
    try:
        assert engine.info["precision"] == "int8"
    finally:
        engine.close()


def test_generate_before_load_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError, match="not loaded"):
        NpuLibraryEngine(_folder(tmp_path)).generate("x", GenerationParams(), threading.Event())


# -- the real worker script, without the library ---------------------------------------------------

def test_the_real_worker_speaks_only_protocol_on_stdout(tmp_path):
    folder = _folder(tmp_path)
    proc = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    requests = [
        "this is not json",
        {"cancel": 99},
        {"id": 1, "op": "count_tokens", "text": "x"},
        {"id": 2, "op": "load", "model": str(folder), "precision": "fp32"},
        {"id": 3, "op": "load", "model": str(tmp_path), "precision": "fp16"},
        {"id": 4, "op": "fly"},
        {"id": 5, "op": "close"},
    ]
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    out, err = proc.communicate(lines, timeout=120)
    assert proc.returncode == 0, err
    messages = [json.loads(line) for line in out.splitlines()]  # every line is protocol
    assert messages[0]["hello"] == npu_worker.PROTOCOL
    answers = {m["id"]: m for m in messages[1:]}
    assert set(answers) == {1, 2, 3, 4, 5}  # a cancel gets no answer
    assert "no model loaded" in answers[1]["error"]
    assert "precision 'fp32' is not supported" in answers[2]["error"]
    assert "no config.json" in answers[3]["error"]
    assert "unknown op" in answers[4]["error"]
    assert answers[5] == {"id": 5, "ok": True, "result": None}
    assert "not JSON" in err


def test_the_real_worker_reports_a_missing_library(tmp_path):
    pytest.importorskip("torch")
    if subprocess.run([sys.executable, "-c", "import intel_npu_acceleration_library"], capture_output=True).returncode == 0:
        pytest.skip("the library is importable here")  # pragma: no cover
    folder = _folder(tmp_path)
    request = json.dumps({"id": 1, "op": "load", "model": str(folder), "precision": "fp16"})
    done = subprocess.run([sys.executable, "-I", str(WORKER)], input=request + "\n", capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    answer = json.loads(done.stdout.splitlines()[-1])
    assert not answer["ok"] and "intel_npu_acceleration_library" in answer["error"], done


def test_transformers_5_rope_settings_are_passed_to_transformers_4(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}), encoding="utf-8")
    assert npu_worker.legacy_config_overrides(str(tmp_path)) == {"rope_theta": 100000.0}
    (tmp_path / "config.json").write_text(json.dumps(
        {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}), encoding="utf-8")
    assert npu_worker.legacy_config_overrides(str(tmp_path)) == {
        "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    (tmp_path / "config.json").write_text(json.dumps({"rope_theta": 1e4}), encoding="utf-8")
    assert npu_worker.legacy_config_overrides(str(tmp_path)) == {}
    (tmp_path / "chat_template.jinja").write_text("{{ x }}", encoding="utf-8")
    assert npu_worker.chat_template_from_folder(str(tmp_path)) == "{{ x }}"


# -- which model folder it loads --------------------------------------------------------------------

def test_a_gguf_becomes_the_hugging_face_folder_prepare_makes(tmp_path, monkeypatch):
    from aipc_lsp.models import convert
    from aipc_lsp.models.registry import DEFAULT_MODEL

    with pytest.raises(EngineError, match="no config.json"):
        hf_folder_for(tmp_path)
    with pytest.raises(EngineError, match="does not exist"):
        hf_folder_for(tmp_path / "nothing")
    calls = []
    gguf = tmp_path / DEFAULT_MODEL.filename
    gguf.write_bytes(b"GGUF" + b"\0" * 32)
    monkeypatch.setattr(convert, "prepare", lambda source, options, **kw: calls.append((source, options)) or tmp_path)
    assert hf_folder_for(gguf) == tmp_path
    assert calls[0][0] == "default" and (calls[0][1].engine, calls[0][1].precision) == ("transformers", "fp32")

    def refuse(source, options, **kw):
        raise convert.PrepareError("dequantising a GGUF needs torch")

    monkeypatch.setattr(convert, "prepare", refuse)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 32)
    with pytest.raises(EngineError, match=r"needs torch.*aipc-lsp prepare .*other.gguf --engine transformers --precision fp32"):
        hf_folder_for(other)


def test_the_default_model_uses_the_transformers_folder(tmp_path, monkeypatch):
    from aipc_lsp.models import compat
    from aipc_lsp.models.registry import DEFAULT_MODEL

    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path))
    models = tmp_path / "models"
    models.mkdir()
    gguf = models / DEFAULT_MODEL.filename
    gguf.write_bytes(b"GGUF")
    assert compat.model_for_engine(gguf, "npu_library") == gguf  # dequantised when the engine loads
    hf = models / f"{DEFAULT_MODEL.name}-transformers-fp32"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert compat.model_for_engine(gguf, "npu_library") == hf


async def test_the_scheduler_tells_the_user_what_an_engine_notices():
    from aipc_lsp.scheduler import Scheduler, Slot
    from fake_engine import FakeEngine

    engine = FakeEngine()
    engine.notice = "npu_library: no NPU here; it runs on OpenVINO's CPU device instead"
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
