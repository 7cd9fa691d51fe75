"""Inference back ends behind one interface (see base.py)."""

from __future__ import annotations

from aipc_lsp.engines.base import Engine, EngineError

ENGINES = ("openvino",)


def create_engine(name: str, model_path: str, device: str, **options) -> Engine:
    """Instantiate an engine by its settings name; imports stay lazy so a missing
    optional back end only fails when it is chosen."""
    if name == "openvino":
        from aipc_lsp.engines.openvino import OpenVINOEngine

        return OpenVINOEngine(model_path, device, **options)
    raise EngineError(f"unknown engine {name!r}; available: {', '.join(ENGINES)}")
