"""Settings: defaults < settings.toml < initializationOptions < workspace/configuration.

Every layer is validated on its own so a problem names where it came from (file and line,
or the LSP message) and the key; a bad value falls back to the value of the layers below,
and the server carries on. A layer is read by a cattrs converter over the dataclasses below
(their metadata: choices and limits), whose section hook takes camelCase keys (LSP clients) as
well as snake_case ones (TOML).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import cattrs
import platformdirs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override

from aipc_lsp.engines import ENGINE_NAMES, ENGINES, PRECISIONS  # the one table of engines and their precisions

LOG_LEVELS = ("error", "warning", "info", "debug")
# completion.fim: "auto", "off", or one template by name (aipc_lsp/fim.py).
FIM_CHOICES = ("auto", "off", "qwen", "starcoder", "deepseek", "codellama", "codegemma", "codestral")
FIM_ORDERS = ("auto", "psm", "psm-line", "spm")


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
    prompt_lookup_tokens: int = _opt(2, "prompt-lookup decoding: tokens copied from the prompt and checked in one "
                                        "step (code repeats itself); 0 = off", minimum=0, maximum=16)
    typing_checkpoint: bool = _opt(True, "once a suggestion is out, cache its prompt less the last token (in the "
                                         "idle moment), so the next keystroke prefills the 1-2 tokens it changed "
                                         "instead of up to a KV block; after a warm-up, it keeps the warm-up's "
                                         "prompt from being the first evicted")
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
    trust_remote_code: bool = _opt(False, "run the Python code a model folder ships (transformers' trust_remote_code), "
                                          "for models whose architecture transformers lacks; honoured only in the "
                                          "user's settings.toml, with a warning (docs/SECURITY.md)")


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
                                    "cache, so the first suggestion there skips the cold prefill (not with "
                                    "fim_order spm: its prompt begins with the code after a cursor not known yet)")
    warm_at_cursor: bool = _opt(True, "when the client says where the cursor rests (aipc/warm: a document brought to "
                                      "the front, the cursor moved) and the model is idle, compute the window there; "
                                      "and after a suggestion on a line of only indentation (fim_order psm-line), "
                                      "the prompt that typing code there extends")
    suggest_ahead: bool = _opt(True, "once the user pauses on a suggestion and the model is idle, compute the "
                                     "suggestion that follows it once accepted (as llama.vim does), so the next one "
                                     "shows at once after an accept; any other request stops it")
    fim: str = _opt("auto", "fill-in-the-middle prompt: auto = the model's own FIM tokens when its tokenizer has them "
                            "(else the code before the cursor only); off; or force a template",
                    choices=FIM_CHOICES)
    fim_order: str = _opt("spm", "FIM: the order of the prompt's parts: spm = the suffix first, the code before "
                                 "the cursor running into the answer: a keystroke or a new line prefills only what "
                                 "was typed, a cursor moved to another place the whole prompt; psm-line = "
                                 "prefix-suffix-middle with the cursor line's code after the middle marker: a "
                                 "keystroke prefills what was typed, a new line or a moved cursor the suffix; "
                                 "auto = the template's own (psm for all but Codestral); psm = prefix-suffix-middle: "
                                 "the suffix is prefilled again whenever the code before the cursor changes "
                                 "(docs/QUALITY.md)", choices=FIM_ORDERS)
    suffix_tokens: int = _opt(256, "FIM: most tokens of code after the cursor in the prompt (taken from "
                                   "context_tokens)", minimum=0, maximum=131072)
    suffix_to_definition_end: bool = _opt(True, "FIM: the code after the cursor in the prompt ends where the "
                                                "function or class holding the cursor ends (the next definition "
                                                "at its level); false: up to suffix_tokens of the rest of the file")
    other_files: bool = _opt(True, "add snippets of the user's other open and recently edited or visited files to "
                                   "the prompt (the model's repo-level format, or comments)")
    other_files_used_only: bool = _opt(True, "only snippets of files the code around the cursor uses (names two "
                                             "things they declare, one telling name such as parse_amount, or their "
                                             "module); false: every other file's, as llama.vim sends them")
    other_files_tokens: int = _opt(512, "most tokens of snippets from other files (taken from context_tokens)",
                                   minimum=0, maximum=131072)
    token_healing: bool = _opt(True, "when the cursor follows a word (\"self.a\"), end the prompt before its last "
                                     "token and have the model rewrite it, constrained to it: the model then picks "
                                     "the token it would have written there (\"allowance\"). Engines that cannot "
                                     "constrain decoding (all but OpenVINO) hold back only a last space")


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
        kind = ENGINES.get(self.engine)
        if not self.name and kind is not None and not kind.local_model:
            return self.engine  # a remote slot's device is the server's, not this setting's
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
    slots: list[SlotSettings] = field(default_factory=list, metadata={
        "doc": "device slots in order of preference; empty = one slot from engine/device/model above"})

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


# --- reading a layer: a cattrs converter over the dataclasses above -----------------------------


class _BadValue(ValueError):
    """A value a setting cannot take: the setting keeps the layers below's value."""


