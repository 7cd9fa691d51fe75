"""Turns raw model output into a suggestion that fits at the cursor.

`trim_suggestion` is called on the growing output after every decoded piece; once it says
the suggestion is complete, generation stops, so no token is decoded that the user
will never see.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

# One measure of indentation for the whole server (tab stops of 4, as an editor shows them).
from aipc_lsp.snippets import indent_width

# Markers a chat model emits when it leaves the code and starts talking.
END_MARKERS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|end|>", "<|eot_id|>",
               "<|user|>", "<|assistant|>", "```", "<file_sep>", "<|file_separator|>")
BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", " do", " then")
BRACKETS = {")": "(", "]": "[", "}": "{"}


@dataclass(frozen=True)
class Trimmed:
    text: str
    # True when more output cannot change `text`: the caller may stop generating.
    complete: bool


def _dedent_first(text: str, width: int) -> str:
    """Remove `width` columns of indentation from the first line (already at the cursor)."""
    first, sep, rest = text.partition("\n")
    drop = 0
    while drop < len(first) and first[drop] in " \t" and indent_width(first[:drop]) < width:
        drop += 1
    return first[drop:] + sep + rest


def _code_lines(text: str, count: int) -> list[str]:
    """The first `count` non-blank lines of `text`, stripped. `text` is the rest of the document and
    this runs on every decoded piece: only the lines up to them are stripped."""
    return list(islice((code for line in text.split("\n") if (code := line.strip())), count))


# A fill-in-the-middle model that has no idea copies a line it sees just below the hole (e.g.
# `return len(self.items)` of the next method into the body of `push`, when its prompt still held
# the next method): only lines the prompt showed it count (`copy_window`), and not a line the code
# above the cursor has too (`above`: branches alike). On the development tasks these two brought
# back 2 right answers and dropped none (twenty-first session, docs/QUALITY.md). A line of a few characters
# (`break`, `pass`, `return x`) repeats in real code too, and is kept. Only on a line the user has
# not started: once they have typed its beginning, a line below that goes on the same way is most
# often what they are writing again (`lines.append(cur|` → `lines.append(current)`, as in the
# flush after the loop).
COPY_WINDOW_LINES = 12
COPY_MIN_CHARS = 16
# A later line of the suggestion ends it where it is the next code line after the cursor (the
# model goes on with the code that is already there) or, at the cursor's indentation, the one after
# it (the model skipped the next line: `result = []` then the `while` two lines down). Not further
# down, nor deeper (a block's `return None`): such lines recur in real code (`with self.block():`).
REPEATED_CODE_LINES = 2


def _copies_a_line_below(line: str, suffix: str, above: str = "") -> bool:
    """Whether the cursor's whole line, with the suggestion, is one of the next lines after it
    (and none above it: a line the code repeats is the code's, not a copy)."""
    code = line.strip()
    if len(code) < COPY_MIN_CHARS:
        return False
    below = suffix.split("\n", COPY_WINDOW_LINES + 1)[1:COPY_WINDOW_LINES + 1]  # not the rest of the document
    if not any(other.strip() == code for other in below):
        return False
    return not any(other.strip() == code for other in above.split("\n"))


def _unbalanced_closers(text: str) -> int:
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
    return -depth


def _trim_line_suffix_overlap(line: str, line_suffix: str, line_prefix: str = "") -> str:
    """Drop the end of a single-line suggestion that the text after the cursor already has,
    e.g. the `)` of `print(|)` — but only when the brackets say it is a duplicate — and any
    closing brackets at its end that the line around it has nothing open for."""
    tail = line_suffix.strip()
    if tail and line.endswith(tail):
        if any(c in BRACKETS for c in tail) and _unbalanced_closers(line) <= 0:
            return line  # its brackets balance: the closer is the suggestion's own
        line = line[: -len(tail)].rstrip()
    # Closers beyond what the line before the cursor opened and the line after it does not close
    # (`sorted(people, key=|)` answered `lambda x: x['age']))`) would leave the line unbalanced.
    allowed = max(0, -_unbalanced_closers(line_prefix) - max(0, _unbalanced_closers(line_suffix)))
    while _unbalanced_closers(line) > allowed and line.rstrip()[-1:] in BRACKETS:
        line = line.rstrip()[:-1]
    return line


def _without_trailing_comment(line: str, comment: str) -> str:
    """`line` up to a line comment that starts outside a string literal (at the start or after
    whitespace: `//` right after code may be an operator)."""
    if not comment:
        return line
    quote = ""
    index = 0
    while index < len(line):
        ch = line[index]
        if quote:
            if ch == "\\":
                index += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif line.startswith(comment, index) and (index == 0 or line[index - 1] in " \t"):
            return line[:index].rstrip()
        index += 1
    return line


def trim_suggestion(
    raw: str,
    *,
    line_prefix: str,
    line_suffix: str,
    suffix: str,
    held_back: str = "",
    max_lines: int = 8,
    finished: bool = False,
    copy_window: str | None = None,
    above: str = "",
    line_comment: str = "",
) -> Trimmed:
    """`finished`: the model ended on its own, so the last line is whole too. `copy_window`: the
    code after the cursor the model saw (a FIM prompt's suffix), whose lines a suggestion on a line
    the user has not started may not copy; None: `suffix`, the rest of the document. `above`: the
    code before the cursor the model saw; a line it has is no copy. `line_comment`: the document's
    line comment (fim.comment_prefix), "" when not known."""
    complete = False
    for marker in END_MARKERS:
        at = raw.find(marker)
        if at >= 0:
            raw, complete = raw[:at], True

    base_indent = indent_width(line_prefix)
    if len(raw) < len(held_back) and held_back.startswith(raw):
        return Trimmed("", complete or finished)  # still rewriting the held-back text
    if held_back.strip() and not raw.startswith(held_back):
        # Healed text is rewritten by constrained decoding; without it the answer is elsewhere.
        return Trimmed("", True)
    if held_back and raw.startswith(held_back):
        if not line_prefix.strip() and raw[len(held_back):][:1] in (" ", "\t"):
            # On an indent-only line the model wrote the line's indentation itself, from column 0
            # (it saw the indentation less the held-back space, e.g. 3 columns + "    return"):
            # the cursor's columns of it are already there.
            raw = _dedent_first(raw, base_indent)
        else:
            raw = raw[len(held_back):]
    elif not line_prefix.strip() and raw.startswith("\n"):
        # On an empty or indent-only line the model ended the line instead of writing it:
        # its next line is the suggestion, if it is still inside the cursor's block.
        stripped = raw.lstrip("\n")
        first = stripped.split("\n", 1)[0]
        if not first.strip():
            return Trimmed("", complete or finished)  # nothing to judge yet
        if indent_width(first) < base_indent:
            return Trimmed("", True)
        raw = _dedent_first(stripped, base_indent)
    elif line_prefix.strip() and raw.startswith("\n"):
        # On a started line the model broke it and wrote it again from its start (`self.` ->
        # "\n        self.hits = 0"): the rest of that line is the suggestion. Any other line after
        # the break is the next statement (the typed one may be complete), judged as always below.
        typed = line_prefix.lstrip()
        stripped = raw.lstrip("\n")
        first = stripped.split("\n", 1)[0]
        if "\n" not in stripped and typed.startswith(first.lstrip()) and len(first) <= len(line_prefix):
            return Trimmed("", complete or finished)  # perhaps the typed start again: not judged yet
        if indent_width(first) == base_indent and first.lstrip().startswith(typed):
            raw = stripped[len(first) - len(first.lstrip()) + len(typed):]

    lines = raw.split("\n")
    has_more = len(lines) > 1  # the first line is finished once a newline follows it

    if line_suffix.strip():
        # Mid-line: only the rest of this line makes sense, and no comment of the model's: it would
        # swallow the line's own rest (`key=|)` -> `lambda x: x['age'])  # by age` leaves the `)`
        # commented out). A comment the line has after the cursor stays.
        first = _without_trailing_comment(lines[0].rstrip(), line_comment)
        first = _trim_line_suffix_overlap(first, line_suffix, line_prefix)
        return Trimmed(first, complete or has_more)

    opens_block = (line_prefix + lines[0]).rstrip().endswith(BLOCK_OPENERS)
    next_code = _code_lines(suffix, REPEATED_CODE_LINES)
    if not line_prefix.strip() and (has_more or complete or finished):
        # A whole first line on a line the user has not started: no copy of the code below it
        # (the next line, of any length, or a longer one within the copy window).
        seen = suffix if copy_window is None else copy_window
        if lines[0].strip() in next_code[:1] or _copies_a_line_below(lines[0], seen, above):
            return Trimmed("", True)
    if line_prefix.strip() and lines[0].strip() and not opens_block:
        # The user is finishing a statement: its end, not the statements after it.
        return Trimmed(lines[0].rstrip(), complete or has_more)
    kept = [lines[0].rstrip()]
    for index, line in enumerate(lines[1:], start=1):
        if len(kept) >= max_lines:
            complete = True
            break
        if index == len(lines) - 1 and not (complete or finished):
            break  # still being written; judge it when it is finished
        if not line.strip():
            if not opens_block:
                complete = True  # a blank line ends a run of statements at this level
                break
            kept.append("")
            continue
        width = indent_width(line)
        if width < base_indent:
            complete = True
            break
        if opens_block and width <= base_indent:
            # The block is over; a closing bracket at the opener's level still belongs to it.
            if line.strip()[0] in BRACKETS:
                kept.append(line.rstrip())
            complete = True
            break
        if line.strip() in (next_code if width == base_indent else next_code[:1]):
            complete = True  # the model goes on with the code after the cursor
            break
        kept.append(line.rstrip())

    while kept and not kept[-1].strip():
        kept.pop()
    text = "\n".join(kept)
    if not text.strip():
        return Trimmed("", complete)
    return Trimmed(text, complete)
