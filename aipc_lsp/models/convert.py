"""`aipc-lsp prepare`: turn a checkpoint into the format an engine loads.

Sources: a Hugging Face folder, a hub id (only when a hub is reachable), a GGUF file, or a
catalogue model by name ("default" is the default one; fetched first). Routes:

  onnxruntime   HF folder -> onnxruntime_genai.models.builder (int4/int8/fp16/fp32; cpu/cuda/dml)
  openvino      HF folder -> optimum-intel's OpenVINO exporter (`main_export`), then NNCF weight
                compression through `OVModelForCausalLM(quantization_config=OVWeightQuantizationConfig)`
                for int4 (group size, ratio, sym) and int8; the tokenizer and detokenizer through
                openvino-tokenizers. Needs the extra `prepare-openvino` (torch + torchvision).
                GGUF at its own precision, when optimum-intel is absent -> OpenVINO GenAI's own
                GGUF reader, saved as IR, keeping the GGUF's quantisation (no torch needed);
                tensors of types the reader lacks (Q5_0, ...) are first re-encoded as Q8_0
                (gguf_requant.py), so "its own precision" is then int8
  transformers  GGUF -> a dequantised HF folder (fp32/bf16/fp16)
A GGUF source is first dequantised to an HF folder through transformers (gguf + accelerate)
where the route needs one; a hub id is downloaded first (and fails at once without a hub).

Everything is built in a hidden temporary folder next to the output and renamed into place
at the end, so a failure leaves nothing half-written. The output carries a manifest
(source checksum, options, route); preparing the same thing again returns at once.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from aipc_lsp.engines import PREPARE_PRECISIONS
from aipc_lsp.models import hashing
from aipc_lsp.models.registry import KIND_GGUF, detect_kind, lookup, models_dir

Progress = Callable[[str, "int | None"], None]
MANIFEST = "aipc-prepare.json"
# What prepare makes, per engine: the engines table's.
PRECISIONS = PREPARE_PRECISIONS
ENGINES = tuple(PRECISIONS)
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
    if options.group_size is not None and options.group_size != -1 and options.group_size <= 0:
        raise PrepareError(f"--group-size must be a positive number of weights (or -1: per channel), "
                           f"got {options.group_size}")


# ---------------------------------------------------------------- sources

@dataclass
class Source:
    kind: str  # "gguf" | "hf" | "hub"
    location: str  # path or hub id
    name: str  # short name for the output folder
    checksum: str
    label: str | None = None  # what the manifest records, when not the location (a downloaded hub id)


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
    spec = lookup(source)
    if spec is not None:  # a catalogue model: fetched (or found) and verified, its checksum known
        from aipc_lsp.models.fetch import FetchError, fetch

        try:  # the first 5% of preparing (nothing to do once fetched), so the bar never runs backwards
            path = fetch(spec, progress=lambda message, percent: progress(message, percent and percent * 5 // 100))
        except FetchError as exc:
            raise PrepareError(str(exc)) from exc
        return Source("gguf", str(path), spec.name, spec.sha256)
    path = Path(os.path.expandvars(source)).expanduser()
    if path.is_file():
        if detect_kind(path) != KIND_GGUF:
            raise PrepareError(f"{path} is not a GGUF file; give a GGUF file, a Hugging Face model folder or a hub id")
        progress(f"checksumming {path.name}", None)
        stem = re.sub(r"\.(q\d\w*|f16|f32|bf16)$", "", path.stem, flags=re.I)
        return Source("gguf", str(path.resolve()), _slug(stem), hashing.sha256_of(path))
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
        raise PrepareError("a hub id needs huggingface_hub (it comes with transformers): "
                           "pip install \"aipc-lsp[prepare]\"; or download the model where a hub is reachable "
                           "and pass the folder") from exc
    progress(f"downloading {repo_id} from the model hub", 2)
    try:
        # A short metadata timeout: without a hub this fails in seconds instead of hanging.
        return Path(snapshot_download(repo_id, local_dir=str(dest), etag_timeout=10,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PrepareError(f"could not download {repo_id} from the model hub ({type(exc).__name__}: {first}); "
                           "download it where a hub is reachable and pass the folder instead") from exc


def gguf_weight_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type the file holds (e.g. {"Q4_1": 210, "F32": 61})."""
    from aipc_lsp.models.gguf_requant import type_counts

    return type_counts(path)


