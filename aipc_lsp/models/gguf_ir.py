"""The OpenVINO IR of a GGUF, made once by OpenVINO GenAI's own GGUF reader and kept in the model
cache, for the openvino engine to load instead of the GGUF (`openvino.gguf_as_ir`).

Why: given a GGUF, OpenVINO GenAI builds the model's weights in memory of its own and keeps them
after the CPU plugin has repacked them into another copy; given the IR it maps the weights file
instead, whose pages can be given back once repacked (engines/pages.py). Measured with the
default model through the server: the engine worker's anonymous memory 398 MB with the GGUF,
311 MB with its IR (the same weights: the GGUF reader's conversion keeps its quantisation), and the
IR loads faster (4 s against 7 s). Making the IR takes ~15 s once, in a child process, so neither
the server nor the engine worker ever holds the GGUF reader's copy.

`python -m aipc_lsp.models.gguf_ir GGUF` makes it and prints its folder.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from aipc_lsp.models.convert import (MANIFEST, ROUTE_GGUF_READER, Plan, PrepareError, PrepareOptions, _manifest,
                                     _same_build, default_output, gguf_precision, prepare, resolve_source)
from aipc_lsp.models.registry import DEFAULT_MODEL, models_dir

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 1800.0
# Quantisation tags in GGUF file names (Model.Q4_K_M.gguf), for when the gguf package that reads
# the file's own tensor types is not installed.
_NAME_PRECISION = ((r"\.(i?q[2-5])", "int4"), (r"\.q8", "int8"), (r"\.(b?f16)", "fp16"), (r"\.f32", "fp32"))


def precision_of(gguf: Path, *, read_tensors: bool = True) -> str | None:
    """The GGUF's precision class (int4/int8/fp16/fp32): from its tensors (the gguf package maps
    the whole file: not in the server's process), else from its name."""
    if read_tensors:
        try:
            return gguf_precision(gguf)
        except ImportError:
            pass
    name = gguf.name.lower()
    return next((p for pattern, p in _NAME_PRECISION if re.search(pattern, name)), None)


def _options(gguf: Path, *, read_tensors: bool = True) -> PrepareOptions | None:
    precision = precision_of(gguf, read_tensors=read_tensors)
    return PrepareOptions("openvino", precision) if precision else None


def cached(gguf: Path) -> Path | None:
    """The IR made from this very GGUF (same checksum) by the GGUF reader, if the cache has it.
    Light enough for the server's process: the precision comes from the file's name."""
    options = _options(gguf, read_tensors=False)
    if options is None:
        return None
    # The default model's checksum is known and checked when fetched: no hashing at every start.
    is_default = gguf.resolve() == (models_dir() / DEFAULT_MODEL.filename).resolve()
    src = resolve_source("default" if is_default else str(gguf))
    chosen = Plan(ROUTE_GGUF_READER, options)
    out = default_output(src, chosen)
    try:
        existing = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if _same_build(existing, _manifest(src, options, chosen)) and (out / "openvino_model.xml").is_file():
        return out
    return None


def build(gguf: Path) -> Path:
    """Make the IR (in this process: it loads the whole model through the GGUF reader)."""
    options = _options(gguf)
    if options is None:
        raise PrepareError(f"cannot tell the precision of {gguf.name} (install the gguf package)")
    return prepare(str(gguf), options, route=ROUTE_GGUF_READER)


def ir_for(gguf: Path, progress=None) -> Path:
    """The cached IR of `gguf`, made first in a child process when missing. Raises PrepareError."""
    gguf = Path(gguf)
    found = cached(gguf)
    if found is not None:
        return found
    if progress is not None:
        progress(f"making an OpenVINO IR of {gguf.name} (once, ~15 s)", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "aipc_lsp.models.gguf_ir", str(gguf)], capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrepareError(f"making the OpenVINO IR of {gguf.name} failed: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_dir():
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PrepareError(f"making the OpenVINO IR of {gguf.name} failed: {why}")
    return Path(lines[-1])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m aipc_lsp.models.gguf_ir GGUF", file=sys.stderr)
        return 2
    try:
        print(build(Path(argv[0])))
    except PrepareError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
