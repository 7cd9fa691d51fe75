"""What keeps the engine worker's memory down: the mapped weights file's pages given back once
the CPU plugin has repacked them, and the worker's environment (one malloc arena). The OpenVINO IR
loaded in place of a GGUF is tested in test_gguf_ir.py."""

from __future__ import annotations

import mmap
import sys
import threading
import time
from pathlib import Path

import pytest

from aipc_lsp.engines import pages

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


# -- the worker's environment -------------------------------------------------------------------

def test_the_openvino_worker_gets_one_malloc_arena_unless_the_user_set_it(monkeypatch):
    from aipc_lsp.config import Settings
    from aipc_lsp.engines import create_engine
    from aipc_lsp.engines.base import GenerationParams
    from aipc_lsp.engines import EngineSpec
    from aipc_lsp.engines.process import ProcessEngine

    settings = Settings()
    assert create_engine(settings.slot_list()[0], "m.gguf", settings).env == {"MALLOC_ARENA_MAX": "1"}
    monkeypatch.setenv("PYTHONPATH", HERE)
    for preset, expected in ((None, "1"), ("4", "4")):
        if preset is None:
            monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
        else:
            monkeypatch.setenv("MALLOC_ARENA_MAX", preset)
        engine = ProcessEngine("fake", "/m", "CPU", EngineSpec("worker_engines", "EnvEngine", {"token_delay": 0}),
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
