"""What keeps the engine worker's memory down: the mapped weights file's pages given back once
the CPU plugin has repacked them, an OpenVINO IR in place of a GGUF (made once in a child process),
and the worker's environment (one malloc arena)."""

from __future__ import annotations

import json
import mmap
import sys
import threading
import time
from pathlib import Path

import pytest

from aipc_lsp.engines import pages
from aipc_lsp.models import convert, gguf_ir
from aipc_lsp.models.convert import PrepareError, PrepareOptions

HERE = str(Path(__file__).resolve().parent)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise: Linux")

MAPS = """\
7f1962600000-7f1967e34000 r--s 00000000 fe:00 16039964   /models/ir/openvino_model.bin
7f1970000000-7f1970001000 rw-p 00000000 fe:00 16039964   /models/ir/openvino_model.bin
7f1971000000-7f1971002000 r--p 00001000 fe:00 16039964   /models/ir/openvino_model.bin
7f1972000000-7f1972001000 r--s 00000000 fe:00 16039965   /models/ir/openvino_tokenizer.bin
7f1973000000-7f1973001000 r--s 00000000 fe:00 16039966   /models/my ir/openvino_model.bin
7f1974000000-7f1974001000 rw-p 00000000 00:00 0
"""


def test_only_read_only_mappings_of_the_very_file_are_released():
    assert pages.read_only_ranges("/models/ir/openvino_model.bin", MAPS) == [
        (0x7f1962600000, 0x7f1967e34000), (0x7f1971000000, 0x7f1971002000)]  # not the writable private one
    assert pages.read_only_ranges("/models/my ir/openvino_model.bin", MAPS) == [(0x7f1973000000, 0x7f1973001000)]
    assert pages.read_only_ranges("/models/other.bin", MAPS) == []


def _resident_kb(start: int) -> int:
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{start:x}-"):
            return next(int(l.split()[1]) for l in lines[i + 1:] if l.startswith("Rss:"))
    raise AssertionError("mapping not found")


@linux_only
def test_released_pages_leave_the_process_and_read_back_unchanged(tmp_path):
    weights = tmp_path / "openvino_model.bin"
    data = bytes(range(256)) * (4 << 12)  # 4 MB
    weights.write_bytes(data)
    with weights.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # shared, read-only: as OpenVINO maps it
    try:
        assert mapped[:] == data  # every page resident
        start = pages.read_only_ranges(str(weights.resolve()), Path("/proc/self/maps").read_text())[0][0]
        assert _resident_kb(start) >= 4000
        assert pages.release(weights) == len(data)
        assert _resident_kb(start) < 100
        assert mapped[:] == data  # read again from the page cache
    finally:
        mapped.close()
    assert pages.release(weights) == 0  # nothing maps it any more
    assert pages.release(tmp_path / "missing.bin") == 0


def test_releasing_runs_while_the_work_runs_and_once_after(monkeypatch):
    calls = []
    monkeypatch.setattr(pages, "release", lambda path: calls.append((path, time.monotonic())) or 0)
    with pages.Releasing("w.bin", interval_s=0.005):
        time.sleep(0.05)  # the work (a native call that releases the GIL)
        during = len(calls)
    assert during >= 2 and len(calls) == during + 1
    assert {path for path, _ in calls} == {"w.bin"}
    calls.clear()
    with pages.Releasing(None):  # a GGUF, or release_weight_pages off: no thread, nothing released
        pass
    assert calls == [] and not any(t.name == "aipc-release-weights" for t in threading.enumerate())


# -- an IR in place of a GGUF -------------------------------------------------------------------

def _cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    return models


def _gguf(folder: Path, name: str = "Tiny-Coder.Q4_K_M.gguf") -> Path:
    path = folder / name
    path.write_bytes(b"GGUF" + b"\0" * 64)
    return path


