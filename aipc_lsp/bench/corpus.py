"""The text the benchmarks feed the model: the same prompts for every engine and path."""

from __future__ import annotations

import re
from pathlib import Path

from aipc_lsp.snippets import indent_width, indentation

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
# Characters typed, one keystroke each, in the typing benchmarks: a line of the corpus's code.
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


def typing_parts(text: str, line_start: int) -> tuple[str, str, str]:
    """A cursor in the middle of a real file, as when editing: (the code before the cursor, what
    the user types there, the code after it). The user opens a new line between existing ones, at
    `line_start` (moved back to its line's start) or the first line after it whose block goes on
    for BLOCK_LINES_BELOW lines of code inside a definition (so a FIM prompt has code after the
    cursor to hold, as in the middle of a function), indented as the code after it. There they
    type a line of real code that is not the one that follows: the first line of code (not a
    comment) at that indentation half the corpus away. What the model predicted the server
    answers from its last suggestion (the bench's *keystroke* figures); this way each keystroke is
    one the model must answer anew, the one whose cost the FIM prompt decides. What is typed is
    code (the editor indented the line): from the second keystroke on the cursor is in a started
    line, where `completion.fim_order` matters."""
    line_start = text.rfind("\n", 0, line_start) + 1
    lines = text[line_start:].split("\n")
    at = next((i for i in range(len(lines)) if _block_goes_on(lines, i)), 0)
    start = line_start + sum(len(line) + 1 for line in lines[:at])
    indent = indentation(next((line for line in lines[at:] if line.strip()), ""))
    elsewhere = re.compile(rf"^{re.escape(indent)}([^\s#])", re.M)  # code, not a comment
    found = elsewhere.search(text, (start + len(text) // 2) % len(text)) or elsewhere.search(text)
    typed = text[found.start(1):found.start(1) + TYPED_CHARS] if found else ""
    return text[:start] + indent, typed, "\n" + text[start:start + SUFFIX_CHARS]


def typing_document(text: str, begin: int, line_start: int) -> tuple[str, str, str]:
    """typing_parts at `line_start`, the document beginning at `begin` (a line start before it)."""
    prefix, typed, suffix = typing_parts(text, line_start)
    return prefix[begin:], typed, suffix


# The typing document's cursor is in a block with at least this many lines of code after it.
BLOCK_LINES_BELOW = 8


def typing_line_starts(text: str) -> list[int]:
    """The line starts where typing_parts opens its new line as it is (no line further down)."""
    lines = text.split("\n")
    starts, offset = [], 0
    for index, line in enumerate(lines):
        if _block_goes_on(lines, index):
            starts.append(offset)
        offset += len(line) + 1
    return starts


def _block_goes_on(lines: list[str], at: int) -> bool:
    """Whether a new line before `lines[at]`, inside a definition, has BLOCK_LINES_BELOW lines of
    code after it at the indentation of the next one or deeper, the next one a statement of that
    body (not a definition: the prompt's suffix ends where the next definition at the cursor's
    level begins, so a new line between two methods has no code after it to hold)."""
    code = [line for line in lines[at:at + 4 * BLOCK_LINES_BELOW] if line.strip()]
    if len(code) < BLOCK_LINES_BELOW or _DEFINITION_START.match(code[0]):
        return False
    width = indent_width(code[0])
    # Indented: inside a definition (the prompt's suffix ends with the definition holding the cursor).
    return width > 0 and all(indent_width(line) >= width for line in code[:BLOCK_LINES_BELOW])


_DEFINITION_START = re.compile(r"\s*(?:def |async def |class |@)")