def gguf_precision(path: Path) -> str:
    """The precision class of a GGUF's matrices as OpenVINO GenAI's GGUF reader gets them (int4, int8,
    fp16 or fp32): types it lacks count as the Q8_0 they are re-encoded to."""
    from aipc_lsp.models.gguf_requant import readable_counts

    counts = {k: v for k, v in readable_counts(gguf_weight_types(path)).items() if k != "F32"} or {"F32": 1}
    main = max(counts, key=counts.get)
    if main.startswith(GGUF_INT4) or main.startswith("IQ"):
        return "int4"
    return {"Q8_0": "int8", "F16": "fp16", "BF16": "fp16", "F32": "fp32"}.get(main, main.lower())


def dequantise_gguf(path: Path, dest: Path, progress: Progress, dtype: str = "float32") -> Path:
    """A GGUF file -> a Hugging Face folder through transformers (needs gguf and accelerate)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise PrepareError(f"dequantising a GGUF needs torch, transformers, gguf and accelerate ({exc}); "
                           "pip install \"aipc-lsp[prepare]\" torch") from exc
    progress(f"dequantising {path.name} through transformers", None)
    try:
        # The fast tokenizer converted from the GGUF's own vocabulary, not a model-specific class
        # guessed from the architecture (transformers 5.5 picks CodeLlamaTokenizer for every "llama").
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=getattr(torch, dtype))
    except Exception as exc:
        raise PrepareError(f"transformers cannot read {path.name} ({type(exc).__name__}: {exc}); its architecture "
                           "may not be supported for GGUF loading") from exc
    repair_gguf_tokenizer(tokenizer, model.config)
    # A dequantised model must not be saved as if it were still quantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if not model.config.architectures:
        model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    return dest


def repair_gguf_tokenizer(tokenizer, config) -> None:
    """Undo what transformers before 5.6 gets wrong when it converts a byte-level BPE (GPT-2 style)
    GGUF vocabulary: a SentencePiece-style decoder chain around ByteLevel (which openvino-tokenizers
    cannot convert) and the BOS token taken for EOS. Later transformers write what this restores."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        if ((spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
                and (spec.get("decoder") or {}).get("type") != "ByteLevel"):
            from tokenizers import decoders

            backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    for role in ("eos", "bos"):
        wanted = getattr(config, f"{role}_token_id", None)
        if isinstance(wanted, int) and getattr(tokenizer, f"{role}_token_id", None) != wanted:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(wanted))


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


OPTIMUM_HINT = ("pip install \"aipc-lsp[prepare-openvino]\" together with a torch/torchvision pair built for "
                "each other (see \"OpenVINO at any precision\" in docs/ENGINES.md)")
ROUTE_GGUF_READER = "openvino-genai-gguf"
ROUTE_OPTIMUM = "optimum-intel"
ROUTE_ORT = "onnxruntime-genai-builder"
ROUTE_DEQUANTISE = "transformers-dequantise"


def _optimum_available() -> bool:
    """Whether optimum-intel is installed (cheap: nothing heavy is imported)."""
    try:
        return importlib.util.find_spec("optimum.intel") is not None
    except (ImportError, ValueError):
        return False


def _import_optimum() -> dict:
    """optimum-intel's exporter and classes, or a PrepareError that says what to install."""
    if not _optimum_available():
        raise PrepareError("an OpenVINO IR at a chosen precision is made by optimum-intel, which is not installed: "
                           + OPTIMUM_HINT)
    try:
        from optimum.exporters.openvino import main_export
        from optimum.exporters.tasks import TasksManager
        from optimum.intel import OVConfig, OVModelForCausalLM, OVWeightQuantizationConfig
    except Exception as exc:  # e.g. torchvision built for another torch: "operator torchvision::nms does not exist"
        raise PrepareError(f"optimum-intel is installed but does not import ({type(exc).__name__}: {exc}); "
                           + OPTIMUM_HINT) from exc
    return {"main_export": main_export, "TasksManager": TasksManager, "OVConfig": OVConfig,
            "OVModelForCausalLM": OVModelForCausalLM, "OVWeightQuantizationConfig": OVWeightQuantizationConfig}


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def hf_channels(hf_dir: Path) -> tuple[int, ...]:
    """The channel counts int4 groups must divide: hidden size and MLP (intermediate) size."""
    try:
        config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    config = config.get("text_config") or config  # multimodal wrappers keep the LLM's sizes there
    return tuple(int(config.get(key) or 0) for key in ("hidden_size", "intermediate_size"))


