"""intel-npu-acceleration-library engine (`NPUModelForCausalLM`, int4/int8/fp16 compiler configs).

The library is source-only, archived upstream, and pins transformers 4.4x, openvino 2024.4 and
neural-compressor 3.7.1, which conflict with the rest of aipc-lsp; so it lives in an environment
of its own (setting `npu_library.python`, built by scripts/build-npu-library.sh) and is never
imported into the server. A probe in a child process says whether it imports, its version and
whether an NPU is present; the model then runs in a worker process (npu_worker.py, run by path
with that interpreter) that speaks JSON lines over stdin/stdout. A worker that dies or stops
answering is killed and becomes an EngineError (the scheduler marks the slot unhealthy and
retries it later, which starts a new worker).

Without an NPU the library runs every layer on OpenVINO's CPU device instead: the engine loads
anyway and says so (log, `aipc-lsp devices`, the editor); `engine = "openvino"` is the faster
choice for the CPU and the maintained route to the NPU.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from aipc_lsp.engines.base import EngineError, GenerationParams, GenerationResult, OnText

log = logging.getLogger(__name__)

PRECISIONS = ("int4", "int8", "fp16")
PACKAGE = "intel-npu-acceleration-library"
WORKER = Path(__file__).with_name("npu_worker.py")
PROTOCOL = 1
# How long the worker may take to: start its interpreter; load and compile a model (quantising
# a 7B model with neural-compressor takes minutes); answer a small request; stop after a cancel
# (one decode step or prefill chunk); go without sending anything while generating.
HELLO_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 1800.0
REQUEST_TIMEOUT_S = 60.0
CANCEL_GRACE_S = 10.0
SILENCE_TIMEOUT_S = 300.0

_PROBE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
info = {"python": sys.executable}
try:
    import intel_npu_acceleration_library as lib
    from intel_npu_acceleration_library import backend
    info["version"] = getattr(lib, "__version__", "")
    info["npu"] = bool(backend.npu_available())
    info["importable"] = True
except Exception as exc:
    info["importable"] = False
    info["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(info))
"""


@dataclass
class Probe:
    python: str
    importable: bool
    version: str = ""
    npu: bool = False
    error: str = ""


