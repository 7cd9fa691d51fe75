"""Settings: defaults < settings.toml < initializationOptions < workspace/configuration.

Every layer is validated on its own so a problem names where it came from (file and line,
or the LSP message) and the key; a bad value falls back to the value of the layers below,
and the server carries on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import platformdirs

from aipc_lsp.engines import ENGINE_NAMES, PRECISIONS  # the one table of engines and their precisions

LOG_LEVELS = ("error", "warning", "info", "debug")
# completion.fim: "auto", "off", or one template by name (aipc_lsp/fim.py).
FIM_CHOICES = ("auto", "off", "qwen", "starcoder", "deepseek", "codellama", "codegemma", "codestral")


# Settings that were renamed, and what to write instead.
RENAMED = {
    "openvino.kv_cache_mb": "use openvino.kv_cache_tokens, the tokens the KV cache holds (the old value x 16 "
                            "gives the same cache; its memory depends on the model)",
}


def _opt(default, doc: str, *, choices=None, minimum=None, maximum=None, upper=False):
    meta = {"doc": doc, "choices": choices, "min": minimum, "max": maximum, "upper": upper}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class OpenVINOSettings:
    kv_cache_tokens: int = _opt(3072, "tokens the KV cache holds: the prompt and answer in flight, and what prefix "
                                      "caching keeps of earlier prompts (the default model: 14 KB per token)",
                                minimum=512, maximum=1048576)
    prefix_caching: bool = _opt(True, "reuse the KV cache of a prompt's unchanged beginning")
    prompt_lookup_tokens: int = _opt(3, "prompt-lookup decoding: tokens copied from the prompt and checked in one "
                                        "step (code repeats itself); 0 = off", minimum=0, maximum=16)
    typing_checkpoint: bool = _opt(True, "once a suggestion is out, cache its prompt less the last token (in the "
                                         "idle moment), so the next keystroke prefills the 1-2 tokens it changed "
                                         "instead of up to a KV block")
    gguf_as_ir: bool = _opt(True, "load a GGUF through the OpenVINO IR OpenVINO GenAI's GGUF reader makes of it (once, "
                                  "into the model cache): the same weights in ~90 MB less memory, and a faster load")
    release_weight_pages: bool = _opt(True, "give back the IR weights file's pages once the CPU plugin has repacked "
                                            "the weights into memory of its own (-70 MB RSS for the default model), and after each answer")
    config: dict = _opt({}, "extra OpenVINO properties, e.g. {CACHE_DIR = \"...\"}")
    npu_max_prompt_len: int = _opt(1024, "NPU only: longest prompt the statically shaped model is compiled for",
                                   minimum=64, maximum=131072)
    npu_min_response_len: int = _opt(128, "NPU only: tokens reserved for the answer when compiling", minimum=1, maximum=8192)


@dataclass
class OnnxRuntimeSettings:
    prefix_reuse: bool = _opt(True, "keep the generator and rewind it to the prefix a new prompt shares with the last one")
    max_length: int = _opt(4096, "most tokens (prompt + generated) one generator holds", minimum=64, maximum=131072)
    config: dict = _opt({}, "extra execution-provider options, e.g. {device_id = \"0\"}")


@dataclass
class TransformersSettings:
    prefix_reuse: bool = _opt(True, "crop and reuse the KV cache of the prefix a new prompt shares with the last one")


@dataclass
class NpuLibrarySettings:
    python: str = _opt("", "Python interpreter of an environment with intel-npu-acceleration-library; \"\" = this one")


@dataclass
class RemoteSettings:
    """The `remote` engine's server: an OpenAI-compatible one a team runs (docs/TEAM.md)."""

    url: str = _opt("", "the server's OpenAI base URL, e.g. http://team-llm:8080/v1 (llama.cpp, vLLM, Ollama) or "
                        "http://host:8000/v3 (OpenVINO Model Server); /v1 is added when the path has no version")
    model: str = _opt("", "the served model's name sent with each request; \"\" = the first the server lists")
    api_key_env: str = _opt("", "name of the environment variable holding the server's API key (sent as a bearer "
                                "token); \"\" = no key. The key itself is never a setting and never logged")
    connect_timeout_s: float = _opt(2.0, "longest wait to connect; then the next slot serves", minimum=0.1, maximum=120.0)
    timeout_s: float = _opt(5.0, "longest wait for the first token and between tokens; then the next slot serves",
                            minimum=0.2, maximum=600.0)
    retries: int = _opt(1, "times a request that failed before its first token in a way another try may cure "
                           "(refused or dropped connection, HTTP 429/502/503/504) is sent again", minimum=0, maximum=5)


