"""The child side of an engine in a worker process (`python -m aipc_lsp.engines.worker`).

Why a process: OpenVINO GenAI's `step()` and other native calls keep Python's GIL for a whole
decode step, so in the server's process the protocol thread (keystrokes, cancels, status) could
only run between steps. A worker has its own GIL, and the server can kill it when a native call
hangs. The worker imports only the engine module it is told to (never pygls), so it also runs
under another interpreter whose environment has the engine's pins, given the package's folder
on PYTHONPATH.

Protocol: one JSON object per line. The parent writes requests to stdin; the worker writes
replies to the stdout it was started with (the process's fd 1 is pointed at stderr first, so
library chatter cannot corrupt the protocol).
  {"id", "op": "load"}                          -> {"id", "value": EngineInfo's fields}
  {"id", "op": "call", "method", "args"}        -> {"id", "value": ...}   (count_tokens, last_token, apply_chat_template)
  {"id", "op": "generate", "prompt", "params"}  -> {"id", "piece"} ... {"id", "result": {...}}
  {"id", "op": "stop"}                          the parent's on_text has seen enough: the engine
                                                stops after the step in flight (as a stopped result)
  {"id", "op": "cancel"}                        the same, as a cancelled result
Pieces are not acknowledged: waiting for the parent's verdict on each one cost two process
wake-ups per token on a CPU the engine's threads keep busy (measured: half the decode rate).
  {"op": "settle"}                              idle time after an answer (Engine.settle), skipped
                                                in part or whole when a request is queued
  {"op": "close"}                               frees the model and exits
Errors come back as {"id", "error": message, "request_error": bool}
(a RequestError: the request cannot run as asked, the engine is fine).

Cancel and stop also arrive through a small file both processes map (`spec["flags"]`): the
parent writes the generation's id there, and the engine's loop reads it between steps. A message
alone would need the worker's reader thread to win the GIL from a main thread that holds it for
whole native steps, on cores the engine's threads keep busy: measured, that often cost a step.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import queue
import struct
import sys
import threading

# Byte offsets in the shared flags file: the id of the generation to cancel, and to stop.
CANCEL_AT, STOP_AT, FLAGS_SIZE = 0, 8, 16


class SharedFlag:
    """A cancel/stop flag for generation `rid`: set by a message (the event) or by the parent
    writing `rid` at `offset` of the shared flags file. Engines only call `is_set()`."""

    def __init__(self, event: threading.Event, flags, offset: int, rid: int):
        self.event, self.flags, self.offset, self.rid = event, flags, offset, rid

    def is_set(self) -> bool:
        if self.event.is_set():
            return True
        if self.flags is not None and struct.unpack_from("<q", self.flags, self.offset)[0] == self.rid:
            self.event.set()
            return True
        return False

# Set (to a number of lines, e.g. 25): the worker traces Python's allocations from its start and, when
# it closes, writes to stderr (the server's log at -v) what grew since the model was loaded, by
# where it was allocated: the top lines, each with its traceback. For finding a leak; slow.
TRACEMALLOC_ENV = "AIPC_LSP_TRACEMALLOC"

# Methods the parent may call outside a generation (answered by the reader thread, so they
# are served while a generation runs, as they are in-process).
CALLABLE = ("count_tokens", "last_token", "apply_chat_template")


def _protocol_out():
    """A private copy of stdout for replies; fd 1 then goes to stderr."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class Worker:
    def __init__(self, spec: dict, out):
        self.spec = spec
        self.out = out
        self.lock = threading.Lock()
        self.engine = None
        self.jobs: queue.Queue = queue.Queue()  # load/generate, run on the main thread
        self.cancels: dict[int, threading.Event] = {}
        self.stops: dict[int, threading.Event] = {}
        # Generations queued or running: a cancel or stop for any other id comes after its end (the
        # engine read the shared flag first) and is dropped, not kept as a flag nobody removes.
        self.live: set = set()
        self.flags_lock = threading.Lock()
        self.flags = None
        if spec.get("flags"):
            with open(spec["flags"], "r+b") as f:
                self.flags = mmap.mmap(f.fileno(), FLAGS_SIZE)

    def send(self, message: dict) -> None:
        line = json.dumps(message, ensure_ascii=False)
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def read_requests(self) -> None:
        """Reader thread: routes cancels and verdicts at once, queues the heavy work."""
        for line in sys.stdin:
            try:
                request = json.loads(line)
            except ValueError:
                continue
            op, rid = request.get("op"), request.get("id")
            if op in ("cancel", "stop"):
                with self.flags_lock:
                    if rid in self.live:
                        self._flag(self.cancels if op == "cancel" else self.stops, rid).set()
            elif op == "call":
                self._call(rid, request.get("method", ""), request.get("args", []))
            else:
                if op == "generate":
                    with self.flags_lock:
                        self.live.add(rid)
                self.jobs.put(request)
        # The parent is gone: end any generation, then exit.
        for flag in list(self.cancels.values()):
            flag.set()
        self.jobs.put({"op": "close"})

    @staticmethod
    def _flag(flags: dict, rid) -> threading.Event:
        return flags.setdefault(rid, threading.Event())

    def _call(self, rid, method: str, args: list) -> None:
        if method not in CALLABLE or self.engine is None:
            self.send({"id": rid, "error": f"no method {method!r}"})
            return
        try:
            self.send({"id": rid, "value": getattr(self.engine, method)(*args)})
        except Exception as exc:
            self.send({"id": rid, "error": f"{type(exc).__name__}: {exc}"})

    def run(self) -> None:
        threading.Thread(target=self.read_requests, name="aipc-worker-reader", daemon=True).start()
        while True:
            request = self.jobs.get()
            op, rid = request.get("op"), request.get("id")
            if op == "close":
                if self.engine is not None:
                    self.engine.close()
                _report_allocations()
                return
            try:
                if op == "load":
                    self.send({"id": rid, "value": self._load()})
                elif op == "generate":
                    self.send({"id": rid, "result": self._generate(rid, request)})
                elif op == "settle":
                    self._settle()
                else:
                    self.send({"id": rid, "error": f"unknown op {op!r}"})
            except Exception as exc:
                from aipc_lsp.engines.base import EngineError, RequestError

                self.send({"id": rid, "error": str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}",
                           "request_error": isinstance(exc, RequestError)})
            finally:
                with self.flags_lock:
                    self.live.discard(rid)
                    self.cancels.pop(rid, None)
                    self.stops.pop(rid, None)

    def _settle(self) -> None:
        """The server says an answer is out and the slot idle (Engine.settle). A request that
        comes meanwhile waits for the step in flight, and the rest is skipped."""
        if self.engine is None or not self.jobs.empty():
            return
        try:
            self.engine.settle(busy=lambda: not self.jobs.empty())
        except Exception as exc:  # the next request will meet the engine's trouble, and say it
            sys.stderr.write(f"settle failed: {type(exc).__name__}: {exc}\n")

    def _load(self) -> dict:
        from aipc_lsp.engines import EngineSpec, build_engine
        from aipc_lsp.engines.pages import release_file_pages

        engine = build_engine(EngineSpec.from_json(self.spec))
        info = engine.load()
        self.engine = engine
        _mark_allocations()
        # Loading ran code and read files that inference will not touch again (-48 MB of RSS
        # for the default model on OpenVINO): see pages.py.
        released = release_file_pages()
        if released:
            sys.stderr.write(f"gave back the pages of {released >> 20} MB of file mappings after loading\n")
        return info.to_json()

    def _generate(self, rid, request: dict) -> dict:
        from aipc_lsp.engines.base import GenerationParams

        if self.engine is None:
            raise RuntimeError("model not loaded")
        params = request.get("params", {})
        params = GenerationParams(**{**params, "stop": tuple(params.get("stop", ()))})  # JSON made it a list
        with self.flags_lock:
            cancel = SharedFlag(self._flag(self.cancels, rid), self.flags, CANCEL_AT, rid)
            stop = SharedFlag(self._flag(self.stops, rid), self.flags, STOP_AT, rid)

        def on_text(piece: str) -> bool:
            self.send({"id": rid, "piece": piece})
            return not stop.is_set()

        result = self.engine.generate(request["prompt"], params, cancel, on_text)
        return dataclasses.asdict(result)