def gguf_channels(path: Path) -> tuple[int, ...]:
    """The same channel counts, read from a GGUF's metadata (embedding and feed-forward lengths)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return ()
    fields = GGUFReader(str(path)).fields
    if "general.architecture" not in fields:
        return ()
    arch = fields["general.architecture"].contents()
    channels: list[int] = []
    for key in ("embedding_length", "feed_forward_length"):
        field = fields.get(f"{arch}.{key}")
        value = field.contents() if field is not None else 0
        channels += [int(v) for v in value] if isinstance(value, list) else [int(value or 0)]
    return tuple(channels)


def _int4_group(options: PrepareOptions, channels: tuple[int, ...]) -> int:
    """The group size to use: the user's, checked against the model, or the largest that divides it."""
    if options.group_size is None:
        return pick_group_size(*channels) if any(channels) else 128
    if options.group_size == -1:
        return -1
    uneven = [c for c in channels if c and c % options.group_size]
    if uneven:
        try:
            hint = f"; leave --group-size out to use {pick_group_size(*channels)}"
        except PrepareError:
            hint = "; use --group-size -1 (per channel) or --precision int8"
        raise PrepareError(f"--group-size {options.group_size} does not divide the model's channel count(s) "
                           f"{', '.join(map(str, uneven))}{hint}")
    return options.group_size


def _describe(options: PrepareOptions) -> str:
    if options.precision == "int8":
        return "int8 (asymmetric, per channel)"
    if options.precision != "int4":
        return options.precision
    group = "per channel" if options.group_size == -1 else f"group size {options.group_size}"
    return f"int4 ({'symmetric' if options.sym else 'asymmetric'}, {group}, ratio {options.ratio:g})"


def _openvino_optimum(hf_dir: Path, built: Path, work: Path, options: PrepareOptions, progress: Progress) -> None:
    """HF folder -> OpenVINO IR through optimum-intel, weights compressed by NNCF, tokenizers converted."""
    ov = _import_optimum()
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    model_type = str(config.get("model_type") or "")
    architecture = _architecture(hf_dir) or model_type or "unknown"
    try:
        tasks = list(ov["TasksManager"].get_supported_tasks_for_model_type(
            model_type, exporter="openvino", library_name="transformers"))
    except KeyError:
        tasks = []
    if "text-generation-with-past" not in tasks:
        what = f"it exports it only for {', '.join(tasks)}" if tasks else "it does not know this model type"
        raise PrepareError(f"optimum-intel {_package_version('optimum-intel')} cannot export the {architecture!r} "
                           f"architecture (model_type {model_type!r}) as a text-generation model for OpenVINO: {what}")
    quantise = options.precision in ("int4", "int8")
    if options.precision == "int4":
        weights = ov["OVWeightQuantizationConfig"](bits=4, group_size=options.group_size, ratio=options.ratio,
                                                   sym=options.sym)
    else:
        # int8 as optimum-cli makes it: asymmetric, one scale per output channel.
        weights = ov["OVWeightQuantizationConfig"](bits=8, sym=False, group_size=-1, ratio=1.0)
    # Quantised: export at full precision into a stage folder, then compress. Float: export straight
    # into the output; an explicit dtype also stops optimum's automatic int8 for models over 1B parameters.
    export_config = ov["OVConfig"](quantization_config=weights) if quantise else ov["OVConfig"](dtype=options.precision)
    stage = work / "ov-export" if quantise else built
    progress(f"optimum-intel: exporting {architecture} to OpenVINO IR"
             f"{'' if quantise else ' at ' + options.precision}", 45)
    try:
        with _no_tracer_warnings():
            ov["main_export"](str(hf_dir), output=stage, task="text-generation-with-past", ov_config=export_config,
                              convert_tokenizer=True, library_name="transformers", local_files_only=True)
    except Exception as exc:
        raise PrepareError(f"optimum-intel could not export {architecture}: {type(exc).__name__}: {exc}") from exc
    if quantise:
        progress(f"NNCF: compressing the weights to {_describe(options)}", 70)
        try:
            model = ov["OVModelForCausalLM"].from_pretrained(stage, compile=False, quantization_config=weights)
            model.save_pretrained(built)
        except Exception as exc:
            raise PrepareError(f"NNCF could not compress the weights to {_describe(options)}: "
                               f"{type(exc).__name__}: {exc}") from exc
        del model
        gc.collect()
        _record_weights(built / "openvino_config.json", weights.to_dict())
        for item in stage.iterdir():  # tokenizer files, chat template, openvino_(de)tokenizer.xml
            if not (built / item.name).exists():
                os.replace(item, built / item.name)
    _ensure_openvino_tokenizers(hf_dir, built, progress)
    check_openvino_tokenizers(built)
    if not (built / "openvino_model.xml").is_file():
        raise PrepareError("optimum-intel finished without writing openvino_model.xml")
    progress("OpenVINO IR saved", 95)


