"""Giving back the resident pages of memory-mapped files the engine no longer reads.

OpenVINO maps an IR's `openvino_model.bin` read-only and shared, and its CPU plugin repacks the
matrices into memory of its own on the first inference: from then on it reads the repacked copy,
yet the file's pages it read while repacking stay mapped into the process and count in its RSS
(SmolLM2-135M int4: 70 of the file's 88 MB are never read again). `madvise(MADV_DONTNEED)` on a
read-only file mapping only unmaps those pages: the file stays mapped, and whatever is read again
(the embedding rows a prompt looks up) is faulted back in from the page cache, unchanged, at the
cost of a minor page fault. Nothing is lost, since a mapping without write permission holds no
private data. Linux only; elsewhere `release` does nothing.

The same holds for the libraries' code: loading and compiling a model runs code (IR parsing, graph
transformations, frontends) that inference never runs again, and its pages stay resident too.
`release_file_pages` gives back every file mapping's pages once a worker has loaded its model
(SmolLM2-135M on OpenVINO: the worker's file pages 97 -> 49 MB at the end of the same workload,
the same greedy text); the code inference does run is faulted back in on the first requests. A
read-only mapping can still hold private pages (RELRO: relocations the dynamic linker wrote before
it made them read-only): those show as `Anonymous` in /proc/self/smaps and are left alone, since
giving them back would drop the relocations.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
# While the first inference repacks the weights, the pages it has read are given back this often,
# so the file never becomes resident as a whole next to its repacked copy.
RELEASE_INTERVAL_S = 0.01


def read_only_ranges(path: str, maps: str) -> list[tuple[int, int]]:
    """Address ranges where `maps` (the text of /proc/PID/maps) maps the file `path` without write
    permission; private writable mappings may hold data of their own and are left alone."""
    ranges = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != path or "w" in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        ranges.append((start, end))
    return ranges


def clean_file_ranges(smaps: str) -> list[tuple[int, int]]:
    """Address ranges where `smaps` (the text of /proc/PID/smaps) maps a file without write
    permission and without private pages of its own: giving their pages back loses nothing."""
    ranges, candidate = [], None
    for line in smaps.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            # A mapping's first line: "start-end perms offset dev inode [path]".
            path = head[5] if len(head) == 6 else ""
            candidate = None
            if path.startswith("/") and "w" not in head[1]:
                start, end = (int(x, 16) for x in head[0].split("-"))
                candidate = (start, end)
        elif candidate is not None and line.startswith("Anonymous:"):
            if int(line.split()[1]) == 0:
                ranges.append(candidate)
            candidate = None
    return ranges


def _madvise():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise_fn = None


def release(path: str | os.PathLike) -> int:
    """Unmap the resident pages of the read-only mappings of `path` in this process (they stay in
    the page cache). Returns the bytes of the ranges advised; 0 off Linux or when nothing maps it."""
    return _release("/proc/self/maps", lambda text: read_only_ranges(os.path.realpath(path), text))


def release_file_pages() -> int:
    """Unmap the resident pages of every clean read-only file mapping of this process (libraries,
    model files); they stay in the page cache and what is used again comes back on first touch.
    For a worker that has loaded its model: whatever only loading used leaves its RSS. Returns the
    bytes of the ranges advised; 0 off Linux."""
    return _release("/proc/self/smaps", clean_file_ranges)


def _release(table: str, ranges_in) -> int:
    """madvise(MADV_DONTNEED) the ranges `ranges_in` finds in the text of /proc/self/`table`;
    the bytes advised (0 off Linux or on any failure to read the table)."""
    global _madvise_fn
    if not sys.platform.startswith("linux"):
        return 0
    try:
        with open(table, encoding="utf-8", errors="replace") as f:
            ranges = ranges_in(f.read())
        if ranges and _madvise_fn is None:
            _madvise_fn = _madvise()
    except (OSError, AttributeError, ValueError) as exc:
        log.debug("cannot release pages (%s): %s", table, exc)
        return 0
    return sum(end - start for start, end in ranges if _madvise_fn(start, end - start, MADV_DONTNEED) == 0)


class Releasing:
    """`with Releasing(path):` gives back the file's pages every RELEASE_INTERVAL_S in a thread, and
    once more at the end. The work inside must release the GIL (a native call that does not would
    only let the thread run at its end)."""

    def __init__(self, path: str | os.PathLike | None, interval_s: float = RELEASE_INTERVAL_S):
        self.path = path
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            release(self.path)

    def __enter__(self) -> "Releasing":
        if self.path is not None:
            self._thread = threading.Thread(target=self._run, name="aipc-release-weights", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            release(self.path)
