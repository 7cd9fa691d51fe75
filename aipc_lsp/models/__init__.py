"""Model registry, discovery and fetching.

The ``fetch`` function is deliberately not re-exported: it would shadow the
``aipc_lsp.models.fetch`` submodule (breaking ``import aipc_lsp.models.fetch as m``
and monkeypatching). Use ``from aipc_lsp.models.fetch import fetch``.
"""

from . import catalogue, fetch, registry
from .catalogue import SMOLLM2_135M, ModelPart, lookup
from .fetch import FetchError, default_model_path, resolve_model, verify
from .registry import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    ModelInfo,
    ModelSpec,
    cache_dir,
    detect_kind,
    list_models,
    models_dir,
)

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "SMOLLM2_135M",
    "FetchError",
    "ModelInfo",
    "ModelPart",
    "ModelSpec",
    "catalogue",
    "lookup",
    "cache_dir",
    "default_model_path",
    "detect_kind",
    "fetch",
    "registry",
    "list_models",
    "models_dir",
    "resolve_model",
    "verify",
]
