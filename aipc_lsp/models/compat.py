"""Which model formats each engine loads, and the model a slot really gets.

The default model is a GGUF file, which OpenVINO and transformers read but ONNX Runtime
GenAI does not: for `model = "default"` an engine gets the folder `aipc-lsp prepare default
--engine ENGINE` made, when there is one, and otherwise a message saying to make it.
"""

from __future__ import annotations

from pathlib import Path

from aipc_lsp.engines.base import EngineError
from aipc_lsp.models.registry import (DEFAULT_MODEL, KIND_GGUF, KIND_HF, KIND_OPENVINO_IR, KIND_ORT_GENAI,
                                      detect_kind, models_dir)

ACCEPTS = {
    "openvino": (KIND_GGUF, KIND_OPENVINO_IR),
    "onnxruntime": (KIND_ORT_GENAI,),
    "transformers": (KIND_HF, KIND_GGUF),
    # A GGUF is dequantised once into the Hugging Face folder the library reads (engine load).
    "npu_library": (KIND_HF, KIND_GGUF),
}
# For the default model, a prepared folder beats the GGUF where the GGUF is slow or unreadable.
PREFER_PREPARED = ("onnxruntime", "transformers", "npu_library")
# npu_library reads the Hugging Face folders that `prepare --engine transformers` makes.
PREPARE_AS = {"npu_library": "transformers"}
PREPARE_PRECISION = {"onnxruntime": "int4", "transformers": "fp32", "openvino": "int4", "npu_library": "fp32"}


def prepared_default(engine: str) -> Path | None:
    """A folder `aipc-lsp prepare default --engine ENGINE` left in the cache, if any."""
    root = models_dir()
    if not root.is_dir():
        return None
    wanted = ACCEPTS.get(engine, ())
    for candidate in sorted(root.glob(f"{DEFAULT_MODEL.name}-{PREPARE_AS.get(engine, engine)}-*")):
        if candidate.is_dir() and detect_kind(candidate) in wanted and detect_kind(candidate) != KIND_GGUF:
            return candidate
    return None


def model_for_engine(path: Path, engine: str) -> Path:
    """The model `engine` should load for the resolved `path`; raises EngineError when it cannot."""
    is_default = path.name == DEFAULT_MODEL.filename
    if is_default and engine in PREFER_PREPARED:
        prepared = prepared_default(engine)
        if prepared is not None:
            return prepared
    kind = detect_kind(path)
    accepted = ACCEPTS.get(engine)
    if accepted is None or kind in accepted:
        return path
    source = "default" if is_default else str(path)
    target = PREPARE_AS.get(engine, engine)
    precision = PREPARE_PRECISION.get(engine, "int4")
    raise EngineError(f"{engine} cannot load {path.name} ({kind}); it loads {' or '.join(accepted)}. "
                      f"Make one with `aipc-lsp prepare {source} --engine {target} --precision {precision}` "
                      f"and set model to the folder it prints")
