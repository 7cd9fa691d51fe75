"""Inference back ends behind one interface (base.py, which also says how to add one): the
table of engines, and the one place an engine is built from settings.

Standard library only: npu_library's worker imports this package under an interpreter that has
none of the server's packages.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aipc_lsp.engines.base import Engine, EngineError

if TYPE_CHECKING:
    from aipc_lsp.config import Settings, SlotSettings


@dataclass(frozen=True)
class EngineKind:
    module: str
    cls: str
    # What the `precision` setting may say for it (chosen at load); () = it takes none.
    precisions: tuple[str, ...] = ()
    # What `aipc-lsp prepare --engine NAME --precision P` makes for it; () = prepare makes nothing for it.
    prepare_precisions: tuple[str, ...] = ()
    # Environment of its worker process (a variable already set wins).
    worker_env: tuple[tuple[str, str], ...] = ()
    # It runs a worker process of its own (under another interpreter): never wrapped in another.
    own_process: bool = False
    # False: the model is a server's (remote): no model file is resolved for it, and no worker process
    # is started (it computes nothing here; a process would only add a hop).
    local_model: bool = True


ENGINES: dict[str, EngineKind] = {
    # One malloc arena: the OpenVINO worker otherwise keeps an arena per thread that compiled or ran
    # the model, with their free memory in each (measured: -13 to -17 MB of peak RSS, the same
    # decode rate and prefill time).
    "openvino": EngineKind("aipc_lsp.engines.openvino", "OpenVINOEngine",
                           prepare_precisions=("int4", "int8", "fp16", "fp32"), worker_env=(("MALLOC_ARENA_MAX", "1"),)),
    "onnxruntime": EngineKind("aipc_lsp.engines.onnxruntime", "OnnxRuntimeGenAIEngine",
                              prepare_precisions=("int4", "int8", "fp16", "fp32")),
    "transformers": EngineKind("aipc_lsp.engines.transformers", "TransformersEngine",
                               precisions=("fp32", "bf16", "fp16"), prepare_precisions=("fp32", "bf16", "fp16")),
    "npu_library": EngineKind("aipc_lsp.engines.npu_library", "NpuLibraryEngine",
                              precisions=("int4", "int8", "fp16"), own_process=True),
    "remote": EngineKind("aipc_lsp.engines.remote", "RemoteEngine", local_model=False),
}
ENGINE_NAMES = tuple(ENGINES)
# What `aipc-lsp prepare` makes, per engine it makes something for.
PREPARE_PRECISIONS = {name: kind.prepare_precisions for name, kind in ENGINES.items() if kind.prepare_precisions}
# Every precision any engine takes at load or prepare makes ("" = the engine's default).
PRECISIONS = ("", *dict.fromkeys(p for kind in ENGINES.values() for p in (*kind.precisions, *kind.prepare_precisions)))


def kind_of(name: str) -> EngineKind:
    kind = ENGINES.get(name)
    if kind is None:
        raise EngineError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}")
    return kind


@dataclass(frozen=True)
class EngineSpec:
    """Which engine class to build, with what keyword arguments (JSON values); `section` names the
    settings section (an attribute of config.Settings) whose dataclass its `options` are."""

    module: str
    cls: str
    kwargs: dict = field(default_factory=dict)
    section: str = ""

    def to_json(self, **extra) -> str:
        return json.dumps({"module": self.module, "class": self.cls, "kwargs": self.kwargs, "section": self.section,
                           **extra})

    @classmethod
    def from_json(cls, values: dict) -> "EngineSpec":
        return cls(values["module"], values["class"], values.get("kwargs", {}), values.get("section", ""))


def engine_spec(slot: "SlotSettings", model_path: str, settings: "Settings") -> EngineSpec:
    """The slot's engine: its table row's class, the slot's device, threads and precision, and the
    engine's own settings section as its options."""
    kind = kind_of(slot.engine)
    section = slot.engine if dataclasses.is_dataclass(getattr(settings, slot.engine, None)) else ""
    kwargs = {"model_path": str(model_path), "device": slot.device, "threads": slot.threads,
              "precision": slot.precision}
    if section:
        kwargs["options"] = dataclasses.asdict(getattr(settings, section))
    return EngineSpec(kind.module, kind.cls, kwargs, section)


def build_engine(spec: EngineSpec) -> Engine:
    """The engine `spec` describes, in this process (not loaded). Imports stay lazy so a missing
    optional back end only fails when it is chosen."""
    kwargs = dict(spec.kwargs)
    if spec.section:
        from aipc_lsp.config import Settings

        section_type = type(getattr(Settings(), spec.section))  # a flat dataclass of the engine's settings
        names = {f.name for f in dataclasses.fields(section_type)}
        kwargs["options"] = section_type(**{k: v for k, v in (kwargs.get("options") or {}).items() if k in names})
    return getattr(importlib.import_module(spec.module), spec.cls)(**kwargs)


def create_engine(slot: "SlotSettings", model_path: str, settings: "Settings") -> Engine:
    """A slot's engine, in a worker process unless scheduler.engine_process is off."""
    spec = engine_spec(slot, model_path, settings)
    kind = kind_of(slot.engine)
    # npu_library is a ProcessEngine itself, whose worker runs under the library's interpreter:
    # wrapping it in another process would add a hop.
    if settings.scheduler.engine_process and not kind.own_process and kind.local_model:
        from aipc_lsp.engines.process import ProcessEngine

        return ProcessEngine(slot.engine, model_path, slot.device, spec, env=dict(kind.worker_env))
    return build_engine(spec)


def check_precision(name: str, precision: str) -> None:
    """Refuse a load precision engine `name` does not take ("" is its default), saying which it takes."""
    allowed = kind_of(name).precisions
    if precision and precision not in allowed:
        choices = ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else "".join(allowed)
        raise EngineError(f"{name}: precision {precision!r} is not supported; use {choices}")
