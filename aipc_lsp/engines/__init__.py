"""Inference back ends behind one interface (see base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aipc_lsp.engines.base import Engine, EngineError

if TYPE_CHECKING:
    from aipc_lsp.config import Settings, SlotSettings

ENGINES = ("openvino", "onnxruntime", "transformers", "npu_library")


def create_engine(slot: "SlotSettings", model_path: str, settings: "Settings") -> Engine:
    """Instantiate a slot's engine; each engine reads its own section of the settings.
    Imports stay lazy so a missing optional back end only fails when it is chosen."""
    if slot.engine == "openvino":
        from aipc_lsp.engines.openvino import OpenVINOEngine

        ov = settings.openvino
        return OpenVINOEngine(model_path, slot.device, threads=slot.threads, kv_cache_mb=ov.kv_cache_mb,
                              prefix_caching=ov.prefix_caching, ov_config=ov.config,
                              npu_max_prompt_len=ov.npu_max_prompt_len, npu_min_response_len=ov.npu_min_response_len)
    if slot.engine == "onnxruntime":
        from aipc_lsp.engines.onnxruntime import OnnxRuntimeGenAIEngine

        ort = settings.onnxruntime
        return OnnxRuntimeGenAIEngine(model_path, slot.device, threads=slot.threads, prefix_reuse=ort.prefix_reuse,
                                      max_length=ort.max_length, provider_options=ort.config)
    if slot.engine == "transformers":
        from aipc_lsp.engines.transformers import TransformersEngine

        return TransformersEngine(model_path, slot.device, precision=slot.precision, threads=slot.threads,
                                  prefix_reuse=settings.transformers.prefix_reuse)
    if slot.engine == "npu_library":
        from aipc_lsp.engines.npu_library import NpuLibraryEngine

        return NpuLibraryEngine(model_path, slot.device, precision=slot.precision or "int4",
                                python=settings.npu_library.python)
    raise EngineError(f"unknown engine {slot.engine!r}; available: {', '.join(ENGINES)}")
