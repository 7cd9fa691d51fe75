"""intel-npu-acceleration-library engine (`NPUModelForCausalLM`, int4/int8/fp16 compiler configs).

The library is source-only, archived upstream, and pins transformers 4.4x and
neural-compressor 3.7.1, which conflict with the rest of aipc-lsp; so it is looked for in
an interpreter of its own (setting `npu_library.python`) and probed in a child process, never
imported into the server. What runs here is that probe: it says whether the library imports,
its version and whether an NPU is present, and the engine refuses to load with a message
saying what is missing. OpenVINO GenAI with device = "NPU" is the maintained route to the NPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from aipc_lsp.engines.base import EngineError, GenerationParams, GenerationResult, OnText

PRECISIONS = ("int4", "int8", "fp16")
PACKAGE = "intel-npu-acceleration-library"

_PROBE = r"""
import json, sys
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


def probe(python: str = "", timeout: float = 60.0) -> Probe:
    """Ask `python` (default: this interpreter) whether the library imports and sees an NPU."""
    exe = python or sys.executable
    if python and not Path(python).exists():
        return Probe(exe, False, error=f"interpreter {python} does not exist")
    try:
        done = subprocess.run([exe, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
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
        return (f"npu_library: {PACKAGE} {found.version} imports but sees no NPU (no Intel Core Ultra NPU or "
                f"no NPU driver); it would run on OpenVINO's CPU device, which engine = \"openvino\" does better")
    return ""


class NpuLibraryEngine:
    name = "npu_library"

    def __init__(self, model_path: str | Path, device: str = "NPU", *, precision: str = "int4", python: str = ""):
        self.model_path = str(model_path)
        self.device = device.upper()
        self.precision = precision.lower()
        self.python = python

    def load(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineError(f"npu_library: precision {self.precision!r} is not supported; use int4, int8 or fp16")
        found = probe(self.python)
        problem = missing_message(found)
        if problem:
            raise EngineError(problem)
        # The library and an NPU are both there, but serving through its worker process is
        # not built yet: say so plainly rather than fail later.
        raise EngineError(f"npu_library: {PACKAGE} {found.version} and an NPU were found, but aipc-lsp does not "
                          f"serve through this engine yet; use engine = \"openvino\" with device = \"NPU\"")

    def count_tokens(self, text: str) -> int:
        raise EngineError("model not loaded")

    def chat_template(self) -> str:
        return ""

    def generate(self, prompt: str, params: GenerationParams, cancel: threading.Event,
                 on_text: OnText | None = None) -> GenerationResult:
        raise EngineError("model not loaded")

    def close(self) -> None:
        pass
