"""`aipc-lsp devices`: which engines import here, their versions, and the devices they see.

Each probe imports its library and nothing more; a failure is reported, never raised.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass, field


@dataclass
class EngineReport:
    engine: str
    package: str
    available: bool
    version: str = ""
    devices: list[str] = field(default_factory=list)
    error: str = ""
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _version(*distributions: str) -> tuple[str, str]:
    """(distribution, version) of the first of `distributions` that is installed."""
    for name in distributions:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return distributions[0], ""


def _openvino() -> EngineReport:
    report = EngineReport("openvino", "openvino-genai", False)
    try:
        import openvino as ov
        import openvino_genai  # noqa: F401
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    report.available = True
    report.version = _version("openvino-genai")[1]
    core = ov.Core()
    for device in core.available_devices:
        try:
            name = core.get_property(device, "FULL_DEVICE_NAME")
        except Exception:
            name = ""
        report.devices.append(f"{device} ({name})" if name else device)
    if not any(d.startswith("NPU") for d in core.available_devices):
        report.note = "no NPU: needs an Intel Core Ultra NPU and its driver"
    return report


def _onnxruntime() -> EngineReport:
    package, version = _version("onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime-genai-cuda")
    report = EngineReport("onnxruntime", package, False, version)
    try:
        import onnxruntime_genai as og
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    report.available = True
    report.version = getattr(og, "__version__", version)
    report.devices.append("cpu")
    for provider, check in (("cuda", og.is_cuda_available), ("dml", og.is_dml_available)):
        if check():
            report.devices.append(provider)
    if "dml" not in report.devices:
        report.note = "no DirectML: it comes from the onnxruntime-genai-directml wheel (Windows)"
    return report


def _transformers() -> EngineReport:
    report = EngineReport("transformers", "transformers", False, _version("transformers")[1])
    try:
        import torch
        import transformers  # noqa: F401
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    report.available = True
    report.devices.append(f"cpu (torch {torch.__version__})")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        report.devices += [f"xpu:{i} ({torch.xpu.get_device_name(i)})" for i in range(torch.xpu.device_count())]
    if torch.cuda.is_available():
        report.devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if len(report.devices) == 1:
        report.note = "no GPU: xpu needs a torch build with Intel GPU support, cuda an NVIDIA GPU"
    return report


def _npu_library(python: str = "") -> EngineReport:
    from aipc_lsp.engines.npu_library import PACKAGE, missing_message, probe

    found = probe(python)
    report = EngineReport("npu_library", PACKAGE, found.importable, found.version)
    if found.importable:
        # Without an NPU the library runs its layers on OpenVINO's CPU device.
        report.devices = ["NPU"] if found.npu else ["CPU (fallback: no NPU)"]
    else:
        report.error = found.error
    report.note = missing_message(found)
    return report


def detect(npu_python: str = "") -> list[EngineReport]:
    return [_openvino(), _onnxruntime(), _transformers(), _npu_library(npu_python)]


def format_table(reports: list[EngineReport]) -> str:
    lines = [f"{'engine':13} {'available':9} {'version':12} devices"]
    for r in reports:
        lines.append(f"{r.engine:13} {'yes' if r.available else 'no':9} {r.version or '-':12} "
                     f"{', '.join(r.devices) or '-'}")
        if r.error:
            lines.append(f"{'':13} why not: {r.error}")
        if r.note:
            lines.append(f"{'':13} note: {r.note}")
    return "\n".join(lines)
