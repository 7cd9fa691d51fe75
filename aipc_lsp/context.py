"""Builds the model prompt for a completion at a cursor.

With a fill-in-the-middle template (fim.py; detected from the model's tokenizer) the prompt is
[other files] + the template's markers around the code before the cursor (prefix) and after it
(suffix). Without one (chat-tuned small models such as SmolLM2, Phi-3, Llama-3) it is the code
before the cursor as raw text, with no chat template: the model simply continues the file; the
code after the cursor is then only used by post-processing (where the suggestion must stop).

The budget (completion.context_tokens) is shared: the suffix takes up to `suffix_tokens`, the
other files' header what it measures, the prefix the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from aipc_lsp.fim import FimTemplate
from aipc_lsp.snippets import indent_width

# Coarse window steps keep the prompt's beginning identical across keystrokes, so an
# engine's prefix cache can reuse the KV of everything but the last few tokens.
WINDOW_STEP_LINES = 32
# Used to size the window before the exact token count is known; code averages ~3-4.
CHARS_PER_TOKEN = 3.0
# More characters a token than code ever averages: the first cut before counting the suffix.
MAX_CHARS_PER_TOKEN = 6.0
# A cursor line up to this long is bounded by its byte count rather than tokenized.
BOUNDED_LINE_BYTES = 160

@dataclass(frozen=True)
class CompletionContext:
    prompt: str
    # Document text after the cursor (used to stop where the suggestion would repeat it).
    suffix: str
    # Text of the cursor's line before and after the cursor.
    line_prefix: str
    line_suffix: str
    # Token healing: BPE tokenizers glue a space to the word after it (" return"), so a
    # prompt ending in a space ends in a token the model rarely saw before a word and it
    # goes astray. The last space is left out of the prompt; the suggestion is expected
    # to start with it and post-processing removes it. With an engine that can constrain
    # decoding to begin with it, the line's last token is (see open_tail).
    held_back: str
    window_start_line: int
    # The code before the cursor that the prompt holds (the whole prompt without FIM or header).
    window: str = ""
    # The code after the cursor that the prompt holds (FIM only).
    suffix_window: str = ""
    # The other files whose snippets the prompt's header holds (their paths; aipc/status shows them).
    other_files: tuple[str, ...] = ()
    # psm-line, a cursor line of only indentation: the prompt once code is typed on it (FimTemplate.
    # line_body), to compute while the user reads the suggestion; "" when there is none.
    line_prompt: str = ""


def build_completion_context(
    text: str,
    offset: int,
    *,
    budget_tokens: int = 1536,
    count_tokens: Callable[[str], int] | None = None,
    fim: FimTemplate | None = None,
    suffix_tokens: int = 256,
    header: str = "",
    last_token: Callable[[str], str] | None = None,
    suffix_to_definition_end: bool = False,
) -> CompletionContext:
    """`offset` is the cursor as an index into `text` (Python str, code points). `header` goes
    first (other files, already in the model's format); `fim` puts the suffix in the prompt.
    `last_token` (the tokenizer's; given when the engine constrains the answer to begin with what
    is held back): hold back the cursor line's last token, not just a last space (token healing).
    `suffix_to_definition_end`: the suffix ends where the definition holding the cursor does
    (see definition_end)."""
    offset = max(0, min(offset, len(text)))
    before, after = text[:offset], text[offset:]
    suffix_window = ""
    if fim is not None:
        scoped = after
        if suffix_to_definition_end:
            scoped = after[:definition_end(before, after, int(suffix_tokens * MAX_CHARS_PER_TOKEN))]
        suffix_window = _suffix_window(scoped, suffix_tokens, count_tokens)
        budget_tokens -= FIM_MARKER_TOKENS + _count(suffix_window, count_tokens)
    if header:
        budget_tokens -= _count(header, count_tokens)
    budget_tokens = max(budget_tokens, 1)
    line_start = before.rfind("\n") + 1
    line_end_rel = after.find("\n")
    line_prefix = before[line_start:]
    line_suffix = after if line_end_rel < 0 else after[:line_end_rel]

    tail = open_tail(line_prefix) if last_token is not None and line_prefix.strip() else ""
    if not tail[-1:].isalnum() and not tail.endswith("_"):
        # After punctuation ("os.", "append(", "s,") the model has seen that token alone before a
        # word often enough; rewriting it only moved near-ties (the dev tasks: one answer lost, none won).
        tail = ""
    # The tail is a pre-tokenizer piece: its tokens do not depend on the text before it.
    held_back = token if tail and (token := last_token(tail)) and tail.endswith(token) else ""
    if not held_back:
        held_back = " " if line_prefix.endswith(" ") else ""
    body = before[: len(before) - len(held_back)]

    lines = body.split("\n")
    cursor_line = len(lines) - 1
    budget_chars = int(budget_tokens * CHARS_PER_TOKEN)
    start_line = 0
    # Smallest window start (a multiple of WINDOW_STEP_LINES) whose text fits the budget.
    total = len(body)
    consumed = 0
    for i, line in enumerate(lines):
        if total - consumed <= budget_chars or i == cursor_line:
            start_line = i
            break
        consumed += len(line) + 1
    rounded = _round_up(start_line, WINDOW_STEP_LINES)
    # Very long last lines: rounding would drop everything but the cursor line.
    start_line = rounded if rounded <= cursor_line else start_line

    def window(start: int) -> str:
        return "\n".join(lines[start:])

    prompt = window(start_line)
    if count_tokens is not None:
        count = count_tokens(prompt)  # counted once per window: it is on every keystroke's path
        while start_line < cursor_line and count > budget_tokens:
            start_line = min(cursor_line, start_line + WINDOW_STEP_LINES)
            prompt = window(start_line)
            count = count_tokens(prompt)
        while count > budget_tokens and prompt:
            # One enormous line: keep its tail, shrinking by the measured ratio.
            keep = min(len(prompt) - 1, int(len(prompt) * budget_tokens / count * 0.95))
            prompt = prompt[-keep:] if keep > 0 else ""
            count = count_tokens(prompt)
    window_text = prompt
    line_prompt = ""
    if fim is not None:
        prompt = fim.body(prompt, suffix_window, held_back)
        line_body = fim.line_body(window_text, suffix_window) if not line_prefix.strip() else ""
        line_prompt = header + line_body if line_body else ""
    return CompletionContext(
        prompt=header + prompt,
        line_prompt=line_prompt,
        suffix=after,
        line_prefix=line_prefix,
        line_suffix=line_suffix,
        held_back=held_back,
        window_start_line=start_line,
        window=window_text,
        suffix_window=suffix_window,
    )


# What the pre-tokenizers of the GPT-4 / Qwen2 / Llama-3 family join with the text after it:
# a run of letters with the one character before it (".jo", " return", "(self", "_name") or a
# run of punctuation with the space before it (" ==", "(", "._"). A prompt ending in part of
# such a piece ends in a token split the model rarely saw ("self.a" then "llocation", where the
# prompt "self." then "allowance" is right: the default model, tests/e2e/test_token_healing.py).
_OPEN_TAIL = re.compile(r"(?:[^\w\r\n]|_)?[^\W\d_]+$| ?(?:[^\w\s]|_)+$")


def open_tail(line_prefix: str) -> str:
    """The end of `line_prefix` that the next typed character could still merge into one token
    with it; "" after a digit or a space (a space alone is the plain held-back rule)."""
    match = _OPEN_TAIL.search(line_prefix)
    return match.group(0) if match else ""


# A line that opens a definition (or decorates one): Python, JS/TS, Go, Rust.
_DEFINITION = re.compile(r"^([ \t]*)(?:@\w|(?:async\s+)?def\s|class\s|(?:export\s+(?:default\s+)?)?(?:async\s+)?"
                         r"function\b|func\s|(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?fn\s)", re.MULTILINE)
# How far up the definition holding the cursor is looked for.
MAX_DEFINITION_DISTANCE = 20_000


def definition_end(before: str, after: str, limit: int) -> int:
    """Where in `after` (within `limit` characters) the definition holding the cursor ends: at the
    first later line that opens a definition at its indentation or left of it. `len(after)` when
    the cursor is in none or its end is further.

    The code after the cursor in the prompt stops there. A small model copied lines of the next
    function into the one being written, and the next function tells it little about this one:
    on the eval's 228 tasks, 32.0 -> 37.3 % exact and 43.8 -> 55.2 % pass@1 (docs/QUALITY.md,
    twentieth session)."""
    line_start = before.rfind("\n") + 1
    definition = None
    # Up from the cursor's line, line by line: on every keystroke, and the definition is most
    # often a few lines up (a forward scan of the whole distance took ~1 ms).
    start, lowest = line_start, max(0, line_start - MAX_DEFINITION_DISTANCE)
    while start > lowest:
        start = before.rfind("\n", lowest, start - 1) + 1
        start = max(start, lowest)
        definition = _DEFINITION.match(before, start, line_start)
        if definition is not None:
            break
    if definition is None:
        return len(after)
    level = indent_width(definition.group(1))
    first_line_end = after.find("\n")
    if first_line_end < 0:
        return len(after)
    for match in _DEFINITION.finditer(after, first_line_end + 1, min(len(after), limit)):
        if indent_width(match.group(1)) <= level:
            return match.start()
    return len(after)


# The FIM markers (and a repo-level format's path line) in tokens, roughly.
FIM_MARKER_TOKENS = 4


def _count(text: str, count_tokens: Callable[[str], int] | None) -> int:
    if not text:
        return 0
    return count_tokens(text) if count_tokens is not None else int(len(text) / CHARS_PER_TOKEN) + 1


def _suffix_window(after: str, budget_tokens: int, count_tokens: Callable[[str], int] | None) -> str:
    """The code after the cursor that fits `budget_tokens`, cut at a line end (the rest of the
    cursor's line always: the model must see what the line ends with). Its trailing blank lines
    are dropped: they tell the model nothing and change as the user adds lines at the end.

    With the tokenizer the cut is where the real count says, not where the chars-per-token
    estimate does: code runs ~4 characters a token, so the estimate held ~190 of 256 tokens and
    often stopped a few lines short of a small file's end (the eval's 78 tasks, docs/QUALITY.md:
    cut by the count, 24.4 % exact / 35.7 % pass@1 against 23.1 / 31.0 %)."""
    if budget_tokens <= 0:
        return ""
    line_end = after.find("\n")
    if line_end < 0:
        return after
    per_token = MAX_CHARS_PER_TOKEN if count_tokens is not None else CHARS_PER_TOKEN
    window = _cut_at_line_end(after, int(budget_tokens * per_token), line_end)
    if count_tokens is not None:
        count = count_tokens(window)
        while count > budget_tokens and "\n" in window[line_end + 1:]:
            # Back to the line end the measured ratio says fits, at least one line per count.
            shorter = _cut_at_line_end(window, int(len(window) * budget_tokens / count), line_end)
            window = shorter if len(shorter) < len(window) else window[: window.rfind("\n")]
            count = count_tokens(window)
    return _rstrip_lines(window)


def _cut_at_line_end(text: str, limit: int, line_end: int) -> str:
    """`text` up to its last line end within `limit` characters, never shorter than its first line."""
    if len(text) <= limit:
        return text
    return text[: max(text.rfind("\n", 0, limit + 1), line_end)]


def _rstrip_lines(text: str) -> str:
    """Drop trailing blank lines but keep the cursor line's own text."""
    first, sep, rest = text.partition("\n")
    rest = rest.rstrip()
    return first + (sep + rest if rest else "")


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


