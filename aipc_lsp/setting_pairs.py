"""`--set key=value` on a command line (`aipc-lsp bench`, `aipc-lsp eval`): settings for the
server they start, as nested initializationOptions, checked as the server checks them."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from aipc_lsp.config import Settings, validate

# Settings of no section (`engine=remote` compares a local configuration with the team server's).
TOP_LEVEL = frozenset(name for name, value in vars(Settings()).items() if isinstance(value, (str, int, float)))


def parse_sets(pairs: list[str]) -> dict:
    """`completion.suffix_tokens=64`, a top-level setting (`engine=remote`), or a completion setting
    without its section (`fim=off`).
    Values are read as TOML (64, true, "x"), else as text. Raises ValueError saying what is wrong."""
    options: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        path = key.strip().split(".")
        path = ["completion", *path] if len(path) == 1 and path[0] not in TOP_LEVEL else path
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        node = options
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {pair!r}: {'.'.join(path[:-1])} is not a section")
        node[path[-1]] = value
    _, problems = validate(options, "--set")
    if problems:
        # The server would carry on without a bad value; a benchmark asked for it must not.
        raise ValueError("\n".join(f"{p.source}: {p.key}: {p.message.split('; ignored')[0]}" for p in problems))
    return options