class _BadShape(ValueError):
    """A section or a list of sections given something else: dropped whole."""

    def __init__(self, expected: str, value: Any):
        super().__init__(expected)
        self.expected, self.value = expected, value


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
# A list entry found wrong in an earlier round: skipped, so the entries after it keep their index.
_DROPPED = object()


def _scalar(kind: type):
    def structure(value: Any, _type) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # TOML's 2048.0
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise _BadValue(f"expected {_TYPE_NAMES[kind]}, got {value!r}")
        return value
    return structure


def _checked(converter: cattrs.Converter, f: dataclasses.Field, type_: Any):
    """The field's type, then the limits its metadata sets (choices, minimum, maximum, case)."""
    meta, structure = f.metadata, converter.get_structure_hook(type_)

    def hook(value: Any, _type) -> Any:
        value = structure(value, type_)
        if meta.get("choices") and (value.lower() if isinstance(value, str) else value) not in meta["choices"]:
            raise _BadValue(f"{value!r} is not one of {', '.join(meta['choices'])}")
        if meta.get("min") is not None and value < meta["min"]:
            raise _BadValue(f"{value!r} is below the minimum {meta['min']}")
        if meta.get("max") is not None and value > meta["max"]:
            raise _BadValue(f"{value!r} is above the maximum {meta['max']}")
        if isinstance(value, str) and meta.get("choices"):
            value = value.lower()
        if isinstance(value, str) and meta.get("upper"):
            value = value.upper()
        return value
    return hook


def _section(converter: cattrs.Converter, cls: type):
    """A section: a table whose keys are written as LSP clients write them (camelCase) or as
    TOML does (snake_case); keys the section lacks are errors (ForbiddenExtraKeysError)."""
    hints = typing.get_type_hints(cls)
    structure = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **{
        f.name: override(struct_hook=_checked(converter, f, hints[f.name])) for f in dataclasses.fields(cls)
        if not dataclasses.is_dataclass(hints[f.name]) and typing.get_origin(hints[f.name]) is not list})

    def hook(value: Any, _type) -> Any:
        if not isinstance(value, dict):
            raise _BadShape("a table of settings", value)
        return structure({_snake(str(key)): item for key, item in value.items()}, cls)
    return hook


def _sections(converter: cattrs.Converter, list_type: Any):
    """A list of sections ([[slots]])."""
    item_type = typing.get_args(list_type)[0]

    def hook(value: Any, _type) -> list:
        if not isinstance(value, list):
            raise _BadShape("a list of tables", value)
        items, errors = [], []
        for index, entry in enumerate(value):
            if entry is _DROPPED:
                continue
            try:
                items.append(converter.structure(entry, item_type))
            except Exception as exc:
                exc.__notes__ = [*getattr(exc, "__notes__", []),
                                 IterableValidationNote(f"Structuring {list_type} @ index {index}", index, item_type)]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {list_type}", errors, list_type)
        return items
    return hook


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    for kind in _TYPE_NAMES:
        converter.register_structure_hook(kind, _scalar(kind))
    converter.register_structure_hook_factory(dataclasses.is_dataclass, lambda cls: _section(converter, cls))
    converter.register_structure_hook_factory(
        lambda t: typing.get_origin(t) is list and dataclasses.is_dataclass((typing.get_args(t) or (None,))[0]),
        lambda t: _sections(converter, t))
    return converter


_CONVERTER = _make_converter()


def validate(raw: Any, source: str, *, text: str | None = None) -> tuple[dict, list[Problem]]:
    """Check one layer. Returns the valid part (nested dicts, snake_case keys, values as the
    settings hold them) and the problems found. `text`: the TOML the layer was read from, to
    name each problem's line. The converter stops at the first wrong value of each section, so
    the wrong ones are reported and taken out, and the rest read again."""
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        return {}, [Problem(source, "", f"expected a table of settings, got {raw!r}")]
    layer = copy.deepcopy(raw)
    problems: list[Problem] = []
    while True:
        try:
            settings = _CONVERTER.structure(layer, Settings)
        except Exception as exc:  # noqa: BLE001 - every failure is a problem of the layer
            found = [_take_out(layer, path, error, source, text) for path, error in _failures(exc)]
            if not found:
                raise
            problems.extend(p for batch in found for p in batch)
            continue
        return _present(layer, settings), problems


