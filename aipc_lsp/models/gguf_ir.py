"""The OpenVINO IR of a GGUF, made once by OpenVINO GenAI's own GGUF reader and kept in the model
cache, for the openvino engine to load instead of the GGUF (`openvino.gguf_as_ir`).

Why: given a GGUF, OpenVINO GenAI builds the model's weights in memory of its own and keeps them
after the CPU plugin has repacked them into another copy; given the IR it maps the weights file
instead, whose pages can be given back once repacked (engines/pages.py). Measured with
SmolLM2-135M through the server: the engine worker's anonymous memory 398 MB with the GGUF,
311 MB with its IR (the same weights: the GGUF reader's conversion keeps its quantisation), and the
IR loads faster (4 s against 7 s). It is also the working path for a GGUF with tensor types the
reader lacks (Qwen2.5-Coder-0.5B's Q5_0): the build re-encodes them first (gguf_requant.py).
Made once, in a child process, so neither the server nor the engine worker ever holds the GGUF
reader's copy; the child's progress comes back as lines on its stdout.

`python -m aipc_lsp.models.gguf_ir GGUF` makes it and prints its folder.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

from aipc_lsp.models.convert import (ROUTE_GGUF_READER, PrepareError, PrepareOptions, Source, gguf_precision,
                                     output_for, prepare, read_manifest, resolve_source)
from aipc_lsp.models.gguf_requant import REQUANT_FORMAT
from aipc_lsp.models.integrity import DamagedModel, check_openvino_ir
from aipc_lsp.models.registry import catalogue_model_of, models_dir

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 1800.0
# The child's stdout: progress lines and the result line carry these marks; anything else (native
# libraries print there too) is kept for the error message.
PROGRESS_MARK = "aipc-progress "
RESULT_MARK = "aipc-ir "
ERROR_MARK = "aipc-error "


def _source(gguf: Path) -> Source:
    """What `prepare` records for `gguf`. A catalogue model's checksum is known and was checked when it
    was fetched: no hashing at every start; another GGUF is hashed (its identity)."""
    spec = catalogue_model_of(gguf)
    if spec is not None:
        return Source("gguf", str(gguf), spec.name, spec.sha256)
    return resolve_source(str(gguf))


def _reader_build_of(folder: Path, src: Source) -> bool:
    manifest = read_manifest(folder)
    return (manifest.get("route") == ROUTE_GGUF_READER and manifest.get("source_checksum") == src.checksum
            and manifest.get("requant_format", 1) == REQUANT_FORMAT
            and (folder / "openvino_model.xml").is_file() and _whole(folder))


def _whole(folder: Path) -> bool:
    """A build whose weights file was cut short (a disk that filled up, a copy) is made again."""
    try:
        check_openvino_ir(folder)
    except DamagedModel as exc:
        log.warning("%s; making it again", exc)
        return False
    return True


def cached(gguf: Path) -> Path | None:
    """The IR the GGUF reader made from this very GGUF (same checksum), if the cache has it.
    Light enough for the server's process: nothing is loaded, a catalogue model is not even hashed."""
    src = _source(Path(gguf))
    root = models_dir()
    if not root.is_dir():
        return None
    return next((folder for folder in sorted(root.glob(f"{src.name}-openvino-*"))
                 if folder.is_dir() and _reader_build_of(folder, src)), None)


def build(gguf: Path, progress=None) -> Path:
    """Make the IR (in this process: it loads the whole model through the GGUF reader)."""
    gguf = Path(gguf)
    try:
        options = PrepareOptions("openvino", gguf_precision(gguf))
    except ImportError as exc:
        raise PrepareError(f"reading the tensor types of {gguf.name} needs the gguf package ({exc}): "
                           "pip install gguf") from exc
    except (ValueError, OSError) as exc:
        raise PrepareError(f"{gguf.name} is not a GGUF file the gguf package can read: {exc}") from exc
    src = _source(gguf)
    out = output_for(src, options, ROUTE_GGUF_READER)
    if out.exists() and read_manifest(out).get("route") != ROUTE_GGUF_READER:
        out = out.with_name(out.name + "-gguf")  # that name holds another converter's build (optimum-intel's int8)
    # An IR the reader made of an earlier file under this name is replaced.
    replace = out.exists() and not _reader_build_of(out, src)
    source = src.name if catalogue_model_of(gguf) is not None else str(gguf)
    return prepare(source, options, out, force=replace, route=ROUTE_GGUF_READER,
                   progress=progress or (lambda message, percent: None))


def ir_for(gguf: Path, progress=None) -> Path:
    """The cached IR of `gguf`, made first in a child process when missing. Raises PrepareError."""
    gguf = Path(gguf)
    found = cached(gguf)
    if found is not None:
        return found
    if progress is not None:
        progress(f"making an OpenVINO IR of {gguf.name} (once)", 0)
    try:
        child = subprocess.Popen([sys.executable, "-m", "aipc_lsp.models.gguf_ir", str(gguf)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        raise PrepareError(f"making the OpenVINO IR of {gguf.name} failed: {exc}") from exc
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        child.kill()

    timer = threading.Timer(BUILD_TIMEOUT_S, stop)
    timer.start()
    result, error, tail = None, None, []
    try:
        for line in child.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS_MARK):
                if progress is not None:
                    message, percent = json.loads(line[len(PROGRESS_MARK):])
                    progress(message, percent)
            elif line.startswith(RESULT_MARK):
                result = Path(line[len(RESULT_MARK):])
            elif line.startswith(ERROR_MARK):
                error = json.loads(line[len(ERROR_MARK):])
            elif line.strip():
                tail = (tail + [line.strip()])[-20:]
        child.wait()
    finally:
        timer.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0 or result is None or not result.is_dir():
        why = f"timed out after {BUILD_TIMEOUT_S:.0f} s" if timed_out.is_set() else error or (tail or ["no output"])[-1]
        raise PrepareError(f"making the OpenVINO IR of {gguf.name} failed: {why}")
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m aipc_lsp.models.gguf_ir GGUF", file=sys.stderr)
        return 2

    def progress(message: str, percent: int | None) -> None:
        print(PROGRESS_MARK + json.dumps([message, percent]), flush=True)

    try:
        print(RESULT_MARK + str(build(Path(argv[0]), progress)), flush=True)
    except PrepareError as exc:
        print(ERROR_MARK + json.dumps(str(exc)), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
