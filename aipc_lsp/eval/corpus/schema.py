"""Declared fields of a record and checking values against them."""

from dataclasses import dataclass

KINDS = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    required: bool = True
    default: object = None


def coerce(raw, kind):
    """Text from a file -> a value of `kind`; ValueError when it is not one."""
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"not a bool: {raw!r}")
        return lowered in ("true", "yes", "1")
    return KINDS[kind](raw.strip())


def missing_fields(record, fields):
    """Names of required fields the record has no non-empty value for."""
    return [f.name for f in fields if f.required and not str(record.get(f.name, "")).strip()]


def field_map(fields):
    return {f.name: f for f in fields}
