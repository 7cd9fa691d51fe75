"""`aipc-lsp prepare`: turn a checkpoint into the format an engine loads.

Sources: a Hugging Face folder, a hub id (only when a hub is reachable), a GGUF file, or
"default" (the bundled SmolLM2 GGUF). Routes:

  onnxruntime   HF folder -> onnxruntime_genai.models.builder (int4/int8/fp16/fp32; cpu/cuda/dml)
  openvino      HF folder -> optimum-intel `export openvino` (int4 with group size/ratio/sym, int8,
                fp16, fp32), when optimum-intel is installed (extra `prepare-openvino`);
                GGUF -> OpenVINO GenAI's own GGUF reader, saved as IR, keeping the GGUF's
                quantisation (no torch needed; int4 for a Q4 GGUF)
  transformers  GGUF -> a dequantised HF folder (fp32/bf16/fp16)
A GGUF source is first dequantised to an HF folder through transformers (gguf + accelerate).

Everything is built in a hidden temporary folder next to the output and renamed into place
at the end, so a failure leaves nothing half-written. The output carries a manifest
(source checksum + options); preparing the same thing again returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from aipc_lsp.models.registry import DEFAULT_MODEL, detect_kind, KIND_GGUF, models_dir

Progress = Callable[[str, "int | None"], None]
MANIFEST = "aipc-prepare.json"
ENGINES = ("openvino", "onnxruntime", "transformers")
PRECISIONS = {
    "openvino": ("int4", "int8", "fp16", "fp32"),
    "onnxruntime": ("int4", "int8", "fp16", "fp32"),
    "transformers": ("fp32", "bf16", "fp16"),
}
PROVIDERS = ("cpu", "cuda", "dml")
# Text architectures the ONNX Runtime GenAI 0.18 model builder knows (config.json "architectures").
ORT_ARCHITECTURES = (
    "ChatGLMModel", "Ernie4_5ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "GptOssForCausalLM", "GraniteForCausalLM", "GraniteMoeHybridForCausalLM", "HunYuanDenseV1ForCausalLM",
    "InternLM2ForCausalLM", "Lfm2ForCausalLM", "Lfm2MoeForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
    "NemotronForCausalLM", "OlmoForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "PhiMoEForCausalLM",
    "Phi3SmallForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM")
GGUF_INT4 = ("Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS")


class PrepareError(RuntimeError):
    """Preparation failed; the message says why and what to do."""


@dataclass(frozen=True)
class PrepareOptions:
    engine: str
    precision: str
    provider: str = "cpu"
    group_size: int | None = None
    ratio: float | None = None
    sym: bool = False


def _quiet(message: str, percent: int | None) -> None:
    pass


def pick_group_size(*channels: int, preferred: tuple[int, ...] = (128, 64, 32, 16)) -> int:
    """The largest usual int4 group size that divides every channel count (576 -> 64)."""
    for size in preferred:
        if all(c % size == 0 for c in channels if c):
            return size
    raise PrepareError(f"no int4 group size in {preferred} divides the model's channels {channels}; "
                       "use --precision int8")


def validate(options: PrepareOptions) -> None:
    if options.engine not in ENGINES:
        raise PrepareError(f"unknown engine {options.engine!r}; prepare supports {', '.join(ENGINES)}")
    if options.precision not in PRECISIONS[options.engine]:
        raise PrepareError(f"precision {options.precision!r} is not supported for {options.engine}; "
                           f"use one of {', '.join(PRECISIONS[options.engine])}")
    if options.provider not in PROVIDERS:
        raise PrepareError(f"unknown execution provider {options.provider!r}; use {', '.join(PROVIDERS)}")
    if options.provider != "cpu" and options.engine != "onnxruntime":
        raise PrepareError("--provider applies to --engine onnxruntime only")
    int4_only = options.group_size is not None or options.ratio is not None or options.sym
    if int4_only and not (options.engine == "openvino" and options.precision == "int4"):
        raise PrepareError("--group-size, --ratio and --sym apply to --engine openvino --precision int4 only")
    if options.ratio is not None and not 0 < options.ratio <= 1:
        raise PrepareError(f"--ratio must be in (0, 1], got {options.ratio}")


# ---------------------------------------------------------------- sources

@dataclass
class Source:
    kind: str  # "gguf" | "hf" | "hub"
    location: str  # path or hub id
    name: str  # short name for the output folder
    checksum: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_checksum(path: Path) -> str:
    """Cheap identity of a model folder: names, sizes and modification times."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = f.stat()
        digest.update(f"{f.relative_to(path)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def resolve_source(source: str, progress: Progress = _quiet) -> Source:
    if source.strip().lower() in ("", "default", DEFAULT_MODEL.name):
        from aipc_lsp.models.fetch import FetchError, fetch

        try:
            path = fetch(progress=progress)
        except FetchError as exc:
            raise PrepareError(str(exc)) from exc
        return Source("gguf", str(path), DEFAULT_MODEL.name, DEFAULT_MODEL.sha256)
    path = Path(os.path.expandvars(source)).expanduser()
    if path.is_file():
        if detect_kind(path) != KIND_GGUF:
            raise PrepareError(f"{path} is not a GGUF file; give a GGUF file, a Hugging Face model folder or a hub id")
        progress(f"checksumming {path.name}", None)
        stem = re.sub(r"\.(q\d\w*|f16|f32|bf16)$", "", path.stem, flags=re.I)
        return Source("gguf", str(path.resolve()), _slug(stem), _sha256(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PrepareError(f"{path} is not a Hugging Face model folder (no config.json)")
        return Source("hf", str(path.resolve()), _slug(path.name), _folder_checksum(path))
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        return Source("hub", source, _slug(source.split("/")[-1]), source)
    raise PrepareError(f"{source} is neither a file, a folder nor a hub id (owner/name)")


def _hub_snapshot(repo_id: str, dest: Path, progress: Progress) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise PrepareError("a hub id needs huggingface_hub: pip install \"aipc-lsp[prepare]\"") from exc
    progress(f"downloading {repo_id} from the model hub", None)
    try:
        return Path(snapshot_download(repo_id, local_dir=str(dest),
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]))
    except Exception as exc:
        raise PrepareError(f"could not download {repo_id} from the model hub ({type(exc).__name__}: {exc}); "
                           "download it where a hub is reachable and pass the folder instead") from exc


def gguf_weight_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type the file holds (e.g. {"Q4_1": 210, "F32": 61})."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def gguf_precision(path: Path) -> str:
    """The precision class of a GGUF's matrices: int4, int8, fp16 or fp32."""
    counts = {k: v for k, v in gguf_weight_types(path).items() if k != "F32"} or {"F32": 1}
    main = max(counts, key=counts.get)
    if main.startswith(GGUF_INT4) or main.startswith("IQ"):
        return "int4"
    return {"Q8_0": "int8", "F16": "fp16", "BF16": "fp16", "F32": "fp32"}.get(main, main.lower())


def dequantise_gguf(path: Path, dest: Path, progress: Progress, dtype: str = "float32") -> Path:
    """A GGUF file -> a Hugging Face folder through transformers (needs gguf and accelerate)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise PrepareError(f"dequantising a GGUF needs torch, transformers, gguf and accelerate ({exc}); "
                           "pip install \"aipc-lsp[prepare]\" torch") from exc
    progress(f"dequantising {path.name} through transformers", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=getattr(torch, dtype))
    except Exception as exc:
        raise PrepareError(f"transformers cannot read {path.name} ({type(exc).__name__}: {exc}); its architecture "
                           "may not be supported for GGUF loading") from exc
    # A dequantised model must not be saved as if it were still quantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if not model.config.architectures:
        model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    return dest


# ---------------------------------------------------------------- routes

def _run(command: list[str], progress: Progress, start: int, end: int, what: str) -> None:
    """Run a converter, turning its output lines into progress; its last lines go into the error."""
    progress(what, start)
    tail: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    seen = 0
    for line in process.stdout:
        line = line.strip()
        if not line:
            continue
        tail = (tail + [line])[-15:]
        seen += 1
        if seen % 25 == 0:  # a rough bar: converters print a line per tensor or layer
            progress(f"{what}: {line[:100]}", min(end - 1, start + seen // 25))
    if process.wait() != 0:
        raise PrepareError(f"{what} failed (exit {process.returncode}):\n  " + "\n  ".join(tail))
    progress(f"{what}: done", end)


def _architecture(hf_dir: Path) -> str:
    try:
        names = json.loads((hf_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or [""]
    except (OSError, ValueError):
        return ""
    return str(names[0])


def _ort_build(hf: str, is_folder: bool, out: Path, work: Path, options: PrepareOptions, progress: Progress) -> None:
    try:
        import onnxruntime_genai  # noqa: F401
        import onnx_ir  # noqa: F401
    except ImportError as exc:
        raise PrepareError(f"the ONNX Runtime GenAI model builder needs onnxruntime-genai, onnx and onnx-ir ({exc}); "
                           "pip install \"aipc-lsp[prepare]\"") from exc
    if is_folder:
        architecture = _architecture(Path(hf))
        if architecture and architecture not in ORT_ARCHITECTURES:
            raise PrepareError(f"the ONNX Runtime GenAI model builder does not support the {architecture!r} "
                               f"architecture (supported: {', '.join(ORT_ARCHITECTURES)})")
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", hf, "-o", str(out),
               "-p", options.precision, "-e", options.provider, "-c", str(work / "builder-cache")]
    if is_folder:
        command += ["-i", hf]
    if options.precision == "int4" and options.provider == "cpu":
        # int8 activations for the int4 matmuls: MLAS's VNNI/AMX kernels, a much faster prefill on CPUs.
        command += ["--extra_options", "int4_accuracy_level=4"]
    _run(command, progress, 40, 95, "ONNX Runtime GenAI model builder")


def _optimum_available() -> bool:
    try:
        import optimum.intel  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_optimum(hf: str, out: Path, options: PrepareOptions, progress: Progress) -> None:
    if not _optimum_available():
        raise PrepareError("an OpenVINO IR from a Hugging Face model needs optimum-intel: "
                           "pip install \"aipc-lsp[prepare-openvino]\" (it brings torch and torchvision); "
                           "a GGUF source at its own precision needs no extra")
    command = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", hf,
               "--task", "text-generation-with-past", "--weight-format", options.precision]
    if options.precision == "int4":
        group = options.group_size
        if group is None:
            group = _auto_group_size(Path(hf)) if Path(hf).is_dir() else 128
        command += ["--group-size", str(group), "--ratio", str(options.ratio if options.ratio is not None else 1.0)]
        if options.sym:
            command.append("--sym")
    command.append(str(out))
    _run(command, progress, 40, 95, "optimum-intel export")


def _auto_group_size(hf_dir: Path) -> int:
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    return pick_group_size(int(config.get("hidden_size") or 0), int(config.get("intermediate_size") or 0))


def _openvino_from_gguf(gguf_path: Path, out: Path, progress: Progress) -> None:
    """OpenVINO GenAI builds an ov::Model from a GGUF itself and can save it as IR."""
    import openvino_genai

    out.mkdir(parents=True, exist_ok=True)
    link = out / gguf_path.name
    try:
        os.link(gguf_path, link)
    except OSError:
        shutil.copy2(gguf_path, link)
    progress("OpenVINO GenAI: reading the GGUF and saving the IR", 50)
    try:
        openvino_genai.LLMPipeline(str(link), "CPU", enable_save_ov_model=True)
    except Exception as exc:
        raise PrepareError(f"OpenVINO GenAI could not read {gguf_path.name}: {exc}") from exc
    finally:
        link.unlink(missing_ok=True)
    if not (out / "openvino_model.xml").is_file():
        raise PrepareError("OpenVINO GenAI did not save an IR (openvino_model.xml) for this GGUF")
    progress("OpenVINO IR saved", 95)


# ---------------------------------------------------------------- driver

def default_output(source: Source, options: PrepareOptions) -> Path:
    suffix = f"-{options.provider}" if options.provider != "cpu" else ""
    return models_dir() / f"{source.name}-{options.engine}-{options.precision}{suffix}"


def _manifest(source: Source, options: PrepareOptions) -> dict:
    return {"source": source.location, "source_checksum": source.checksum, "options": asdict(options), "format": 1}


def prepare(source: str, options: PrepareOptions, output: str | Path | None = None, *,
            force: bool = False, progress: Progress = _quiet) -> Path:
    """Build `source` for `options.engine` into `output` (default: the model cache) and return it."""
    validate(options)
    src = resolve_source(source, progress)
    out = Path(output).expanduser().resolve() if output else default_output(src, options)
    wanted = _manifest(src, options)
    if out.exists():
        try:
            existing = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        if existing == wanted and not force:
            progress(f"{out} is already prepared from this source with these options", 100)
            return out
        if not force:
            raise PrepareError(f"{out} already exists (from another source or other options); "
                               "pass --force to replace it or --output to choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        built = work / "out"
        _build(src, options, built, work, progress)
        (built / MANIFEST).write_text(json.dumps(wanted, indent=2), encoding="utf-8")
        progress("finishing", 98)
        if out.exists():
            shutil.rmtree(out)
        os.replace(built, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"prepared {out}", 100)
    return out


def _build(src: Source, options: PrepareOptions, built: Path, work: Path, progress: Progress) -> None:
    engine = options.engine
    if engine == "openvino" and src.kind == "gguf":
        held = gguf_precision(Path(src.location))
        if held == options.precision and not (options.group_size or options.ratio or options.sym):
            _openvino_from_gguf(Path(src.location), built, progress)
            return
        if not _optimum_available():
            raise PrepareError(f"{Path(src.location).name} holds {held} weights; without optimum-intel the GGUF is "
                               f"converted at its own precision (--precision {held}, no --group-size/--ratio/--sym). "
                               f"For {options.precision} install the extra: pip install \"aipc-lsp[prepare-openvino]\"")
    if engine == "transformers":
        if src.kind != "gguf":
            raise PrepareError("transformers loads Hugging Face folders and hub models as they are; "
                               "prepare --engine transformers converts GGUF files")
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[options.precision]
        dequantise_gguf(Path(src.location), built, progress, dtype)
        return
    # Hugging Face folder (given, downloaded or dequantised) -> the engine's converter.
    if src.kind == "gguf":
        hf, is_folder = str(dequantise_gguf(Path(src.location), work / "hf", progress)), True
    elif src.kind == "hub" and engine == "openvino":
        hf, is_folder = str(_hub_snapshot(src.location, work / "hf", progress)), True
    else:
        hf, is_folder = src.location, src.kind == "hf"
    progress(f"converting for {engine} at {options.precision}", 35)
    if engine == "onnxruntime":
        _ort_build(hf, is_folder, built, work, options, progress)
    else:
        _openvino_optimum(hf, built, options, progress)