def _fake_ir(gguf: Path) -> Path:
    """The folder the GGUF reader's route leaves, with its manifest."""
    src = convert.resolve_source(str(gguf))
    chosen = convert.Plan(convert.ROUTE_GGUF_READER, PrepareOptions("openvino", "int4"))
    out = convert.default_output(src, chosen)
    out.mkdir()
    (out / "openvino_model.xml").write_text("<net/>")
    (out / convert.MANIFEST).write_text(json.dumps(convert._manifest(src, chosen.options, chosen)))
    return out


@pytest.mark.parametrize("name, precision", [
    ("Tiny.Q4_K_M.gguf", "int4"), ("tiny.q5_0.gguf", "int4"), ("Tiny.IQ4_XS.gguf", "int4"), ("Tiny.Q8_0.gguf", "int8"),
    ("Tiny.F16.gguf", "fp16"), ("Tiny.BF16.gguf", "fp16"), ("Tiny.f32.gguf", "fp32"), ("tiny.gguf", None)])
def test_the_precision_of_a_gguf_comes_from_its_name_in_the_servers_process(name, precision):
    assert gguf_ir.precision_of(Path(name), read_tensors=False) == precision


def test_the_cached_ir_is_found_only_for_the_same_gguf(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    gguf = _gguf(models)
    assert gguf_ir.cached(gguf) is None
    out = _fake_ir(gguf)
    assert out.name == "tiny-coder-openvino-int4"
    assert gguf_ir.cached(gguf) == out
    gguf.write_bytes(b"GGUF" + b"\1" * 64)  # another file under the same name: not its IR
    assert gguf_ir.cached(gguf) is None
    assert gguf_ir.cached(_gguf(models, "unknown.gguf")) is None  # precision unknown here: the child decides


def test_a_missing_ir_is_made_in_a_child_process(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    gguf = _gguf(models)
    commands = []

    def child(command, **kwargs):
        commands.append(command)
        out = _fake_ir(gguf)
        return type("Done", (), {"returncode": 0, "stdout": f"{out}\n", "stderr": ""})()

    monkeypatch.setattr(gguf_ir.subprocess, "run", child)
    said = []
    out = gguf_ir.ir_for(gguf, lambda message, percent: said.append(message))
    assert out == models / "tiny-coder-openvino-int4"
    assert commands == [[sys.executable, "-m", "aipc_lsp.models.gguf_ir", str(gguf)]]
    assert "once" in said[0]
    assert gguf_ir.ir_for(gguf) == out and len(commands) == 1  # cached now: no child


def test_a_failed_conversion_loads_the_gguf_itself_with_a_warning(tmp_path, monkeypatch):
    from aipc_lsp.runtime import openvino_ir_of_gguf

    models = _cache(tmp_path, monkeypatch)
    gguf = _gguf(models)
    failed = type("Failed", (), {"returncode": 1, "stdout": "", "stderr": "Traceback ...\nRuntimeError: no room\n"})()
    monkeypatch.setattr(gguf_ir.subprocess, "run", lambda command, **kwargs: failed)
    with pytest.raises(PrepareError, match="no room"):
        gguf_ir.ir_for(gguf)
    warnings = []
    assert openvino_ir_of_gguf(gguf, lambda *a: None, warnings.append) == gguf
    assert "itself" in warnings[0] and "no room" in warnings[0]


def test_the_gguf_readers_route_can_be_forced(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    gguf = _gguf(models)
    monkeypatch.setattr(convert, "_optimum_available", lambda: True)  # plan() would choose optimum-intel
    routes = []

    def build(src, chosen, built, work, progress):
        routes.append(chosen.route)
        built.mkdir(parents=True)
        (built / "openvino_model.xml").write_text("<net/>")

    monkeypatch.setattr(convert, "_build", build)
    out = convert.prepare(str(gguf), PrepareOptions("openvino", "int4"), route=convert.ROUTE_GGUF_READER)
    assert routes == [convert.ROUTE_GGUF_READER] and out.name == "tiny-coder-openvino-int4"
    assert gguf_ir.cached(gguf) == out
    with pytest.raises(PrepareError, match="GGUF files for openvino only"):
        convert.prepare(str(gguf), PrepareOptions("onnxruntime", "int4"), route=convert.ROUTE_GGUF_READER)


# -- the worker's environment -------------------------------------------------------------------

def test_the_openvino_worker_gets_one_malloc_arena_unless_the_user_set_it(monkeypatch):
    from aipc_lsp.config import Settings
    from aipc_lsp.engines import create_engine
    from aipc_lsp.engines.base import GenerationParams
    from aipc_lsp.engines.process import EngineSpec, ProcessEngine

    settings = Settings()
    assert create_engine(settings.slot_list()[0], "m.gguf", settings).env == {"MALLOC_ARENA_MAX": "1"}
    monkeypatch.setenv("PYTHONPATH", HERE)
    for preset, expected in ((None, "1"), ("4", "4")):
        if preset is None:
            monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
        else:
            monkeypatch.setenv("MALLOC_ARENA_MAX", preset)
        engine = ProcessEngine("fake", "/m", "CPU", EngineSpec("worker_engines", "EnvEngine", (), {"token_delay": 0}),
                               env={"MALLOC_ARENA_MAX": "1"})
        try:
            engine.load()
            assert engine.generate("x", GenerationParams(), threading.Event()).text == expected
        finally:
            engine.close()


SMAPS = """\
55d0a0000000-55d0a0001000 r--p 00000000 fe:00 11   /usr/lib/libplugin.so
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
55d0a0001000-55d0a0003000 r-xp 00001000 fe:00 11   /usr/lib/libplugin.so
Size:                  8 kB
Anonymous:             0 kB
55d0a0003000-55d0a0004000 r--p 00003000 fe:00 11   /usr/lib/libplugin.so
Size:                  4 kB
Anonymous:             4 kB
55d0a0004000-55d0a0005000 rw-p 00004000 fe:00 11   /usr/lib/libplugin.so
Anonymous:             4 kB
7f1962600000-7f1967e34000 r--s 00000000 fe:00 16039964   /models/my ir/openvino_model.bin
Anonymous:             0 kB
7f1974000000-7f1974001000 r--p 00000000 00:00 0
Anonymous:             0 kB
7ffd1c3f0000-7ffd1c3f2000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7f1975000000-7f1975001000 rw-s 00000000 00:1a 77   /dev/shm/aipc-lsp-flags-x
Anonymous:             0 kB
"""


def test_clean_file_ranges_leave_out_private_pages_writable_and_anonymous_mappings():
    assert pages.clean_file_ranges(SMAPS) == [
        (0x55d0a0000000, 0x55d0a0001000),  # read-only data
        (0x55d0a0001000, 0x55d0a0003000),  # code
        (0x7f1962600000, 0x7f1967e34000),  # a model file, a space in its path
    ]  # not RELRO (private pages), not writable, not anonymous memory, not [vdso], not a shared flag


@linux_only
def test_release_file_pages_keeps_private_pages_and_gives_back_clean_ones(tmp_path):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    data = bytes(range(256)) * (4 << 12)  # 4 MB
    clean_file, relro_file = tmp_path / "clean.bin", tmp_path / "relro.bin"
    clean_file.write_bytes(data)
    relro_file.write_bytes(data)
    with clean_file.open("rb") as f:
        clean = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with relro_file.open("r+b") as f:
        # As the dynamic linker does with RELRO: a private mapping written to, then made read-only.
        relro = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        relro[:4] = b"RELO"
        address = ctypes.addressof(ctypes.c_char.from_buffer(relro))
        assert libc.mprotect(address, len(data), 1) == 0  # PROT_READ
        assert clean[:] == data
        start = pages.read_only_ranges(str(clean_file.resolve()), Path("/proc/self/maps").read_text())[0][0]
        assert _resident_kb(start) >= 4000
        assert pages.release_file_pages() >= len(data)
        assert _resident_kb(start) < 100
        assert clean[:] == data  # read again from the page cache
        assert relro[:4] == b"RELO" and relro[4:] == data[4:]  # its private page was kept
    finally:
        clean.close()
        assert libc.mprotect(address, len(data), 3) == 0  # PROT_READ | PROT_WRITE, so it can be unmapped
        relro.close()