@dataclass
class CompletionSettings:
    enabled: bool = _opt(True, "answer inline completion and completion requests")
    max_tokens: int = _opt(64, "most tokens generated for one suggestion", minimum=1, maximum=2048)
    max_lines: int = _opt(8, "most lines in one suggestion", minimum=1, maximum=200)
    temperature: float = _opt(0.0, "0 = greedy (deterministic); higher samples", minimum=0.0, maximum=2.0)
    context_tokens: int = _opt(1536, "prompt budget: tokens of code before the cursor", minimum=32, maximum=131072)
    warm_on_open: bool = _opt(True, "when a document is opened and the model is idle, compute its first window's KV "
                                    "cache, so the first suggestion there skips the cold prefill")
    warm_at_cursor: bool = _opt(True, "when the client says where the cursor rests (aipc/warm: a document brought to "
                                      "the front, the cursor moved) and the model is idle, compute the window there")
    fim: str = _opt("auto", "fill-in-the-middle prompt: auto = the model's own FIM tokens when its tokenizer has them "
                            "(else the code before the cursor only); off; or force a template",
                    choices=FIM_CHOICES)
    suffix_tokens: int = _opt(256, "FIM: most tokens of code after the cursor in the prompt (taken from "
                                   "context_tokens)", minimum=0, maximum=131072)
    other_files: bool = _opt(True, "add snippets of the user's other open and recently edited or visited files to "
                                   "the prompt (the model's repo-level format, or comments)")
    other_files_tokens: int = _opt(512, "most tokens of snippets from other files (taken from context_tokens)",
                                   minimum=0, maximum=131072)


@dataclass
class SchedulerSettings:
    stall_timeout_s: float = _opt(20.0, "a slot that produces no token for this long is unhealthy; its job moves on",
                                  minimum=0.5, maximum=3600.0)
    retry_interval_s: float = _opt(60.0, "longest wait between background retries of an unhealthy slot",
                                   minimum=0.1, maximum=86400.0)
    chat_chunk_tokens: int = _opt(32, "chat generates in chunks of this many tokens so completions can cut in",
                                  minimum=1, maximum=4096)
    engine_process: bool = _opt(True, "run each slot's engine in a worker process (the server stays responsive "
                                      "while it computes; a hung engine can be killed)")


@dataclass
class ChatSettings:
    max_tokens: int = _opt(384, "most tokens in one chat answer", minimum=1, maximum=8192)
    temperature: float = _opt(0.0, "0 = greedy (deterministic); higher samples", minimum=0.0, maximum=2.0)
    context_tokens: int = _opt(2048, "prompt budget: selection, instruction and history; older turns are dropped first",
                               minimum=128, maximum=131072)
    history_turns: int = _opt(8, "most earlier question/answer pairs kept per document", minimum=0, maximum=100)


@dataclass
class SlotSettings:
    """One device slot: an engine instance with its own model, device and worker thread."""

    name: str = _opt("", "name in logs and aipc/status; \"\" = engine-device")
    engine: str = _opt("openvino", "inference engine", choices=ENGINE_NAMES)
    device: str = _opt("CPU", "device for the engine", upper=True)
    model: str = _opt("", "model for this slot; \"\" = the top-level model")
    precision: str = _opt("", "weights precision where the engine chooses at load; \"\" = the top-level precision", choices=PRECISIONS)
    threads: int = _opt(0, "CPU inference threads; 0 = the engine's choice", minimum=0, maximum=1024)

    def label(self) -> str:
        return self.name or f"{self.engine}-{self.device.lower()}"