class NotCounted(LookupError):
    """A count that needs the tokenizer was asked of `LineCountCache.cached_only`."""


class LineCountCache:
    """Token counts for prompts that grow keystroke by keystroke: the text up to the last
    newline is counted once and remembered; the cursor's line is bounded by its UTF-8 length
    (a token is at least one byte) instead of counted, so a keystroke that stays on its line
    asks the tokenizer nothing (with the engine in a worker process, a count is a round trip
    to it on every keystroke). A long cursor line is counted. The sum can be high by a few
    tokens (BPE also merges across that newline): fine for a budget.

    `cached_only` answers from what is remembered and raises NotCounted instead of asking the
    tokenizer: the event loop builds a prompt with it, and hands the work to a thread only when
    a count is missing."""

    def __init__(self, count_tokens: Callable[[str], int], size: int = 16):
        self._count = count_tokens
        self._heads: dict[str, int] = {}
        self._size = size

    def __call__(self, text: str) -> int:
        return self._counted(text, self._count)

    def cached_only(self, text: str) -> int:
        return self._counted(text, _not_counted)

    def _counted(self, text: str, count: Callable[[str], int]) -> int:
        cut = text.rfind("\n") + 1
        if cut == 0:
            return count(text)
        head, tail = text[:cut], text[cut:]
        n = self._heads.get(head)
        if n is None:
            n = count(head)
            if len(self._heads) >= self._size:
                self._heads.pop(next(iter(self._heads)), None)  # another thread may have dropped it
            self._heads[head] = n
        tail_bytes = len(tail.encode("utf-8", "surrogatepass"))
        return n + (tail_bytes if tail_bytes <= BOUNDED_LINE_BYTES else count(tail))


def _not_counted(text: str) -> int:
    raise NotCounted(len(text))


class LastTokenCache:
    """The tokenizer's last token of a line's open tail (token healing), remembered: the same
    tails come back as the user types (".jo", " return"), and each is a round trip to the engine's
    worker. `cached_only` raises NotCounted instead of asking, as LineCountCache's does."""

    def __init__(self, last_token: Callable[[str], str], size: int = 256):
        self._last_token = last_token
        self._known: dict[str, str] = {}
        self._size = size

    def __call__(self, tail: str) -> str:
        token = self._known.get(tail)
        if token is None:
            token = self._known[tail] = self._last_token(tail)
            while len(self._known) > self._size:
                del self._known[next(iter(self._known))]
        return token

    def cached_only(self, tail: str) -> str:
        try:
            return self._known[tail]
        except KeyError:
            raise NotCounted(len(tail)) from None
