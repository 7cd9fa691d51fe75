"""Inference back ends behind one interface (see base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aipc_lsp.engines.base import Engine, EngineError

if TYPE_CHECKING:
    from aipc_lsp.config import Settings, SlotSettings

ENGINES = ("openvino", "onnxruntime", "transformers", "npu_library")
# Environment of an engine's worker process (a variable already set wins). One malloc arena: the
# OpenVINO worker otherwise keeps an arena per thread that compiled or ran the model, with their
# free memory in each (measured: -13 to -17 MB of peak RSS, the same decode rate and prefill time).
WORKER_ENV = {"openvino": {"MALLOC_ARENA_MAX": "1"}}


def create_engine(slot: "SlotSettings", model_path: str, settings: "Settings") -> Engine:
    """Instantiate a slot's engine, in a worker process unless scheduler.engine_process is off;
    each engine reads its own section of the settings. Imports stay lazy so a missing optional
    back end only fails when it is chosen."""
    spec = engine_spec(slot, model_path, settings)
    # npu_library is a ProcessEngine itself, whose worker runs under the library's interpreter:
    # wrapping it in another process would add a hop and hide its notice and real device.
    if settings.scheduler.engine_process and slot.engine != "npu_library":
        from aipc_lsp.engines.process import ProcessEngine

        return ProcessEngine(slot.engine, model_path, slot.device, spec, env=WORKER_ENV.get(slot.engine))
    import importlib

    return getattr(importlib.import_module(spec.module), spec.cls)(*spec.args, **spec.kwargs)


def engine_spec(slot: "SlotSettings", model_path: str, settings: "Settings"):
    """Which class builds the slot's engine, with which arguments."""
    from aipc_lsp.engines.process import EngineSpec

    args = (model_path, slot.device)
    if slot.engine == "openvino":
        ov = settings.openvino
        return EngineSpec("aipc_lsp.engines.openvino", "OpenVINOEngine", args, dict(
            threads=slot.threads, kv_cache_tokens=ov.kv_cache_tokens, prefix_caching=ov.prefix_caching, ov_config=ov.config,
            prompt_lookup_tokens=ov.prompt_lookup_tokens, release_weight_pages=ov.release_weight_pages,
            typing_checkpoint=ov.typing_checkpoint,
            npu_max_prompt_len=ov.npu_max_prompt_len, npu_min_response_len=ov.npu_min_response_len))
    if slot.engine == "onnxruntime":
        ort = settings.onnxruntime
        return EngineSpec("aipc_lsp.engines.onnxruntime", "OnnxRuntimeGenAIEngine", args, dict(
            threads=slot.threads, prefix_reuse=ort.prefix_reuse, max_length=ort.max_length, provider_options=ort.config))
    if slot.engine == "transformers":
        return EngineSpec("aipc_lsp.engines.transformers", "TransformersEngine", args, dict(
            precision=slot.precision, threads=slot.threads, prefix_reuse=settings.transformers.prefix_reuse))
    if slot.engine == "npu_library":
        return EngineSpec("aipc_lsp.engines.npu_library", "NpuLibraryEngine", args, dict(
            precision=slot.precision, threads=slot.threads, python=settings.npu_library.python))
    raise EngineError(f"unknown engine {slot.engine!r}; available: {', '.join(ENGINES)}")
