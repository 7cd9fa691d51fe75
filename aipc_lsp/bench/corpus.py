"""The text the benchmarks feed the model: the same prompts for every engine and path."""

from __future__ import annotations

from pathlib import Path

# ~9 tokens, like the guides' short prompts.
SHORT = "def fibonacci(n):\n    "
# A document the default model keeps extending for 200+ tokens (lists it closes at once):
# long generations for decode rate and cancel latency. The cursor is after the indent.
LONG_DOC = 'COLORS = {\n    "red": "#ff0000",\n    "green": "#00ff00",\n    "blue": "#0000ff",\n    '
# What the engine sees for it: the server holds the trailing space back (token healing).
LONG_PROMPT = LONG_DOC[:-1]
# The server's decode rate is compared with the bare engine's on the very same prompts: with
# prompt lookup the rate depends on what the model writes, so not on a random first line.
DECODE_RUNS = 3
# The server's decode and the bare engine's take turns this many times: the ratio is taken per
# round, between runs a few seconds apart, so a drift of the shared host cancels out.
DECODE_ROUNDS = 3


def decode_document(run: int, round_: int = 0) -> str:
    """A decode prompt; each round's first line is new, so no answer cached in an earlier round serves."""
    return f"# decode run {run}{f'.{round_}' if round_ else ''}\n{LONG_DOC}"


def corpus_text() -> str:
    """Real Python code long enough for 2k-token prompts: this package's own sources."""
    root = Path(__file__).resolve().parent.parent
    parts = [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")) if "bench" not in p.parts]
    return "\n\n".join(parts)
