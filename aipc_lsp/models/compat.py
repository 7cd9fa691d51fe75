"""Which model formats each engine loads, and the model a slot really gets.

Catalogue models are GGUF files, which OpenVINO and transformers read but ONNX Runtime GenAI
does not: for `model = "default"` or a catalogue name an engine gets the folder `aipc-lsp
prepare NAME --engine ENGINE` made, when there is one, and otherwise a message saying to make it.
"""

from __future__ import annotations

from pathlib import Path

from aipc_lsp.models.registry import (KIND_GGUF, KIND_HF, KIND_OPENVINO_IR, KIND_ORT_GENAI, ModelSpec,
                                      catalogue_model_of, detect_kind, models_dir)

ACCEPTS = {
    "openvino": (KIND_GGUF, KIND_OPENVINO_IR),
    "onnxruntime": (KIND_ORT_GENAI,),
    "transformers": (KIND_HF, KIND_GGUF),
    # A GGUF is dequantised once into the Hugging Face folder the library reads (resolve.py).
    "npu_library": (KIND_HF, KIND_GGUF),
}
# For a catalogue model, a prepared folder beats the GGUF where the GGUF is slow or unreadable.
PREFER_PREPARED = ("onnxruntime", "transformers", "npu_library")
# npu_library reads the Hugging Face folders that `prepare --engine transformers` makes.
PREPARE_AS = {"npu_library": "transformers"}
PREPARE_PRECISION = {"onnxruntime": "int4", "transformers": "fp32", "openvino": "int4", "npu_library": "fp32"}


class ModelError(RuntimeError):
    """The model is in a format the engine does not load; the message says how to make one it does."""


def prepared_for(spec: ModelSpec, engine: str) -> Path | None:
    """A folder `aipc-lsp prepare NAME --engine ENGINE` left in the cache for `spec`, if any
    (also under the model's old names)."""
    root = models_dir()
    if not root.is_dir():
        return None
    wanted = ACCEPTS.get(engine, ())
    for name in (spec.name, *spec.aliases):
        for candidate in sorted(root.glob(f"{name}-{PREPARE_AS.get(engine, engine)}-*")):
            if candidate.is_dir() and detect_kind(candidate) in wanted and detect_kind(candidate) != KIND_GGUF:
                return candidate
    return None


def openvino_reads_gguf(path: Path) -> bool:
    """Whether OpenVINO GenAI's GGUF reader reads the GGUF at `path` as it is, or only its IR loads (made
    with the tensors the reader lacks re-encoded). Known for a catalogue model; another GGUF is taken to
    be readable (its tensor types take seconds to read; the IR path finds out and re-encodes)."""
    spec = catalogue_model_of(path)
    return spec is None or spec.openvino_reads_gguf


def openvino_loads_ir_of(path: Path, settings) -> bool:
    """Whether the openvino engine loads the IR made of the GGUF at `path` instead of the GGUF: with
    `openvino.gguf_as_ir` (less memory), and whenever the GGUF reader cannot read it as it is."""
    return detect_kind(path) == KIND_GGUF and (settings.openvino.gguf_as_ir or not openvino_reads_gguf(path))


def model_for_engine(path: Path, engine: str) -> Path:
    """The model `engine` should load for the resolved `path`; raises ModelError when it cannot."""
    spec = catalogue_model_of(path)
    if spec is not None and engine in PREFER_PREPARED:
        prepared = prepared_for(spec, engine)
        if prepared is not None:
            return prepared
    kind = detect_kind(path)
    accepted = ACCEPTS.get(engine)
    if accepted is None or kind in accepted:
        return path
    source = spec.name if spec is not None else str(path)
    target = PREPARE_AS.get(engine, engine)
    precision = PREPARE_PRECISION.get(engine, "int4")
    raise ModelError(f"{engine} cannot load {path.name} ({kind}); it loads {' or '.join(accepted)}. "
                      f"Make one with `aipc-lsp prepare {source} --engine {target} --precision {precision}` "
                      f"and set model to the folder it prints")
