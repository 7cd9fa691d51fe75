"""The text the benchmarks feed the model: the same prompts for every engine and path."""

from __future__ import annotations

from pathlib import Path

# ~9 tokens, like the guides' short prompts.
SHORT = "def fibonacci(n):\n    "
# A list a small model keeps extending: long generations for decode rate and cancel latency.
PRIMES = "PRIMES = [\n    2,\n    3,\n    5,\n    7,\n    11,\n"


def corpus_text() -> str:
    """Real Python code long enough for 2k-token prompts: this package's own sources."""
    root = Path(__file__).resolve().parent.parent
    parts = [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")) if "bench" not in p.parts]
    return "\n\n".join(parts)
