"""Tests for aipc_lsp.config: defaults, the TOML file, validation problems, layers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aipc_lsp import config
from aipc_lsp.config import (
    Problem,
    Settings,
    SettingsLayers,
    build,
    default_config_path,
    find_key_line,
    load_file,
    validate,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def by_key(problems: list[Problem]) -> dict[str, Problem]:
    out = {p.key: p for p in problems}
    assert len(out) == len(problems), problems
    return out


# --- defaults --------------------------------------------------------------------------------


def test_defaults():
    s = Settings()
    assert (s.model, s.engine, s.device, s.threads, s.log_level) == ("default", "openvino", "CPU", 0, "info")
    c = s.completion
    assert (c.enabled, c.max_tokens, c.max_lines, c.temperature, c.context_tokens) == (True, 64, 8, 0.0, 1536)
    assert (s.openvino.kv_cache_tokens, s.openvino.prefix_caching, s.openvino.config) == (3072, True, {})
    assert build([]) == s
    assert SettingsLayers().settings() == s


def test_defaults_are_not_shared_between_instances():
    a, b = Settings(), Settings()
    a.openvino.config["CACHE_DIR"] = "/tmp/x"
    assert b.openvino.config == {}


def test_every_default_passes_its_own_validation():
    def walk(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, prefix + f.name + ".")
            else:
                yield prefix + f.name, value

    for dotted, value in walk(Settings()):
        *sections, name = dotted.split(".")
        raw: dict = {name: value}
        for section in reversed(sections):
            raw = {section: raw}
        clean, problems = validate(raw, "defaults")
        assert problems == [], dotted


# --- the TOML file -----------------------------------------------------------------------------

VALID_TOML = """\
# aipc-lsp settings
model = "/models/qwen2.5-coder-0.5b-ov"
device = "GPU.0"
threads = 4
log_level = "DEBUG"

[completion]
max_tokens = 32
max_lines = 4
temperature = 1     # an integer is fine for a float
context_tokens = 2048.0  # and an integral float for an integer

[openvino]
kv_cache_tokens = 8192
prefix_caching = false

[openvino.config]
CACHE_DIR = "/tmp/ov-cache"
"""


def test_valid_toml_file(tmp_path):
    clean, problems = load_file(write(tmp_path, VALID_TOML))
    assert problems == []
    s = build([clean])
    assert s.model == "/models/qwen2.5-coder-0.5b-ov"
    assert s.device == "GPU.0" and s.threads == 4 and s.log_level == "debug"
    assert (s.completion.max_tokens, s.completion.max_lines) == (32, 4)
    assert s.completion.temperature == 1.0 and isinstance(s.completion.temperature, float)
    assert s.completion.context_tokens == 2048 and isinstance(s.completion.context_tokens, int)
    assert s.completion.enabled is True  # untouched: default
    assert (s.openvino.kv_cache_tokens, s.openvino.prefix_caching) == (8192, False)
    assert s.openvino.config == {"CACHE_DIR": "/tmp/ov-cache"}


def test_missing_file_is_no_problem(tmp_path):
    assert load_file(tmp_path / "nope" / "settings.toml") == ({}, [])


def test_unreadable_file_is_one_problem(tmp_path):
    clean, problems = load_file(tmp_path)  # a directory
    assert clean == {} and len(problems) == 1
    assert problems[0].source == str(tmp_path) and "cannot read" in problems[0].message


def test_invalid_toml_is_one_problem_with_the_line(tmp_path):
    path = write(tmp_path, 'device = "GPU"\n\n[completion]\nmax_tokens = 3x\nmax_lines = 2\n')
    clean, problems = load_file(path)
    assert clean == {}  # the whole file is ignored
    assert len(problems) == 1
    (problem,) = problems
    assert problem.source == f"{path}:4"
    assert problem.key == ""
    assert "invalid TOML" in problem.message
    assert str(problem).startswith(f"{path}:4: invalid TOML")


def test_invalid_toml_unterminated_string_line(tmp_path):
    path = write(tmp_path, 'model = "default"\ndevice = "GPU\n')
    (problem,) = load_file(path)[1]
    assert problem.source == f"{path}:2"


BAD_TOML = """\
model = "default"
device = 5
threads = -1
log_level = "loud"
colour = "red"
engine = "OpenVINO"

[completion]
max_tokens = 0
max_lines = 4
temperature = 2.5
bogus = 1
enabled = "yes"

