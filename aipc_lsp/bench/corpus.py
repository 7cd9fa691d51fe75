"""The text the benchmarks feed the model: the same prompts for every engine and path."""

from __future__ import annotations

from pathlib import Path

# ~9 tokens, like the guides' short prompts.
SHORT = "def fibonacci(n):\n    "
# A document a code model keeps extending line by line at the cursor's indentation for 200+
# tokens (a table it knows: the HTTP status codes), so the server's post-processing does not end
# the suggestion (a less indented line does): long generations for decode rate and cancel
# latency. The cursor is after the indent. (Until issue 19 a colour table: the Qwen coder models
# close that one after two entries.)
LONG_DOC = ('HTTP_STATUS = {\n    100: "Continue",\n    101: "Switching Protocols",\n    200: "OK",\n'
            '    201: "Created",\n    ')
# What a prefix-only prompt of it is: the server holds a trailing space back (token healing).
LONG_PROMPT = LONG_DOC[:-1]
# The server's decode rate is compared with the bare engine's on the very same prompts: with
# prompt lookup the rate depends on what the model writes, so not on a random first line.
DECODE_RUNS = 3
# The server's decode and the bare engine's take turns this many times: the ratio is taken per
# round, between runs a few seconds apart, so a drift of the shared host cancels out.
DECODE_ROUNDS = 3
# Characters typed, one keystroke each, in the typing benchmarks: the code that really follows.
TYPED_CHARS = 64
# Most characters of the code after the cursor kept in a typing document (~3k tokens: more than
# any suffix budget the server is likely to be given).
SUFFIX_CHARS = 12000


def decode_document(run: int, round_: int = 0) -> str:
    """A decode prompt; each round's first line is new, so no answer cached in an earlier round serves."""
    return f"# decode run {run}{f'.{round_}' if round_ else ''}\n{LONG_DOC}"


def corpus_text() -> str:
    """Real Python code long enough for 2k-token prompts: this package's own sources."""
    root = Path(__file__).resolve().parent.parent
    parts = [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")) if "bench" not in p.parts]
    return "\n\n".join(parts)


def typing_parts(text: str, prefix_chars: int) -> tuple[str, str, str]:
    """A cursor in the middle of a real file, as when editing: (the code before the cursor, what
    the user types there, the code after it). The typed characters are the code that really
    follows; the code after the cursor starts at the end of the line where they end, so the user
    writes new lines between existing ones. A cursor at a line's start moves past blank lines
    and the indentation of the next line of code: an editor indents a new line itself, so what a
    user types is code, and from the second keystroke on the cursor is in a started line (where
    the FIM prompt's order decides what a keystroke costs: `completion.fim_order`)."""
    if prefix_chars == 0 or text[prefix_chars - 1:prefix_chars] == "\n":
        while prefix_chars < len(text) and text[prefix_chars] in " \t\n":
            prefix_chars += 1
    prefix = text[:prefix_chars]
    typed = text[prefix_chars:prefix_chars + TYPED_CHARS]
    line_end = text.find("\n", prefix_chars + TYPED_CHARS)
    suffix = text[line_end:line_end + SUFFIX_CHARS] if line_end >= 0 else ""
    return prefix, typed, suffix