def _record_weights(config_file: Path, weights: dict) -> None:
    """openvino_config.json gets the weight compression that was asked for, as optimum-cli writes it,
    instead of the pipeline form optimum-intel saves from Python (which names the stage folder)."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    config["quantization_config"] = weights
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


@contextlib.contextmanager
def _no_tracer_warnings():
    """torch.jit's tracer warns once per traced Python branch: hundreds of lines that mean nothing here."""
    import warnings

    with warnings.catch_warnings():
        try:
            from torch.jit import TracerWarning

            warnings.simplefilter("ignore", TracerWarning)
        except ImportError:
            pass
        yield


def _ensure_openvino_tokenizers(hf_dir: Path, built: Path, progress: Progress) -> None:
    """OpenVINO GenAI loads a folder only with openvino_tokenizer.xml and openvino_detokenizer.xml in it.
    optimum-intel writes them when it can and only warns when it cannot: convert here and fail loudly."""
    if (built / "openvino_tokenizer.xml").is_file() and (built / "openvino_detokenizer.xml").is_file():
        return
    progress("openvino-tokenizers: converting the tokenizer", 92)
    try:
        import openvino
        from openvino_tokenizers import convert_tokenizer
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        tokenizer_model, detokenizer_model = convert_tokenizer(tokenizer, with_detokenizer=True)
        openvino.save_model(tokenizer_model, str(built / "openvino_tokenizer.xml"))
        openvino.save_model(detokenizer_model, str(built / "openvino_detokenizer.xml"))
    except Exception as exc:
        raise PrepareError(f"openvino-tokenizers could not convert this model's tokenizer ({type(exc).__name__}: "
                           f"{exc}); OpenVINO GenAI needs openvino_tokenizer.xml and openvino_detokenizer.xml") from exc


PROBE_TEXT = "def area(width, height):\n    return width * height  # m²\n"


def check_openvino_tokenizers(folder: Path) -> None:
    """Encode and decode a line of code through the converted tokenizer and detokenizer: a conversion
    that drops the byte-level decoding or the spaces gives back something else, and is refused."""
    try:
        import openvino
        import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)

        core = openvino.Core()
        tokenizer = core.compile_model(str(folder / "openvino_tokenizer.xml"), "CPU")
        detokenizer = core.compile_model(str(folder / "openvino_detokenizer.xml"), "CPU")
        ids = tokenizer([PROBE_TEXT])["input_ids"]
        back = str(detokenizer(ids)["string_output"][0])
    except Exception as exc:
        raise PrepareError(f"the converted tokenizer does not run ({type(exc).__name__}: {exc})") from exc
    if back.strip() != PROBE_TEXT.strip():
        raise PrepareError(f"the converted tokenizer does not give back what it read: {PROBE_TEXT!r} came back as "
                           f"{back!r}; the model's tokenizer files may be broken")


