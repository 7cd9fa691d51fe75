"""The model a slot's engine loads, made ready before the engine starts: engines only load.

One step from the `model` setting to the file or folder an engine reads:
1. resolve it (a catalogue name is fetched and verified: fetch.py);
2. what this engine reads of it (compat.py): a catalogue model's folder that `aipc-lsp prepare NAME
   --engine ENGINE` made where the engine prefers one, or a message saying how to make one;
3. make what the engine reads of a GGUF, once, into the model cache: OpenVINO's IR (gguf_ir.py,
   when `openvino.gguf_as_ir` or the GGUF reader cannot read it as it is), npu_library's Hugging
   Face folder (dequantised by convert.py).
The language server runs it for every slot before building its engine; `aipc-lsp models fetch`
runs steps 2-3 for the configured engines (`ready_for_engines`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from aipc_lsp.engines import kind_of
from aipc_lsp.models import gguf_ir
from aipc_lsp.models.compat import ModelError, model_for_engine, openvino_loads_ir_of
from aipc_lsp.models.convert import PrepareError, PrepareOptions, prepare
from aipc_lsp.models.fetch import resolve_model
from aipc_lsp.models.registry import KIND_GGUF, catalogue_model_of, detect_kind

Progress = Callable[[str, "int | None"], None]
Warn = Callable[[str], None]

__all__ = ["ModelError", "PrepareError", "engine_model", "model_for_slot", "ready_for_engines"]


def _quiet(message: str, percent: int | None) -> None:
    pass


def model_for_slot(slot, settings, progress: Progress | None = None, warn: Warn | None = None) -> Path:
    """What `slot`'s engine loads for its `model` setting, fetched and made first where needed
    (progress: fetching 0-50%, making 50-100%). Raises FetchError, ModelError or PrepareError."""
    progress = progress or _quiet
    if not kind_of(slot.engine).local_model:
        return Path(settings.remote.model or "the served model")  # a server's model (remote.url): nothing here

    def half(low: int) -> Progress:
        return lambda message, percent: progress(message, None if percent is None else low + percent // 2)

    path = resolve_model(slot.model, progress=half(0))
    return engine_model(path, slot.engine, settings, half(50), warn)


def engine_model(path: Path, engine: str, settings, progress: Progress | None = None, warn: Warn | None = None, *,
                 dequantise: bool = True) -> Path:
    """What `engine` loads for the resolved model `path`, made now when missing. An OpenVINO IR that
    cannot be made is a warning when `warn` is given (the GGUF itself is loaded, with more memory), an
    error otherwise. `dequantise`: make npu_library's Hugging Face folder of a GGUF (needs torch)."""
    target = model_for_engine(Path(path), engine)
    if engine == "openvino" and openvino_loads_ir_of(target, settings):
        try:
            try:
                return gguf_ir.ir_for(target, progress)
            except OSError as exc:
                raise PrepareError(f"making the OpenVINO IR of {target.name} failed: {exc}") from exc
        except PrepareError as exc:
            if warn is None:
                raise
            warn(f"aipc-lsp: loading {target.name} itself (more memory): {exc}")
            return target
    if engine == "npu_library" and dequantise and detect_kind(target) == KIND_GGUF:
        return hugging_face_folder_of(target, progress)
    return target


def hugging_face_folder_of(gguf: Path, progress: Progress | None = None) -> Path:
    """The Hugging Face folder `aipc-lsp prepare GGUF --engine transformers --precision fp32` makes
    (made here once, into the model cache, when the converters are installed): what npu_library reads."""
    spec = catalogue_model_of(gguf)
    source = spec.name if spec is not None else str(gguf)
    try:
        return prepare(source, PrepareOptions(engine="transformers", precision="fp32"), progress=progress or _quiet)
    except PrepareError as exc:
        raise PrepareError(f"npu_library reads Hugging Face folders and could not make one from {gguf.name}: {exc}. "
                           f"Make it with `aipc-lsp prepare {source} --engine transformers --precision fp32` "
                           f"and set model to the folder it prints") from exc


def ready_for_engines(path: Path, settings, progress: Progress | None = None) -> list[str]:
    """After `aipc-lsp models fetch`: what each configured engine will load for the GGUF at `path`,
    made now where that needs no extra install (OpenVINO's IR), so the server's first start does not
    pay for it. One line per engine for the user. Raises PrepareError."""
    lines = []
    for engine in dict.fromkeys(slot.engine for slot in settings.slot_list()):
        if not kind_of(engine).local_model:
            lines.append(f"{engine}: the model is the server's (remote.url); nothing to make here")
            continue
        try:
            target = engine_model(path, engine, settings, progress, dequantise=False)
        except ModelError as exc:
            lines.append(f"{engine}: {exc}")
            continue
        lines.append(f"{engine} loads {target}")
    return lines
