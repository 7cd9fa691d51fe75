"""What llama.vim (autoload/llama.vim) sends llama.cpp's /infill, and what it makes of the answer,
for a server that has only the OpenAI-compatible /v1/completions (llama-cpp-python's).

- Local context (s:fim_ctx_local): up to n_prefix = 256 lines above the cursor line, the cursor
  line up to the cursor ("prompt", the middle's start), the rest of it and up to n_suffix = 64
  lines below. A cursor line of only whitespace is sent empty and n_indent is 0 (the model writes
  the indentation).
- Extra context: llama.vim's ring buffer of chunks (16 chunks of up to 64 lines) from other buffers.
  Here every other open file, in chunks of 64 lines, the last 16 kept.
- The prompt llama.cpp's server builds from them (format_prompt_infill, repo-level FIM for models
  with <|repo_name|> and <|file_sep|>, e.g. Qwen2.5-Coder): `<|repo_name|>myproject\n`, then each
  chunk as `<|file_sep|>{filename}\n{text}`, then `<|file_sep|>filename\n` (the literal word: the
  server does not know the current file's name), then `<|fim_prefix|>{prefix}{prompt}<|fim_suffix|>
  {suffix}<|fim_middle|>`. The server keeps the prefix's last 3/4 of a batch (1536 tokens at the
  default n_batch 2048) and the suffix's first n_batch/4 - 2 - prompt tokens.
- Stop rules (the server's generation loop): `n_indent`, once a new line has been generated, a later
  line indented less than the cursor's line ends the answer, that line's text cut off;
- Post-processing (s:fim_render) and accepting the whole suggestion (llama#fim_accept 'full').

- Its time budget (t_max_predict_ms, 250 ms for the request whose answer is shown): a piece with a
  new line ends the answer once that long has passed since the first piece (the server counts from
  the start of generation), so on a slow machine llama.vim shows about one line.

Not reproduced: llama.vim samples (top-k 40, top-p 0.9, the infill sampler, the server's default
temperature); the eval decodes greedily for both contenders. Its eviction of ring chunks similar
to the cursor's surroundings (the eval's other files are different code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

N_PREFIX_LINES = 256
N_SUFFIX_LINES = 64
RING_CHUNKS = 16
RING_CHUNK_LINES = 64
N_BATCH = 2048
# llama.vim's first request for a position (the one whose answer is shown) allows 250 ms of decoding.
T_MAX_PREDICT_MS = 250.0
REPO_NAME = "myproject"
CURRENT_FILE = "filename"

QWEN_FIM = {"repo": "<|repo_name|>", "file_sep": "<|file_sep|>", "prefix": "<|fim_prefix|>",
            "suffix": "<|fim_suffix|>", "middle": "<|fim_middle|>"}
_BLANK = re.compile(r"[ \t]*")


@dataclass
class LocalContext:
    prefix: str
    middle: str  # the cursor line up to the cursor (llama.vim's "prompt")
    suffix: str
    indent: int  # n_indent


def local_context(lines: list[str], row: int, column: int) -> LocalContext:
    """s:fim_ctx_local for a cursor at 0-based (row, column), without a previous suggestion."""
    line_cur = lines[row]
    lines_prefix = lines[max(0, row - N_PREFIX_LINES): row]
    lines_suffix = lines[row + 1: row + 1 + N_SUFFIX_LINES]
    if _BLANK.fullmatch(line_cur):
        indent, cur_prefix, cur_suffix = 0, "", ""
    else:
        indent = len(line_cur) - len(line_cur.lstrip(" \t"))
        cur_prefix, cur_suffix = line_cur[:column], line_cur[column:]
    return LocalContext(prefix="\n".join(lines_prefix) + "\n", middle=cur_prefix,
                        suffix=cur_suffix + "\n" + "\n".join(lines_suffix) + "\n", indent=indent)


def ring_chunks(other_files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(filename, text) chunks of the other files as llama.vim's ring holds them: each chunk its
    lines joined with a final new line, at most RING_CHUNK_LINES lines, the newest RING_CHUNKS kept."""
    chunks = []
    for path, text in other_files:
        lines = text.rstrip("\n").split("\n")
        for start in range(0, len(lines), RING_CHUNK_LINES):
            chunks.append((path, "\n".join(lines[start: start + RING_CHUNK_LINES]) + "\n"))
    return chunks[-RING_CHUNKS:]