def _child_env() -> dict:
    """The environment for the library's interpreter: the server's own PYTHONPATH must not leak
    into an environment with other pins."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def probe(python: str = "", timeout: float = 60.0) -> Probe:
    """Ask `python` (default: this interpreter) whether the library imports and sees an NPU."""
    exe = python or sys.executable
    if python and not Path(python).exists():
        return Probe(exe, False, error=f"interpreter {python} does not exist")
    try:
        done = subprocess.run([exe, "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                              env=_child_env(), stdin=subprocess.DEVNULL)
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return Probe(exe, False, error=f"probe failed: {exc}")
    return Probe(exe, bool(info.get("importable")), str(info.get("version", "")), bool(info.get("npu")),
                 str(info.get("error", "")))


def missing_message(found: Probe) -> str:
    """What the user must do, for the log, `devices` and the editor."""
    if not found.importable:
        return (f"npu_library: {PACKAGE} is not importable in {found.python} ({found.error}). It is "
                f"source-only and pins transformers 4.4x, so build it in an environment of its own "
                f"(docs/ENGINES.md) and point the setting npu_library.python at that interpreter; or use "
                f"engine = \"openvino\" with device = \"NPU\", the maintained route to the NPU")
    if not found.npu:
        return no_npu_message(found.version)
    return ""


def no_npu_message(version: str) -> str:
    return (f"npu_library: {PACKAGE} {version} imports but sees no NPU (no Intel Core Ultra NPU or "
            f"no NPU driver); it runs on OpenVINO's CPU device instead, slowly (engine = \"openvino\" "
            f"does the CPU far better)")


def hf_folder_for(path: Path) -> Path:
    """The Hugging Face folder the library loads for `path`: the folder itself, or for a GGUF the
    one `aipc-lsp prepare FILE --engine transformers --precision fp32` makes (made here once,
    into the model cache, when the converters are installed)."""
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise EngineError(f"npu_library: {path} is not a Hugging Face model folder (no config.json)")
    if not path.is_file():
        raise EngineError(f"npu_library: model {path} does not exist")
    from aipc_lsp.models.convert import PrepareError, PrepareOptions, prepare
    from aipc_lsp.models.registry import DEFAULT_MODEL, KIND_GGUF, detect_kind

    if detect_kind(path) != KIND_GGUF:
        raise EngineError(f"npu_library: {path.name} is neither a Hugging Face model folder nor a GGUF file")
    source = "default" if path.name == DEFAULT_MODEL.filename else str(path)
    log.info("npu_library: it reads Hugging Face folders; using the one dequantised from %s (made once)", path.name)
    try:
        return prepare(source, PrepareOptions(engine="transformers", precision="fp32"),
                       progress=lambda message, percent: log.info("npu_library: %s", message))
    except PrepareError as exc:
        raise EngineError(f"npu_library reads Hugging Face folders and could not make one from {path.name}: {exc}. "
                          f"Make it with `aipc-lsp prepare {source} --engine transformers --precision fp32` "
                          f"and set model to the folder it prints") from exc


class WorkerDied(EngineError):
    pass


class Worker:
    """One worker process: JSON lines in and out, stderr forwarded to the log.

    Answers are routed by request id to the thread that asked: the scheduler's slot thread
    generates while the event loop's thread counts tokens."""

    def __init__(self, python: str, script: Path, cwd: str):
        self.inbox: queue.Queue = queue.Queue()  # the hello, and anything no request waits for
        self._waiting: dict[int, queue.Queue] = {}
        self._route_lock = threading.Lock()
        self._gone = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._write_lock = threading.Lock()
        # -I: neither the server's PYTHONPATH nor the script's own folder (whose transformers.py
        # would shadow the package) gets onto the worker's sys.path.
        self.proc = subprocess.Popen([python, "-I", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=cwd, env=_child_env())
        self.pid = self.proc.pid
        threading.Thread(target=self._read_stdout, daemon=True, name=f"npu-worker-{self.pid}-out").start()
        threading.Thread(target=self._read_stderr, daemon=True, name=f"npu-worker-{self.pid}-err").start()

    def _read_stdout(self) -> None:
        for raw in self.proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                log.warning("npu_library worker %d: not protocol on stdout: %r", self.pid, raw[:200])
                continue
            if not isinstance(message, dict):
                continue
            with self._route_lock:
                waiting = self._waiting.get(message.get("id"))
            if waiting is not None:
                waiting.put(message)
            elif "hello" in message:
                self.inbox.put(message)
            else:
                log.debug("npu_library worker %d: dropped %s", self.pid, str(message)[:200])
        with self._route_lock:  # end of output: the worker is gone
            self._gone = True
            for waiting in [self.inbox, *self._waiting.values()]:
                waiting.put(None)
        self.proc.stdout.close()

    def expect(self, request_id: int) -> queue.Queue:
        """A queue that receives the messages of `request_id` (register before sending it)."""
        answers: queue.Queue = queue.Queue()
        with self._route_lock:
            self._waiting[request_id] = answers
            if self._gone:
                answers.put(None)
        return answers

    def forget(self, request_id: int) -> None:
        with self._route_lock:
            self._waiting.pop(request_id, None)

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                log.info("npu_library worker %d: %s", self.pid, line)
        self.proc.stderr.close()

    def send(self, message: dict) -> None:
        data = (json.dumps(message, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            with self._write_lock:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise self.died(f"cannot write to it ({exc})") from exc

    def receive(self, timeout: float, answers: queue.Queue | None = None) -> dict | None:
        """The next message for `answers` (default: the hello); None on a timeout. Raises
        WorkerDied when the worker exited."""
        answers = self.inbox if answers is None else answers
        try:
            message = answers.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if message is None:
            answers.put(None)  # stays dead for later calls
            raise self.died("exited")
        return message

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self, what: str) -> WorkerDied:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        detail = f" with code {code}" if code is not None else ""
        tail = " | ".join(list(self.stderr_tail)[-5:])
        return WorkerDied(f"npu_library worker (pid {self.pid}) {what}{detail}" + (f"; its last words: {tail}" if tail else ""))

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        try:
            self.proc.stdin.close()  # stdout and stderr end by themselves; their readers close them
        except Exception:
            pass


def _discard(worker: Worker, workdir: str) -> None:
    worker.kill()
    shutil.rmtree(workdir, ignore_errors=True)


class NpuLibraryEngine:
    name = "npu_library"

    def __init__(self, model_path: str | Path, device: str = "NPU", *, precision: str = "", python: str = "",
                 threads: int = 0, worker_script: str | Path | None = None):
        self.model_path = str(model_path)
        self.requested_device = device.upper()
        self.device = self.requested_device  # where it really runs once loaded: NPU, or CPU without one
        self.precision = precision.lower()
        self.python = python
        self.threads = threads
        self.worker_script = Path(worker_script) if worker_script else WORKER
        # Told to the user once the slot is ready (the scheduler shows it), e.g. "no NPU here".
        self.notice = ""
        self.info: dict = {}
        self._worker: Worker | None = None
        self._workdir: str | None = None
        self._folder: Path | None = None
        self._load_precision = ""
        self._template: str | None = None
        self._ids = itertools.count(1)
        self._finalizer: weakref.finalize | None = None

    # -- loading ------------------------------------------------------------------------------------
    def load(self) -> None:
        if self.precision and self.precision not in PRECISIONS:
            raise EngineError(f"npu_library: precision {self.precision!r} is not supported; use int4, int8 or fp16")
        if not self.requested_device.startswith("NPU"):
            raise EngineError(f"npu_library: device {self.requested_device!r} is not supported; the library targets "
                              f"the NPU (device = \"NPU\") and falls back to OpenVINO's CPU device by itself when "
                              f"there is none; for the CPU use engine = \"openvino\"")
        found = probe(self.python)
        if not found.importable:
            raise EngineError(missing_message(found))
        # The guide's int4 on an NPU. On the CPU fallback the library's int4 and int8 garbled
        # SmolLM2-135M here (fp16 was right), so fp16 is the default there.
        self._load_precision = self.precision or ("int4" if found.npu else "fp16")
        if not found.npu:
            self.notice = no_npu_message(found.version)
            log.warning("%s", self.notice)
            if self._load_precision != "fp16":
                log.warning("npu_library: %s on the library's CPU fallback garbled the text of SmolLM2-135M when "
                            "measured; fp16 did not (precision = \"fp16\")", self._load_precision)
        self._folder = hf_folder_for(Path(self.model_path))
        self._start_worker()

    def _start_worker(self) -> None:
        """Start a worker and load the model in it; raises EngineError (and leaves no process) on failure."""
        self._stop_worker()
        started = time.perf_counter()
        python = self.python or sys.executable
        if not self.worker_script.is_file():
            raise EngineError(f"npu_library: the worker script {self.worker_script} is missing")
        self._workdir = tempfile.mkdtemp(prefix="aipc-npu-worker-")  # the library writes into its cwd
        try:
            worker = Worker(python, self.worker_script, self._workdir)
        except OSError as exc:
            self._stop_worker()
            raise EngineError(f"npu_library: cannot start {python}: {exc}") from exc
        self._worker = worker
        # Should the server exit without closing the engine, the worker and its folder go with it.
        self._finalizer = weakref.finalize(self, _discard, worker, self._workdir)
        try:
            hello = worker.receive(HELLO_TIMEOUT_S)
            if hello is None or hello.get("hello") != PROTOCOL:
                raise EngineError(f"npu_library: the worker did not introduce itself within {HELLO_TIMEOUT_S:.0f}s "
                                  f"(got {hello!r})")
            self.info = self._call("load", LOAD_TIMEOUT_S, model=str(self._folder), precision=self._load_precision,
                                   threads=self.threads)
            self._template = None
        except EngineError:
            self._stop_worker()
            raise
        self.device = "NPU" if self.info.get("npu") else "CPU"
        log.info("npu_library: loaded %s (%s) on %s in %.1fs (worker pid %d, %s %s; %.1fs of it in the worker)",
                 self._folder.name, self._load_precision, self.device, time.perf_counter() - started, worker.pid,
                 PACKAGE, self.info.get("version", "?"), float(self.info.get("load_s", 0.0)))

    def _stop_worker(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        worker, self._worker = self._worker, None
        if worker is not None:
            if worker.alive():
                try:
                    worker.send({"id": next(self._ids), "op": "close"})
                    worker.proc.wait(timeout=5)
                except (EngineError, subprocess.TimeoutExpired):
                    pass
            worker.kill()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _live_worker(self) -> Worker:
        """The worker, started again if it died (after a crash or a kill); EngineError if it cannot be."""
        if self._folder is None:
            raise EngineError("model not loaded")
        if self._worker is None or not self._worker.alive():
            log.warning("npu_library: the worker is gone; starting a new one")
            self._start_worker()
        return self._worker

    # -- requests -----------------------------------------------------------------------------------
    def _call(self, op: str, timeout: float, **fields):
        """One request and its answer. Safe from any thread; never starts a worker (only the
        slot's thread does, in load and generate)."""
        worker = self._worker
        if worker is None or not worker.alive():
            raise EngineError("npu_library: the model is not loaded (its worker is not running)")
        request_id = next(self._ids)
        answers = worker.expect(request_id)
        try:
            worker.send({"id": request_id, "op": op, **fields})
            message = worker.receive(timeout, answers)
        finally:
            worker.forget(request_id)
        if message is None:
            worker.kill()
            raise EngineError(f"npu_library: the worker did not answer {op} within {timeout:.0f}s; killed it")
        if not message.get("ok"):
            raise EngineError(f"npu_library {op} failed: {message.get('error')}")
        return message.get("result")

    def count_tokens(self, text: str) -> int:
        return int(self._call("count_tokens", REQUEST_TIMEOUT_S, text=text))

    def chat_template(self) -> str:
        if self._template is None:
            self._template = str(self._call("chat_template", REQUEST_TIMEOUT_S) or "")
        return self._template

    def generate(self, prompt: str, params: GenerationParams, cancel: threading.Event,
                 on_text: OnText | None = None) -> GenerationResult:
        result = GenerationResult()
        started = time.perf_counter()
        if cancel.is_set():
            result.cancelled = True
            return result
        worker = self._live_worker()
        request_id = next(self._ids)
        answers = worker.expect(request_id)
        worker.send({"id": request_id, "op": "generate", "prompt": prompt, "params": {
            "max_new_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "top_k": params.top_k, "repetition_penalty": params.repetition_penalty, "stop": list(params.stop)}})
        text = ""
        tokens = 0
        stopping = False  # the caller has seen enough; what still arrives is dropped
        cancel_sent_at: float | None = None
        heard = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if cancel_sent_at is None and cancel.is_set():
                    worker.send({"cancel": request_id})
                    cancel_sent_at = now
                if cancel_sent_at is not None and now - cancel_sent_at > CANCEL_GRACE_S:
                    worker.kill()
                    raise EngineError(f"npu_library: the worker did not stop within {CANCEL_GRACE_S:.0f}s of a "
                                      f"cancel; killed it (a new one starts on the next request)")
                if now - heard > SILENCE_TIMEOUT_S:
                    worker.kill()
                    raise EngineError(f"npu_library: the worker sent nothing for {SILENCE_TIMEOUT_S:.0f}s while "
                                      f"generating; killed it")
                message = worker.receive(0.05, answers)
                if message is None:
                    continue
                heard = time.monotonic()
                if "token" in message:
                    if result.first_token_s is None:
                        result.first_token_s = time.perf_counter() - started
                    if stopping:
                        continue
                    tokens += 1
                    piece = str(message.get("text", ""))
                    if not piece:
                        continue
                    text += piece
                    if (params.stop and any(s in text for s in params.stop)) or (
                            on_text is not None and on_text(piece) is False):
                        result.stopped_by_caller = stopping = True
                        if cancel_sent_at is None:
                            worker.send({"cancel": request_id})
                            cancel_sent_at = time.monotonic()
                    continue
                if "ok" not in message:
                    continue
                if not message["ok"]:
                    raise EngineError(f"npu_library generation failed: {message.get('error')}")
                final = message.get("result") or {}
                result.prompt_tokens = int(final.get("prompt_tokens", 0))
                result.cancelled = cancel.is_set() or (bool(final.get("cancelled")) and not stopping)
                result.stopped_by_caller = result.stopped_by_caller or bool(final.get("stopped"))
                result.extra["reused_tokens"] = int(final.get("reused_tokens", 0))
                result.extra["worker_first_token_s"] = final.get("first_token_s")
                break
        except WorkerDied as exc:
            raise EngineError(f"npu_library generation failed: {exc}") from exc
        except BaseException:
            # E.g. on_text raised: the worker must not go on generating for nobody.
            if cancel_sent_at is None and worker.alive():
                try:
                    worker.send({"cancel": request_id})
                except EngineError:
                    pass
            raise
        finally:
            worker.forget(request_id)
        result.text = text
        result.tokens = tokens
        result.total_s = time.perf_counter() - started
        return result

    def abort(self) -> None:
        """Kill a worker stuck in the library (the scheduler's stall watchdog calls this from
        another thread): the generation waiting for it fails at once, the next one starts anew."""
        worker = self._worker
        if worker is not None and worker.alive():
            log.warning("npu_library: killing worker %d, which stopped producing tokens", worker.pid)
            worker.proc.kill()

    def close(self) -> None:
        self._stop_worker()
        self._folder = None