def _failures(exc: BaseException, path: tuple = ()):
    """(path, error) of each failure cattrs collected: paths of attribute names and list indices."""
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _failures(sub, path + ((note.index,) if isinstance(note, IterableValidationNote) else (note.name,)))
        for sub in without:
            yield from _failures(sub, path)
    else:
        yield path, exc


def _take_out(layer: dict, path: tuple, error: BaseException, source: str, text: str | None) -> list[Problem]:
    """The problems `error` at `path` makes, its values taken out of `layer`."""
    if isinstance(error, ForbiddenExtraKeysError):
        known = ", ".join(f.name for f in dataclasses.fields(error.cl))
        return [_take_out_key(layer, (*path, name), source, text,
                              f"renamed: {RENAMED[dotted]}" if (dotted := _dotted((*path, name))) in RENAMED
                              else f"unknown setting (known: {known})")
                for name in sorted(error.extra_fields)]
    if isinstance(error, _BadShape):
        expected = (f"a list of tables ([[{_dotted(path)}]])" if error.expected == "a list of tables"
                    else error.expected)
        return [_take_out_key(layer, path, source, text, f"expected {expected}, got {error.value!r}")]
    f = _field_at(path)
    default = "" if f is None else f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return [_take_out_key(layer, path, source, text, f"{error}; ignored (the default {default!r} or an "
                                                     "earlier layer's value applies)")]


def _take_out_key(layer: dict, path: tuple, source: str, text: str | None, message: str) -> Problem:
    node, written = layer, ""
    for depth, step in enumerate(path):
        if isinstance(step, int):
            key, written = step, f"{written}[{step}]"
        else:  # the key as written: camelCase or snake_case
            key = [k for k in node if _snake(str(k)) == step][-1]
            written = f"{written}.{key}" if written else str(key)
        if depth < len(path) - 1:
            node = node[key]
    if isinstance(key, int):
        node[key] = _DROPPED
    else:
        del node[key]
    return Problem(_where(source, text, written), _dotted(path), message)


def _dotted(path: tuple) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(".")


def _field_at(path: tuple) -> dataclasses.Field | None:
    cls, found = Settings, None
    for step in path:
        if isinstance(step, int):
            continue  # cls is the list's item type already
        found = {f.name: f for f in dataclasses.fields(cls)}.get(step) if dataclasses.is_dataclass(cls) else None
        if found is None:
            return None
        hint = typing.get_type_hints(cls)[step]
        cls = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
    return found


def _present(layer: dict, read: Any) -> dict:
    """The keys the layer set (snake_case), with the values as `read` (its structured form) holds them."""
    out: dict = {}
    for key, given in layer.items():
        name = _snake(str(key))
        value = getattr(read, name)
        if dataclasses.is_dataclass(value):
            out[name] = _present(given, value)
        elif isinstance(value, list) and isinstance(given, list):
            out[name] = [_present(g, v) for g, v in zip([g for g in given if g is not _DROPPED], value)]
        else:
            out[name] = value
    return out


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
    """The settings of validated layers, a later one over the earlier ones."""
    merged: dict = {}
    for layer in layers:
        merged = merge(merged, layer)
    return _CONVERTER.structure(merged, Settings)


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
        return build([self.file, *(_without_file_only(layer) for layer in (self.init_options, self.workspace))])


# Settings only the user's settings file may set, never the editor's messages, which may carry a
# workspace's settings, written by whoever wrote its code; with why.
FILE_ONLY = {
    ("transformers", "trust_remote_code"): "it lets a model run code",
    # A workspace could send its code, or any environment variable as a "key", to a server of its choosing.
    ("remote", "url"): "it says where the code goes",
    ("remote", "api_key_env"): "it says which environment variable is sent",
}


def _without_file_only(layer: dict) -> dict:
    layer = dict(layer)
    for (section, key), why in FILE_ONLY.items():
        if isinstance(layer.get(section), dict) and key in layer[section]:
            layer[section] = {k: v for k, v in layer[section].items() if k != key}
            logging.getLogger(__name__).warning(
                "%s.%s is only read from settings.toml (%s); ignored where the editor sent it", section, key, why)
    return layer