@dataclass
class Settings:
    model: str = _opt("default", "\"default\" (Qwen2.5-Coder-0.5B-Instruct), a name `aipc-lsp models list` shows, "
                                 "or a path to a .gguf file / model folder")
    engine: str = _opt("openvino", "inference engine", choices=ENGINE_NAMES)
    device: str = _opt("CPU", "device for the engine: CPU, GPU, GPU.0, NPU, AUTO (openvino); CPU, GPU, CUDA, DML (onnxruntime); CPU, XPU, CUDA (transformers); NPU (npu_library)", upper=True)
    precision: str = _opt("", "weights precision where the engine chooses at load (transformers fp32/bf16/fp16, npu_library int4/int8/fp16); \"\" = the engine's default", choices=PRECISIONS)
    threads: int = _opt(0, "CPU inference threads; 0 = the engine's choice", minimum=0, maximum=1024)
    log_level: str = _opt("info", "server log verbosity", choices=LOG_LEVELS)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    openvino: OpenVINOSettings = field(default_factory=OpenVINOSettings)
    onnxruntime: OnnxRuntimeSettings = field(default_factory=OnnxRuntimeSettings)
    transformers: TransformersSettings = field(default_factory=TransformersSettings)
    npu_library: NpuLibrarySettings = field(default_factory=NpuLibrarySettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    slots: list = field(default_factory=list, metadata={
        "doc": "device slots in order of preference; empty = one slot from engine/device/model above",
        "item": SlotSettings})

    def slot_list(self) -> list[SlotSettings]:
        """The slots to run: the configured ones, or one made of the top-level settings."""
        if not self.slots:
            return [SlotSettings(engine=self.engine, device=self.device.upper(), model=self.model,
                                 precision=self.precision, threads=self.threads)]
        return [dataclasses.replace(s, model=s.model or self.model, device=s.device.upper(),
                                    precision=s.precision or self.precision) for s in self.slots]

    def model_key(self) -> str:
        """What the loaded models depend on: a change here means reloading them. Everything
        but the settings read per request (completion, log level)."""
        not_loaded = ("completion", "chat", "log_level",
                      "model", "engine", "device", "precision", "threads")  # slots carry these five
        loaded = {k: v for k, v in dataclasses.asdict(self).items() if k not in not_loaded}
        loaded["slots"] = [dataclasses.asdict(s) for s in self.slot_list()]
        return json.dumps(loaded, sort_keys=True, default=str)


@dataclass(frozen=True)
class Problem:
    source: str  # "path/settings.toml:12", "initializationOptions", "workspace/configuration"
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    if base:
        return Path(base) / "aipc-lsp" / "settings.toml"
    return Path(platformdirs.user_config_dir("aipc-lsp", appauthor=False)) / "settings.toml"


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def _check_value(f: dataclasses.Field, value: Any) -> tuple[Any, str | None]:
    kind = f.type if isinstance(f.type, type) else {"bool": bool, "int": int, "float": float, "str": str, "dict": dict}[f.type]
    meta = f.metadata
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        return None, f"expected {_TYPE_NAMES[kind]}, got {value!r}"
    if meta.get("choices") and (value.lower() if isinstance(value, str) else value) not in meta["choices"]:
        return None, f"{value!r} is not one of {', '.join(meta['choices'])}"
    if meta.get("min") is not None and value < meta["min"]:
        return None, f"{value!r} is below the minimum {meta['min']}"
    if meta.get("max") is not None and value > meta["max"]:
        return None, f"{value!r} is above the maximum {meta['max']}"
    if isinstance(value, str) and meta.get("choices"):
        value = value.lower()
    if isinstance(value, str) and meta.get("upper"):
        value = value.upper()
    return value, None


def validate(raw: Any, source: str, *, text: str | None = None, cls=Settings,
             prefix: str = "", written_prefix: str = "") -> tuple[dict, list[Problem]]:
    """Check one layer. Returns the valid part (nested dicts) and the problems found.
    `prefix` is the dotted snake_case path, `written_prefix` the path as the user wrote it
    (camelCase perhaps), which is what the TOML text must be searched for."""
    problems: list[Problem] = []
    if raw is None:
        return {}, problems
    if not isinstance(raw, dict):
        where = _where(source, text, written_prefix.rstrip("."))
        return {}, [Problem(where, prefix.rstrip("."), f"expected a table of settings, got {raw!r}")]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    clean: dict = {}
    for key, value in raw.items():
        name = _snake(str(key))
        dotted = prefix + name
        where = _where(source, text, written_prefix + str(key))
        f = fields.get(name)
        if f is None:
            hint = RENAMED.get(dotted)
            problems.append(Problem(where, dotted, f"renamed: {hint}" if hint else
                                    f"unknown setting (known: {', '.join(fields)})"))
            continue
        if _is_section(f):
            sub, sub_problems = validate(value, source, text=text, cls=f.default_factory,
                                         prefix=dotted + ".", written_prefix=f"{written_prefix}{key}.")
            clean[name] = sub
            problems.extend(sub_problems)
            continue
        if f.metadata.get("item"):
            if not isinstance(value, list):
                problems.append(Problem(where, dotted, f"expected a list of tables ([[{dotted}]]), got {value!r}"))
                continue
            items = []
            for index, entry in enumerate(value):
                sub, sub_problems = validate(entry, source, text=text, cls=f.metadata["item"],
                                             prefix=f"{dotted}[{index}].", written_prefix=f"{written_prefix}{key}[{index}].")
                problems.extend(sub_problems)
                if isinstance(entry, dict):
                    items.append(sub)
            clean[name] = items
            continue
        checked, error = _check_value(f, value)
        if error:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            problems.append(Problem(where, dotted, f"{error}; ignored (the default {default!r} or an earlier layer's value applies)"))
        else:
            clean[name] = checked
    return clean, problems


def _is_section(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)


def _where(source: str, text: str | None, dotted: str) -> str:
    if text is None:
        return source
    line = find_key_line(text, dotted)
    return f"{source}:{line}" if line else source


def find_key_line(text: str, dotted: str) -> int | None:
    """1-based line of `a.b.key = ...` in TOML text (tables or dotted keys), best effort."""
    *tables, key = dotted.split(".")
    table = ".".join(tables)
    current = ""
    key_pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    dotted_pattern = re.compile(rf"^\s*{re.escape(dotted)}\s*=")
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        array = re.match(r"^\s*\[\[\s*([^\]]+?)\s*\]\]", line)
        if array:  # [[slots]]: the n-th one is "slots[n]"
            name = array.group(1)
            current = f"{name}[{seen.get(name, 0)}]"
            seen[name] = seen.get(name, 0) + 1
            if current == table and key == "":
                return number
            continue
        header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header.group(1)
            continue
        if current == table and key_pattern.match(line):
            return number
        if current == "" and dotted_pattern.match(line):
            return number
    return None


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "config":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build(layers: list[dict]) -> Settings:
    merged: dict = {}
    for layer in layers:
        merged = merge(merged, layer)
    return _instantiate(Settings, merged)


def _instantiate(cls, values: dict):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        if _is_section(f):
            kwargs[f.name] = _instantiate(f.default_factory, values[f.name])
        elif f.metadata.get("item"):
            kwargs[f.name] = [_instantiate(f.metadata["item"], item) for item in values[f.name]]
        else:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def load_file(path: Path) -> tuple[dict, list[Problem]]:
    """Read a settings.toml. A missing file is no problem; a broken one is reported whole."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        return {}, [Problem(str(path), "", f"cannot read: {exc}; using defaults")]
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        where = f"{path}:{line}" if line else str(path)
        return {}, [Problem(where, "", f"invalid TOML ({exc}); ignoring this file, using defaults")]
    return validate(raw, str(path), text=text)


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


@dataclass
class SettingsLayers:
    """The layers kept apart so a later one can be replaced (e.g. on didChangeConfiguration)."""

    file: dict = field(default_factory=dict)
    init_options: dict = field(default_factory=dict)
    workspace: dict = field(default_factory=dict)

    def settings(self) -> Settings:
        return build([self.file, self.init_options, self.workspace])