[openvino]
kv_cache_tokens = 8192
prefix_caching = 1
"""


def test_bad_values_are_reported_with_file_line_and_dotted_key(tmp_path):
    path = write(tmp_path, BAD_TOML)
    clean, problems = load_file(path)
    found = by_key(problems)
    expected_lines = {
        "device": 2,  # wrong type
        "threads": 3,  # out of range
        "log_level": 4,  # bad choice
        "colour": 5,  # unknown key
        "completion.max_tokens": 9,  # out of range (nested)
        "completion.temperature": 11,  # above maximum
        "completion.bogus": 12,  # unknown nested key
        "completion.enabled": 13,  # str for bool
        "openvino.prefix_caching": 17,  # int for bool
    }
    assert set(found) == set(expected_lines)
    for key, line in expected_lines.items():
        assert found[key].source == f"{path}:{line}", key
        assert str(found[key]).startswith(f"{path}:{line}: {key}: ")

    assert "expected a string" in found["device"].message
    assert "below the minimum 0" in found["threads"].message
    assert "not one of error, warning, info, debug" in found["log_level"].message
    assert "unknown setting" in found["colour"].message and "log_level" in found["colour"].message
    assert "above the maximum 2.0" in found["completion.temperature"].message
    assert "expected true or false" in found["openvino.prefix_caching"].message
    assert "ignored" in found["completion.max_tokens"].message

    # Everything valid still applies.
    assert clean == {
        "model": "default",
        "engine": "openvino",
        "completion": {"max_lines": 4},
        "openvino": {"kv_cache_tokens": 8192},
    }
    s = build([clean])
    assert s.completion.max_lines == 4 and s.openvino.kv_cache_tokens == 8192
    assert s.completion.max_tokens == 64 and s.device == "CPU"  # defaults where invalid


def test_dotted_keys_at_top_level_get_their_line(tmp_path):
    path = write(tmp_path, 'model = "default"\ncompletion.max_tokens = 0\nopenvino.prefix_caching = "yes"\n')
    found = by_key(load_file(path)[1])
    assert found["completion.max_tokens"].source == f"{path}:2"
    assert found["openvino.prefix_caching"].source == f"{path}:3"


@pytest.mark.parametrize("key, value, ok", [
    ("max_tokens", 1, True), ("max_tokens", 2048, True), ("max_tokens", 2049, False),
    ("max_tokens", True, False), ("max_tokens", 8.5, False), ("max_tokens", "64", False),
    ("temperature", 0, True), ("temperature", 2.0, True), ("temperature", -0.1, False),
    ("context_tokens", 31, False), ("context_tokens", 32, True),
    ("enabled", False, True), ("enabled", 0, False),
])
def test_type_and_range_checks(key, value, ok):
    clean, problems = validate({"completion": {key: value}}, "workspace/configuration")
    assert (problems == []) is ok
    assert (key in clean["completion"]) is ok
    if not ok:
        assert problems[0].key == f"completion.{key}"
        assert problems[0].source == "workspace/configuration"


def test_non_table_layers():
    assert validate(None, "initializationOptions") == ({}, [])
    clean, problems = validate(["device", "GPU"], "initializationOptions")
    assert clean == {} and len(problems) == 1 and problems[0].source == "initializationOptions"
    clean, problems = validate({"completion": 5}, "initializationOptions")
    assert problems[0].key == "completion" and "expected a table" in problems[0].message
    assert build([clean]).completion == Settings().completion


# --- camelCase (LSP clients) -----------------------------------------------------------------


def test_camel_case_keys_from_initialization_options():
    raw = {
        "logLevel": "DEBUG",
        "engine": "OpenVINO",
        "completion": {"maxTokens": 32, "maxLines": 2, "contextTokens": 4096},
        "openvino": {"kvCacheTokens": 16384, "prefixCaching": False},
    }
    clean, problems = validate(raw, "initializationOptions")
    assert problems == []
    assert clean == {
        "log_level": "debug",
        "engine": "openvino",
        "completion": {"max_tokens": 32, "max_lines": 2, "context_tokens": 4096},
        "openvino": {"kv_cache_tokens": 16384, "prefix_caching": False},
    }


def test_camel_case_problem_names_the_snake_case_dotted_key():
    _, problems = validate({"completion": {"maxTokens": 0, "noSuchThing": 1}}, "initializationOptions")
    found = by_key(problems)
    assert set(found) == {"completion.max_tokens", "completion.no_such_thing"}
    assert all(p.source == "initializationOptions" for p in problems)


def test_problem_str():
    assert str(Problem("a.toml:3", "completion.max_tokens", "bad")) == "a.toml:3: completion.max_tokens: bad"
    assert str(Problem("a.toml:1", "", "invalid TOML")) == "a.toml:1: invalid TOML"


# --- layers -------------------------------------------------------------------------------------


def test_layer_precedence_file_init_workspace(tmp_path):
    file_layer, _ = load_file(write(tmp_path, (
        'device = "GPU"\nthreads = 2\n[completion]\nmax_tokens = 10\nmax_lines = 3\n'
        '[openvino.config]\nCACHE_DIR = "/a"\n')))
    init_layer, _ = validate({"threads": 6, "completion": {"maxTokens": 20}}, "initializationOptions")
    workspace_layer, _ = validate({"completion": {"maxTokens": 30}}, "workspace/configuration")

    layers = SettingsLayers(file=file_layer, init_options=init_layer, workspace=workspace_layer)
    s = layers.settings()
    assert s.completion.max_tokens == 30  # workspace wins
    assert s.threads == 6  # init beats file
    assert s.device == "GPU" and s.completion.max_lines == 3  # file beats defaults; sections merge
    assert s.completion.temperature == 0.0  # default

    layers.workspace = {}  # e.g. didChangeConfiguration with nothing set
    assert layers.settings().completion.max_tokens == 20
    layers.init_options = {}
    assert layers.settings().completion.max_tokens == 10
    assert layers.settings().openvino.config == {"CACHE_DIR": "/a"}


def test_invalid_value_falls_back_to_the_layer_below(tmp_path):
    file_layer, _ = load_file(write(tmp_path, "[completion]\nmax_tokens = 100\n"))
    workspace_layer, problems = validate({"completion": {"maxTokens": "lots"}}, "workspace/configuration")
    assert len(problems) == 1
    assert SettingsLayers(file=file_layer, workspace=workspace_layer).settings().completion.max_tokens == 100


def test_openvino_config_table_is_replaced_not_merged():
    s = build([{"openvino": {"config": {"A": "1", "B": "2"}}}, {"openvino": {"config": {"B": "3"}}}])
    assert s.openvino.config == {"B": "3"}


def test_merge_does_not_mutate_layers():
    base = {"completion": {"max_tokens": 1}}
    update = {"completion": {"max_lines": 2}}
    merged = config.merge(base, update)
    assert merged == {"completion": {"max_tokens": 1, "max_lines": 2}}
    assert base == {"completion": {"max_tokens": 1}} and update == {"completion": {"max_lines": 2}}


# --- model_key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, reloads", [
    ({"completion": {"max_tokens": 10}}, False),
    ({"completion": {"temperature": 0.7, "max_lines": 2, "enabled": False}}, False),
    ({"completion": {"context_tokens": 4096}}, False),
    ({"log_level": "debug"}, False),
    ({"device": "cpu"}, False),  # same device, other case
    ({"model": "/models/other.gguf"}, True),
    ({"device": "GPU"}, True),
    ({"threads": 8}, True),
    ({"openvino": {"kv_cache_tokens": 16384}}, True),
    ({"openvino": {"prefix_caching": False}}, True),
    ({"openvino": {"config": {"CACHE_DIR": "/tmp/ov"}}}, True),
])
def test_model_key_changes_only_for_model_settings(change, reloads):
    before = build([]).model_key()
    after = build([change]).model_key()
    assert (before != after) is reloads


def test_model_key_ignores_config_order():
    a = build([{"openvino": {"config": {"A": "1", "B": "2"}}}]).model_key()
    b = build([{"openvino": {"config": {"B": "2", "A": "1"}}}]).model_key()
    assert a == b


# --- where the file lives ------------------------------------------------------------------------


def test_default_config_path_honours_xdg_config_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_config_path() == tmp_path / "aipc-lsp" / "settings.toml"


def test_default_config_path_without_xdg(monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    path = default_config_path()
    assert path.name == "settings.toml" and path.parent.name == "aipc-lsp"


def test_find_key_line():
    text = '# c\nmodel = "x"\n[completion]\nmax_tokens = 3\n[openvino]\nconfig = {}\nmax_tokens = 1\n'
    assert find_key_line(text, "model") == 2
    assert find_key_line(text, "completion.max_tokens") == 4
    assert find_key_line(text, "openvino.config") == 6
    assert find_key_line(text, "completion.max_lines") is None


# --- found in review (fixed) ----------------------------------------------------------------------------------------


def test_section_given_a_scalar_names_its_line(tmp_path):
    path = write(tmp_path, 'model = "default"\ncompletion = 5\n')
    (problem,) = load_file(path)[1]
    assert problem.key == "completion"
    assert problem.source == f"{path}:2"


def test_camel_case_key_in_toml_names_its_line(tmp_path):
    path = write(tmp_path, "[completion]\nmaxTokens = 0\n")
    (problem,) = load_file(path)[1]
    assert problem.key == "completion.max_tokens"
    assert problem.source == f"{path}:2"


def test_a_renamed_setting_says_what_to_write_instead():
    clean, problems = validate({"openvino": {"kvCacheMb": 256}}, "initializationOptions")
    assert clean == {"openvino": {}}
    assert [p.key for p in problems] == ["openvino.kv_cache_mb"]
    assert "renamed: use openvino.kv_cache_tokens" in problems[0].message


def test_a_layer_with_many_problems_keeps_every_valid_value_and_names_every_problem():
    # The converter stops at the first problem of a section: each is named, taken out, and the rest read again.
    clean, problems = validate({"completion": {"maxTokens": "many", "maxLines": 0, "fim": "off", "x": 1},
                                "chat": {"historyTurns": 3}, "colour": "red"}, "initializationOptions")
    assert sorted(p.key for p in problems) == ["colour", "completion.max_lines", "completion.max_tokens", "completion.x"]
    assert clean == {"completion": {"fim": "off"}, "chat": {"history_turns": 3}}
    assert validate(clean, "initializationOptions") == (clean, [])  # what it keeps reads back unchanged