_loaded_snapshot = None


def _mark_allocations() -> None:
    global _loaded_snapshot
    import tracemalloc

    if tracemalloc.is_tracing():
        _loaded_snapshot = tracemalloc.take_snapshot()


def _report_allocations() -> None:
    import tracemalloc

    if _loaded_snapshot is None or not tracemalloc.is_tracing():
        return
    value = os.environ.get(TRACEMALLOC_ENV, "")
    lines = int(value) if value.isdigit() else 25
    grown = tracemalloc.take_snapshot().compare_to(_loaded_snapshot, "traceback")
    total = sum(stat.size_diff for stat in grown)
    sys.stderr.write(f"tracemalloc: {total / 2**20:+.2f} MB of Python allocations since the model was loaded "
                     f"(traced now: {tracemalloc.get_traced_memory()[0] / 2**20:.2f} MB)\n")
    for stat in grown[:lines]:
        sys.stderr.write(f"tracemalloc: {stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks at "
                         + " <- ".join(f"{frame.filename}:{frame.lineno}" for frame in reversed(stat.traceback))
                         + "\n")
    sys.stderr.flush()


def main() -> None:
    if os.environ.get(TRACEMALLOC_ENV):
        import tracemalloc

        tracemalloc.start(10)
    # A cancel read while the engine runs Python between native calls takes the lock within 1 ms.
    sys.setswitchinterval(0.001)
    out = _protocol_out()
    spec = json.loads(sys.argv[1])
    Worker(spec, out).run()


if __name__ == "__main__":
    main()
