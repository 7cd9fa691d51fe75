"""An engine that runs in a worker process (the server's side; the worker is worker.py).

The server keeps its GIL to itself: the protocol thread answers keystrokes, cancels and
status while the worker computes (in-process, OpenVINO's `step()` held the GIL for whole
decode steps and the server thread waited a step or two for each message). A worker that
crashes or hangs fails its generation with an EngineError, and `abort()` kills it (as does a
generation that ignores a cancel for CANCEL_GRACE_S), so the scheduler marks the slot unhealthy
and retries, which starts a new worker, instead of losing the server.

The worker may run another interpreter (`python=`: an engine whose packages pin versions the
server cannot have, such as npu_library's), which gets this package's folder on PYTHONPATH.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import mmap
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aipc_lsp.engines import EngineSpec
from aipc_lsp.engines.base import (CancelFlag, Engine, EngineError, EngineInfo, GenerationParams, GenerationResult,
                                   OnText, RequestError)
from aipc_lsp.engines.worker import CANCEL_AT, FLAGS_SIZE, STOP_AT

log = logging.getLogger(__name__)

# How often a generation waiting for the worker checks a plain cancel event when no piece
# comes; a CancelFlag wakes it instead, and the wait only bounds the cancel's grace period check.
CANCEL_POLL_S = 0.005
WAKE_POLL_S = 0.25
# A call (a token count, a chat template) the worker has not answered in this long: it is stuck in a native
# call, and is killed so the next request starts a new one (as the stall watchdog does to a generation).
CALL_TIMEOUT_S = 20.0
# A worker still generating this long after a cancel or a stop is stuck (a native call that does
# not return): it is killed, as the scheduler's stall watchdog (20 s by default) kills one that
# makes no progress. Longer than one decode step or prefill chunk of any engine here.
CANCEL_GRACE_S = 20.0
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class _WorkerGone(Exception):
    pass


class ProcessEngine(Engine):
    """The Engine interface carried to the engine `spec` builds in a worker process: every call is
    the worker engine's own (its EngineInfo comes back from its load)."""

    def __init__(self, name: str, model_path: str, device: str, spec: EngineSpec, *, python: str = "",
                 isolated: bool = False, cwd: str | None = None, env: dict | None = None):
        """`python`: the worker's interpreter (default: the server's). `isolated`: it belongs to
        another environment, so the server's PYTHONPATH/PYTHONHOME/PYTHONSTARTUP stay out of it
        (it gets only this package's folder). `cwd`: the worker's working folder. `env`: its
        environment variables, unless already set."""
        super().__init__(model_path, device)
        self.name = name
        self.spec = spec
        self.python = python or sys.executable
        self.isolated = isolated
        self.cwd = cwd
        self.env = dict(env or {})
        self._proc: subprocess.Popen | None = None
        self._wanted = False  # between load() and close(): a worker that is gone is started again
        self._restart_lock = threading.Lock()  # generate (slot thread) and calls (other threads) both restart
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.Queue] = {}
        self._write_lock = threading.Lock()
        self._stderr_tail: list[str] = []
        self._flags_path: str | None = None
        self._flags: mmap.mmap | None = None

    # -- the worker process -------------------------------------------------------------

    def _spawn(self) -> None:
        env = dict(os.environ)
        if self.isolated:
            for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
                env.pop(name, None)
        # Another interpreter (an engine with pins of its own) finds this package's modules here.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONIOENCODING"] = "utf-8"  # the requests it reads from stdin are UTF-8 whatever the locale
        for key, value in self.env.items():
            env.setdefault(key, value)
        self._close_flags()  # a new worker maps a new file (the last one's name is gone)
        self._open_flags()
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", "aipc_lsp.engines.worker", self.spec.to_json(flags=self._flags_path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=self.cwd,
                text=True, encoding="utf-8", errors="replace", bufsize=1)
        except OSError as exc:
            self._close_flags()
            raise EngineError(f"{self.name}: could not start the worker process {self.python}: {exc}") from exc
        self._stderr_tail = []
        proc = self._proc
        stderr = threading.Thread(target=self._read_stderr, args=(proc,), name=f"aipc-{self.name}-stderr", daemon=True)
        stderr.start()
        threading.Thread(target=self._read_replies, args=(proc, stderr), name=f"aipc-{self.name}-replies",
                         daemon=True).start()

    def _open_flags(self) -> None:
        """The file both processes map for cancel/stop (see worker.py); in memory where there is /dev/shm."""
        shm = "/dev/shm"
        fd, self._flags_path = tempfile.mkstemp(prefix="aipc-lsp-flags-", dir=shm if os.path.isdir(shm) else None)
        try:
            os.write(fd, b"\xff" * FLAGS_SIZE)  # no generation id is negative
            self._flags = mmap.mmap(fd, FLAGS_SIZE)
        finally:
            os.close(fd)

    def _close_flags(self) -> None:
        if self._flags is not None:
            self._flags.close()
            self._flags = None
        self._unlink_flags()

    def _unlink_flags(self) -> None:
        if self._flags_path:
            try:
                os.unlink(self._flags_path)
            except OSError:
                pass
            self._flags_path = None

    def _signal(self, offset: int, rid: int) -> None:
        if self._flags is not None:
            struct.pack_into("<q", self._flags, offset, rid)

    def _read_replies(self, proc: subprocess.Popen, stderr: threading.Thread) -> None:
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("%s worker: not protocol: %s", self.name, line.rstrip()[:200])
                continue
            waiting = self._waiting.get(message.get("id"))
            if waiting is not None:
                waiting.put(message)
        code = proc.wait()
        stderr.join(timeout=2)  # its last words belong in the error
        gone = {"gone": True, "error": self._exit_message(code)}
        for waiting in list(self._waiting.values()):
            waiting.put(gone)

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                self._stderr_tail = (self._stderr_tail + [line])[-5:]
                log.info("%s worker: %s", self.name, line)

    def _exit_message(self, code: int | None) -> str:
        tail = " | ".join(self._stderr_tail[-3:])
        return f"{self.name}: the worker process exited (code {code})" + (f": {tail}" if tail else "")

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _send(self, message: dict) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise _WorkerGone()
        try:
            with self._write_lock:
                proc.stdin.write(json.dumps(message, ensure_ascii=False) + "\n")
                proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise _WorkerGone() from exc

    def _open(self, message: dict) -> tuple[int, queue.Queue]:
        if self._proc is None:
            raise EngineError(f"{self.name}: the model is not loaded")
        rid = next(self._ids)
        replies: queue.Queue = queue.Queue()
        self._waiting[rid] = replies
        try:
            self._send({**message, "id": rid})
        except _WorkerGone:
            self._waiting.pop(rid, None)
            raise EngineError(self._exit_message(self._proc.poll() if self._proc else None)) from None
        return rid, replies

    def _reply(self, rid: int, replies: queue.Queue, timeout: float | None) -> dict:
        try:
            message = replies.get(timeout=timeout)
        except queue.Empty:
            self.abort()
            raise EngineError(f"{self.name}: the worker process did not answer within {timeout:.0f}s; killed it "
                              "(a new one starts on the next request)") from None
        finally:
            self._waiting.pop(rid, None)
        if "error" in message:
            raise EngineError(message["error"])
        return message

    # -- the Engine interface -----------------------------------------------------------

    def load_model(self) -> EngineInfo:
        self._wanted = True
        return self._start()

    def _start(self) -> EngineInfo:
        """A new worker with the model loaded (also after a crash: a subclass's `load` may do more
        than this once). A worker whose load fails is closed."""
        if self._alive():
            self._stop()
        self._spawn()
        try:
            rid, replies = self._open({"op": "load"})
            info = self._reply(rid, replies, None)["value"]  # as long as the model takes to compile
        except EngineError:
            self._stop()
            raise
        finally:
            self._unlink_flags()  # both processes have it mapped by now: nothing left behind on a kill
        return EngineInfo.from_json(info)

    def _ensure_worker(self, *, crashed_only: bool = False) -> None:
        """A worker that crashed or was killed since (or whose restart failed) is replaced before it is
        asked anything: a generation (the scheduler's retry probe lands here), a token count, a chat
        template. Without this, a worker killed between generations failed every keystroke's token
        count, so no generation ever came to restart it (tests/e2e/test_faults.py)."""
        with self._restart_lock:
            died = self._proc is not None and self._proc.poll() is not None
            if self._wanted and (died or (not crashed_only and not self._alive())):
                log.warning("%s: restarting its worker process", self.name)
                self._start()

    def _call(self, method: str, *args):
        self._ensure_worker(crashed_only=True)  # one whose load failed waits for the scheduler's retry
        rid, replies = self._open({"op": "call", "method": method, "args": list(args)})
        return self._reply(rid, replies, CALL_TIMEOUT_S)["value"]

    def count_tokens(self, text: str) -> int:
        return int(self._call("count_tokens", text))

    def last_token(self, text: str) -> str:
        return str(self._call("last_token", text))

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self._call("apply_chat_template", messages)

    def settle(self, busy=lambda: False) -> None:
        """Told, not waited for: the worker settles its engine unless a request is queued there by
        then (it skips what is left when one comes)."""
        try:
            self._send({"op": "settle"})
        except _WorkerGone:
            pass

    def generate(self, prompt: str, params: GenerationParams, cancel: threading.Event,
                 on_text: OnText | None = None) -> GenerationResult:
        if cancel.is_set():
            return GenerationResult(cancelled=True)
        self._ensure_worker()
        fields = dataclasses.asdict(params)
        started = time.perf_counter()
        first_piece_s = None
        rid, replies = self._open({"op": "generate", "prompt": prompt, "params": fields})
        cancel_sent = stop_sent = False
        told_at = None  # when the worker was first asked to end early (a cancel or a stop)
        poll_s = CANCEL_POLL_S
        forget = lambda: None  # noqa: E731
        if isinstance(cancel, CancelFlag):
            # The flag reaches the worker's loop from the thread that cancels, and this loop
            # wakes at once to send the message too: no polling (and no wake-ups on 2 busy cores).
            forget = cancel.on_set(lambda: (self._signal(CANCEL_AT, rid), replies.put({"wake": True})))
            poll_s = WAKE_POLL_S
        try:
            while True:
                if cancel.is_set() and not cancel_sent:
                    cancel_sent = True
                    told_at = told_at or time.monotonic()
                    self._tell(CANCEL_AT, "cancel", rid)
                if told_at is not None and time.monotonic() - told_at > CANCEL_GRACE_S:
                    self.abort()
                    raise EngineError(f"{self.name}: the worker process did not stop within {CANCEL_GRACE_S:.0f}s "
                                      f"of a cancel; killed it (a new one starts on the next request)")
                try:
                    message = replies.get(timeout=poll_s)
                except queue.Empty:
                    continue
                if "wake" in message:
                    continue
                if "piece" in message:
                    if first_piece_s is None:
                        first_piece_s = time.perf_counter() - started
                    if on_text is not None and not stop_sent and on_text(message["piece"]) is False:
                        stop_sent = True
                        told_at = told_at or time.monotonic()
                        self._tell(STOP_AT, "stop", rid)
                elif "result" in message:
                    result = GenerationResult(**message["result"])
                    # Timed on this side, so the trip to the worker and back is included.
                    result.first_token_s = first_piece_s if first_piece_s is not None else result.first_token_s
                    result.total_s = time.perf_counter() - started
                    result.cancelled = result.cancelled or cancel.is_set()
                    return result
                else:
                    error = RequestError if message.get("request_error") else EngineError
                    raise error(message.get("error", f"{self.name}: unexpected reply {message}"))
        except _WorkerGone:
            raise EngineError(self._exit_message(self._proc.poll() if self._proc else None)) from None
        except EngineError:
            raise
        except BaseException:
            # E.g. on_text raised: the worker must not go on generating for nobody.
            if not cancel_sent:
                try:
                    self._tell(CANCEL_AT, "cancel", rid)
                except _WorkerGone:
                    pass
            raise
        finally:
            forget()
            self._waiting.pop(rid, None)

    def _tell(self, offset: int, op: str, rid: int) -> None:
        """Ask generation `rid` to end after the step in flight: the shared flag, and a message."""
        self._signal(offset, rid)
        self._send({"op": op, "id": rid})

    def abort(self) -> None:
        """Kill a worker stuck in a native call; its generation fails and `load` starts anew."""
        if self._alive():
            log.warning("%s: killing its worker process", self.name)
            self._proc.kill()

    def close(self) -> None:
        self._wanted = False
        self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            self._close_flags()
            return
        try:
            with self._write_lock:
                proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            self._close_flags()