def _openvino_from_gguf(gguf_path: Path, out: Path, progress: Progress) -> None:
    """OpenVINO GenAI builds an ov::Model from a GGUF itself and can save it as IR. A GGUF with tensor
    types its reader lacks is first written out again with those re-encoded (in `out`, removed after)."""
    import openvino_genai

    from aipc_lsp.models.gguf_requant import RequantError, forget, unreadable, write_readable

    out.mkdir(parents=True, exist_ok=True)
    link = out / gguf_path.name
    try:
        lacking = unreadable(gguf_weight_types(gguf_path))
    except ImportError as exc:
        raise PrepareError(f"reading the tensor types of {gguf_path.name} needs the gguf package ({exc}): "
                           "pip install gguf") from exc
    try:
        if lacking:
            kinds = ", ".join(f"{n} {name}" for name, n in sorted(lacking.items()))
            progress(f"{gguf_path.name} holds tensors OpenVINO GenAI's GGUF reader cannot read ({kinds}): "
                     "re-encoding them as Q8_0", 5)
            try:
                write_readable(gguf_path, link, lambda message, percent: progress(
                    message, None if percent is None else 5 + percent * 40 // 100))
            except (RequantError, ValueError, OSError) as exc:
                raise PrepareError(f"could not re-encode {gguf_path.name} for OpenVINO GenAI's GGUF reader: {exc}") from exc
        else:
            try:
                os.link(gguf_path, link)
            except OSError:
                shutil.copy2(gguf_path, link)
        forget()  # the parsed metadata, before OpenVINO loads the model
        progress("OpenVINO GenAI: reading the GGUF and saving the IR", 50)
        try:
            openvino_genai.LLMPipeline(str(link), "CPU", enable_save_ov_model=True)
        except Exception as exc:
            raise PrepareError(f"OpenVINO GenAI could not read {gguf_path.name}: {exc}") from exc
    finally:
        forget()
        link.unlink(missing_ok=True)
    if not (out / "openvino_model.xml").is_file():
        raise PrepareError("OpenVINO GenAI did not save an IR (openvino_model.xml) for this GGUF")
    from aipc_lsp.models.ir_signed import signed_weights

    progress("OpenVINO IR saved; storing its symmetric weights as signed bytes", 90)
    try:
        signed_weights(out)
        progress("OpenVINO IR ready", 95)
    except Exception as exc:  # the reader's IR computes the same, only slower: keep it
        progress(f"OpenVINO IR ready; its weights stay as the GGUF reader wrote them ({type(exc).__name__}: {exc})", 95)


# ---------------------------------------------------------------- driver

@dataclass(frozen=True)
class Plan:
    route: str  # ROUTE_*
    options: PrepareOptions  # as asked, with the int4 group size and ratio filled in


def plan(src: Source, options: PrepareOptions) -> Plan:
    """Which converter builds `src` with `options`, and the options it will really use."""
    if options.engine == "onnxruntime":
        return Plan(ROUTE_ORT, options)
    if options.engine == "transformers":
        if src.kind != "gguf":
            raise PrepareError("transformers loads Hugging Face folders and hub models as they are; "
                               "prepare --engine transformers converts GGUF files")
        return Plan(ROUTE_DEQUANTISE, options)
    int4_options = options.group_size is not None or options.ratio is not None or options.sym
    if not _optimum_available():
        if src.kind == "gguf":
            held = gguf_precision(Path(src.location))
            if held == options.precision and not int4_options:
                return Plan(ROUTE_GGUF_READER, options)
            raise PrepareError(f"{Path(src.location).name} holds {held} weights for OpenVINO GenAI's GGUF reader; without "
                               f"optimum-intel the GGUF is converted at that precision (--precision {held}, no "
                               f"--group-size/--ratio/--sym). For {options.precision}: {OPTIMUM_HINT}")
        raise PrepareError("an OpenVINO IR from a Hugging Face model is made by optimum-intel, which is not "
                           f"installed: {OPTIMUM_HINT}. A GGUF source at its own precision needs no extra")
    if options.precision != "int4":
        return Plan(ROUTE_OPTIMUM, options)
    channels = gguf_channels(Path(src.location)) if src.kind == "gguf" else hf_channels(Path(src.location))
    return Plan(ROUTE_OPTIMUM, replace(options, group_size=_int4_group(options, channels),
                                       ratio=1.0 if options.ratio is None else options.ratio))


def read_manifest(folder: Path) -> dict:
    """The manifest a prepared folder carries (source checksum, options, route), or {} without one."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def output_for(source: Source, options: PrepareOptions, route: str) -> Path:
    """The folder in the model cache `prepare` writes `source` to with `options` through `route`."""
    return default_output(source, Plan(route, options))


def default_output(source: Source, chosen: Plan) -> Path:
    options = chosen.options
    tag = options.precision
    if chosen.route == ROUTE_OPTIMUM and options.precision == "int4":
        # NNCF's int4 carries its parameters in the name; the GGUF reader's keeps the GGUF's own.
        tag += "-perchannel" if options.group_size == -1 else f"-g{options.group_size}"
        tag += "-sym" if options.sym else ""
        tag += f"-r{options.ratio:g}" if options.ratio not in (None, 1.0) else ""
    suffix = f"-{options.provider}" if options.provider != "cpu" else ""
    return models_dir() / f"{source.name}-{options.engine}-{tag}{suffix}"


def _manifest(source: Source, options: PrepareOptions, chosen: Plan) -> dict:
    manifest = {"source": source.label or source.location, "source_checksum": source.checksum,
                "options": asdict(options), "route": chosen.route, "used": asdict(chosen.options), "format": 1}
    if chosen.route == ROUTE_GGUF_READER:
        from aipc_lsp.models.gguf_requant import REQUANT_FORMAT

        manifest["requant_format"] = REQUANT_FORMAT  # an IR made by an older build of this route is made again
    return manifest


def _same_build(existing: dict | None, wanted: dict) -> bool:
    if not existing:
        return False
    keys = ("source", "source_checksum", "options")
    # Manifests written before routes were recorded came from the only route there was then.
    return (all(existing.get(k) == wanted[k] for k in keys)
            and existing.get("route", wanted["route"]) == wanted["route"])


def prepare(source: str, options: PrepareOptions, output: str | Path | None = None, *,
            force: bool = False, progress: Progress = _quiet, route: str | None = None) -> Path:
    """Build `source` for `options.engine` into `output` (default: the model cache) and return it.
    `route` forces a converter (ROUTE_GGUF_READER: the GGUF's own precision even where optimum-intel
    is installed) instead of the one `plan` would choose."""
    validate(options)
    src = resolve_source(source, progress)
    if route == ROUTE_GGUF_READER and (src.kind != "gguf" or options.engine != "openvino"):
        raise PrepareError("OpenVINO GenAI's GGUF reader converts GGUF files for openvino only")
    with contextlib.ExitStack() as cleanup:
        if src.kind == "hub" and options.engine == "openvino":
            if not _optimum_available():  # say so before downloading gigabytes
                raise PrepareError(f"an OpenVINO IR from a hub model is made by optimum-intel, which is not "
                                   f"installed: {OPTIMUM_HINT}")
            src = _download(src, cleanup, progress)
        chosen = Plan(route, options) if route else plan(src, options)
        out = Path(output).expanduser().resolve() if output else default_output(src, chosen)
        wanted = _manifest(src, options, chosen)
        if out.exists():
            if _same_build(read_manifest(out), wanted) and not force:
                progress(f"{out} is already prepared from this source with these options", 100)
                return out
            if not force:
                raise PrepareError(f"{out} already exists (from another source, other options or another "
                                   "converter); pass --force to replace it or --output to choose another folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        built = work / "out"
        _build(src, chosen, built, work, progress)
        (built / MANIFEST).write_text(json.dumps(wanted, indent=2), encoding="utf-8")
        progress("finishing", 98)
        if out.exists():
            shutil.rmtree(out)
        os.replace(built, out)
    progress(f"prepared {out}", 100)
    return out


def _download(src: Source, cleanup: contextlib.ExitStack, progress: Progress) -> Source:
    """A hub id -> a local folder (removed at the end), before anything else is decided."""
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{src.name}.download-", dir=root))
    cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
    folder = _hub_snapshot(src.location, scratch / "hf", progress)
    return Source("hf", str(folder), src.name, src.checksum, label=src.location)


def _build(src: Source, chosen: Plan, built: Path, work: Path, progress: Progress) -> None:
    options = chosen.options
    if chosen.route == ROUTE_GGUF_READER:
        _openvino_from_gguf(Path(src.location), built, progress)
        return
    if chosen.route == ROUTE_DEQUANTISE:
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[options.precision]
        dequantise_gguf(Path(src.location), built, progress, dtype)
        return
    # Hugging Face folder (given, downloaded or dequantised) -> the engine's converter.
    if chosen.route == ROUTE_OPTIMUM:
        _import_optimum()  # fail before a long dequantisation when it cannot import
    if src.kind == "gguf":
        hf, is_folder = str(dequantise_gguf(Path(src.location), work / "hf", progress)), True
    else:
        hf, is_folder = src.location, src.kind == "hf"
    progress(f"converting for {options.engine} at {options.precision}", 35)
    if chosen.route == ROUTE_ORT:
        _ort_build(hf, is_folder, built, work, options, progress)
    else:
        _openvino_optimum(Path(hf), built, work, options, progress)