def infill_prompt(ctx: LocalContext, extra: list[tuple[str, str]], tokens=None, fim: dict = QWEN_FIM) -> str:
    """The prompt llama.cpp's format_prompt_infill builds, as text. `tokens` (the served model's
    tokenizer: count, keep_last, keep_first) cuts prefix and suffix where the server does; None: uncut."""
    prefix, suffix = ctx.prefix, ctx.suffix
    if tokens is not None:
        prefix = tokens.keep_last(prefix, 3 * (N_BATCH // 4))
        suffix = tokens.keep_first(suffix, max(0, N_BATCH // 4 - (2 + tokens.count(ctx.middle))))
    head = f"{fim['repo']}{REPO_NAME}\n"
    head += "".join(f"{fim['file_sep']}{name}\n{text}" for name, text in extra)
    head += f"{fim['file_sep']}{CURRENT_FILE}\n"
    return f"{head}{fim['prefix']}{prefix}{ctx.middle}{fim['suffix']}{suffix}{fim['middle']}"


class ServerStop:
    """The llama.cpp server's stop rules for llama.vim's request, fed the generated pieces (one
    token each) as they stream: n_indent (once a new line has been generated, a later line indented
    less than the cursor's ends the answer, that line's text cut off), and t_max_predict_ms (a piece
    holding a new line ends it once that long has passed since generation started)."""

    def __init__(self, n_indent: int, t_max_predict_ms: float = T_MAX_PREDICT_MS):
        self.n_indent = n_indent
        self.t_max_predict_ms = t_max_predict_ms
        self.text = ""
        self.has_new_line = False
        self.last_nl_pos = 0
        self.stopped_by: str | None = None

    def feed(self, piece: str, elapsed_ms: float = 0.0) -> bool:
        """Add a piece generated `elapsed_ms` after generation started; True when generation must
        stop (self.text is then what the server answers)."""
        self.text += piece
        if self.has_new_line and self.n_indent > 0:
            if self.last_nl_pos > 0:
                pos = self.last_nl_pos
                while pos < len(self.text) and self.text[pos] in " \t":
                    pos += 1
                if pos < len(self.text) and pos - self.last_nl_pos < self.n_indent:
                    self.text = self.text[:pos]
                    self.stopped_by = "indent"
            found = self.text.find("\n", self.last_nl_pos)
            if found >= 0:
                self.last_nl_pos = found + 1
        if "\n" in piece:
            self.has_new_line = True
            if self.stopped_by is None and self.t_max_predict_ms > 0 and elapsed_ms > self.t_max_predict_ms:
                self.stopped_by = "time"
        return self.stopped_by is not None


def _vim_slice_to(text: str, end: int) -> str:
    """Vim's text[:end] (inclusive; a negative end counts from the back, so [:-1] is all)."""
    return text[: end + 1] if end >= 0 else text[: len(text) + end + 1]


@dataclass
class Rendered:
    content: list[str]
    line_cur: str
    can_accept: bool


def render(answer: str, lines: list[str], row: int, column: int) -> Rendered:
    """s:fim_render: the suggestion's lines after llama.vim drops what repeats the document."""
    content = answer.split("\n")
    while content and content[-1] == "":
        content.pop()
    can_accept = True
    if not content:
        content, can_accept = [""], False
    line_cur = lines[row]
    if _BLANK.fullmatch(line_cur):
        lead = min(len(content[0]) - len(content[0].lstrip(" \t")), len(line_cur))
        line_cur, content[0] = content[0][:lead], content[0][lead:]
    cur_prefix, cur_suffix = line_cur[:column], line_cur[column:]

    def getline(index: int) -> str:  # 0-based; Vim's getline past the end is ""
        return lines[index] if 0 <= index < len(lines) else ""

    if len(content) > 1 and content[0] == "" and content[1:] == lines[row + 1: row + len(content)]:
        content = [""]
    if len(content) == 1 and content[0] == cur_suffix:
        content = [""]
    cmp = row + 1
    while cmp < len(lines) - 1 and _BLANK.fullmatch(getline(cmp)):
        cmp += 1
    if cur_prefix + content[0] == getline(cmp):
        if len(content) == 1:
            content = [""]
        if len(content) == 2 and content[-1] == _vim_slice_to(getline(cmp + 1), len(content[-1]) - 1):
            content = [""]
        if len(content) > 2 and "\n".join(content[1:]) == "\n".join(lines[cmp + 1: cmp + len(content)]):
            content = [""]
    content[-1] += cur_suffix
    if _BLANK.fullmatch("\n".join(content)):
        can_accept = False
    return Rendered(content=content, line_cur=line_cur, can_accept=can_accept)


def accept(lines: list[str], row: int, column: int, rendered: Rendered) -> list[str]:
    """llama#fim_accept('full'): the document's lines after accepting the whole suggestion."""
    if not rendered.can_accept:
        return list(lines)
    first = _vim_slice_to(rendered.line_cur, column - 1) + rendered.content[0]
    return lines[:row] + [first] + rendered.content[1:] + lines[row + 1:]
