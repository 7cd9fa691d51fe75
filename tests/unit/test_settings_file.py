"""settings.toml at the repository root documents every option with its real default."""

import dataclasses
import tomllib
from pathlib import Path

from aipc_lsp.config import Settings, build, validate

SETTINGS_TOML = Path(__file__).resolve().parents[2] / "settings.toml"


def _flatten_settings(value, prefix=""):
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            out.update(_flatten_settings(getattr(value, f.name), f"{prefix}{f.name}."))
        return out
    return {prefix.rstrip("."): value}


def _flatten_toml(table, prefix=""):
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and key != "config":  # `config` is a free-form table
            out.update(_flatten_toml(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_settings_toml_lists_every_option_with_its_default():
    documented = tomllib.loads(SETTINGS_TOML.read_text(encoding="utf-8"))
    clean, problems = validate(documented, str(SETTINGS_TOML))
    assert problems == []
    defaults = _flatten_settings(Settings())
    assert set(_flatten_toml(documented)) == set(defaults)
    assert _flatten_settings(build([clean])) == defaults
