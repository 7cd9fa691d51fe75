"""intel-npu-acceleration-library engine (`NPUModelForCausalLM`, int4/int8/fp16 compiler configs).

The library is source-only, archived upstream, and pins transformers 4.4x, openvino 2024.4 and
neural-compressor 3.7.1, which conflict with the rest of aipc-lsp; so it lives in an environment
of its own (setting `npu_library.python`, built by scripts/build-npu-library.sh) and is never
imported into the server. A probe in a child process says whether it imports, its version and
whether an NPU is present; the model then runs in the worker process every engine can have
(process.py and worker.py), started with that interpreter, which builds npu_model.py's engine.
This side is that worker's ProcessEngine plus what is the library's own: the probe, the choice of
precision, and the messages when something is missing. The Hugging Face folder it loads is made
from a GGUF before it starts (models/resolve.py).

Without an NPU the library runs every layer on OpenVINO's CPU device instead: the engine loads
anyway and says so (log, `aipc-lsp devices`, the editor); `engine = "openvino"` is the faster
choice for the CPU and the maintained route to the NPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from aipc_lsp.config import NpuLibrarySettings
from aipc_lsp.engines import EngineSpec, check_precision
from aipc_lsp.engines.base import EngineError, EngineInfo
from aipc_lsp.engines.process import ProcessEngine

log = logging.getLogger(__name__)

PACKAGE = "intel-npu-acceleration-library"
# The engine the worker builds (npu_model.py: the library's model, under its interpreter).
MODEL_ENGINE = ("aipc_lsp.engines.npu_model", "NpuModelEngine")

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


class NpuLibraryEngine(ProcessEngine):
    """Always in a worker process, under `options.python` (default: the server's interpreter);
    restart after a crash, `abort()`, cancel and call timeouts are ProcessEngine's."""

    name = "npu_library"

    def __init__(self, model_path: str | Path, device: str = "NPU", *, threads: int = 0, precision: str = "",
                 options: NpuLibrarySettings | None = None):
        python = (options or NpuLibrarySettings()).python
        # isolated: the server's PYTHONPATH must not leak into an environment with other pins.
        super().__init__("npu_library", str(model_path), device.upper(), EngineSpec(*MODEL_ENGINE),
                         python=python, isolated=bool(python))
        self.precision = precision.lower()
        self.threads = threads
        self._workdir_finalizer: weakref.finalize | None = None

    def load_model(self) -> EngineInfo:
        check_precision(self.name, self.precision)
        if not self.device.startswith("NPU"):
            raise EngineError(f"npu_library: device {self.device!r} is not supported; the library targets "
                              f"the NPU (device = \"NPU\") and falls back to OpenVINO's CPU device by itself when "
                              f"there is none; for the CPU use engine = \"openvino\"")
        found = probe(self.python)
        if not found.importable:
            raise EngineError(missing_message(found))
        # The guide's int4 on an NPU. On the CPU fallback the library's int4 and int8 garbled
        # SmolLM2-135M here (fp16 was right), so fp16 is the default there.
        precision = self.precision or ("int4" if found.npu else "fp16")
        # Told to the user once the slot is ready (the scheduler shows it).
        notice = "" if found.npu else no_npu_message(found.version)
        if notice:
            log.warning("%s", notice)
            if precision != "fp16":
                log.warning("npu_library: %s on the library's CPU fallback garbled the text of SmolLM2-135M when "
                            "measured; fp16 did not (precision = \"fp16\")", precision)
        folder = Path(self.model_path).resolve()  # a Hugging Face folder, made from a GGUF before (models/resolve.py)
        device = "NPU" if found.npu else "CPU"
        self.spec = EngineSpec(*MODEL_ENGINE, {"model_path": str(folder), "device": device, "precision": precision,
                                               "threads": self.threads})
        self._stop()  # a worker of an earlier load, before its folder goes
        self._new_workdir()
        started = time.perf_counter()
        info = super().load_model()
        log.info("npu_library: loaded %s (%s) on %s in %.1fs (%s %s, %s)", folder.name, precision, device,
                 time.perf_counter() - started, PACKAGE, found.version or "?", self.python)
        return dataclasses.replace(info, device=device, notice=notice)

    def _new_workdir(self) -> None:
        """The worker's working folder (the library reads and writes ./cache there), gone with the engine."""
        self._drop_workdir()
        self.cwd = tempfile.mkdtemp(prefix="aipc-npu-worker-")
        self._workdir_finalizer = weakref.finalize(self, shutil.rmtree, self.cwd, True)

    def _drop_workdir(self) -> None:
        if self._workdir_finalizer is not None:
            self._workdir_finalizer()
            self._workdir_finalizer = None
        self.cwd = None

    def close(self) -> None:
        super().close()
        self._drop_workdir()
