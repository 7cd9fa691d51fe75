"""Fill-in-the-middle prompt formats, and which one a model speaks.

Code models are trained to fill a hole: given the code before the cursor (prefix) and after it
(suffix) in their own marker tokens, they generate the middle. Each family has its own markers,
and some a repo-level format that puts other files first (`<|repo_name|>`, `<|file_sep|>`).

Which format a model speaks is read from its tokenizer: a template applies when every marker it
needs is ONE token of the vocabulary (a special token), not a string the tokenizer splits up.
Templates are tried most specific first (Qwen and CodeGemma share `<|fim_prefix|>`; they differ in
the file separator).

Order: in prefix-suffix-middle (PSM) as the model cards write it, a change to the code before the
cursor sits before the whole suffix, so the suffix's tokens (up to 256) are prefilled again on
every keystroke the model must answer that changes the prompt (with token healing, one per word):
~0.25 s on 2 Xeon cores with AMX (bf16), ~1.2 s on 2 AVX2 cores (f32). Two other orders keep the
typed characters at the prompt's end, so a keystroke prefills only them:
- SPM, the FIM paper's form (`<PRE><SUF>suffix<MID>prefix`), the default: the code before the
  cursor runs straight into the answer, so typing, a new line included, prefills only what was
  typed; a cursor moved elsewhere changes the suffix at the prompt's start, so all of it is
  prefilled again (the editor plugins' aipc/warm computes it while the cursor rests), and an opened
  document's window cannot be computed ahead (its cursor is not known). It gets the most first
  lines right on every set measured: the 228 eval tasks (96 against psm-line's 86), 200 holes in
  this server's own modules, code no model can have seen (34 against 32), the development tasks
  (58 against PSM's 42) (docs/QUALITY.md, twenty-second and twenty-ninth sessions). With no code
  after the cursor (a file's end) it takes PSM's layout, which a keystroke costs no more there.
- PSM_LINE ("psm-line"): PSM with the cursor line's code after the middle marker,
  `<PRE>{code above the line}<SUF>{suffix}<MID>{line up to the cursor}` (the middle is the text
  between prefix and suffix; the model is given its start). A new line, or a cursor moved to
  another line, prefills the suffix once. A line of only indentation stays in the prefix, as in
  PSM, and so does the line at a file's end (no code after it: a keystroke costs PSM no more
  there). As many first lines right as PSM on the eval (twenty-fourth to twenty-sixth sessions).
So the templates keep PSM, the order the models' cards document ("auto"), and `completion.fim_order`
defaults to "spm".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

from aipc_lsp.snippets import Snippet


PSM, SPM, SUFFIX_FIRST = "psm", "spm", "suffix-first"
# PSM with the cursor line's typed code moved after the middle marker: the prefix part ends at the
# cursor line's start, and the answer continues the line the middle has begun. A line of only
# indentation stays in the prefix (as PSM): there the model answered worse (FizzBuzz's first branch).
PSM_LINE = "psm-line"


@dataclass(frozen=True)
class FimTemplate:
    name: str
    prefix: str
    suffix: str
    middle: str
    # The order of the parts: PSM, PSM_LINE, SPM, or Codestral's only layout, suffix first with its
    # own prefix marker (`[SUFFIX]suffix[PREFIX]prefix`).
    order: str = "psm"
    # Repo-level format: `{repo_name}{repo}\n` then `{file_sep}{path}\n{text}\n` per file, the
    # current file last (its path, then the FIM body). None: other files go in as comments.
    repo_name: str | None = None
    file_sep: str | None = None
    # Markers that end the middle when the model writes them as text.
    stop: tuple[str, ...] = ()
    # Literal separators some formats need around the parts (CodeLlama: "<PRE> {p} <SUF>{s} <MID>").
    after_prefix_marker: str = ""
    before_suffix_marker: str = ""
    before_middle_marker: str = ""
    # Markers that must be single tokens for the template to be detected.
    detect: tuple[str, ...] = field(default=())

    def suffix_first(self) -> bool:
        """Whether the code after the cursor comes before the code before it (SPM, Codestral's)."""
        return self.order in (SPM, SUFFIX_FIRST)

    def markers(self) -> tuple[str, ...]:
        return self.detect or tuple(m for m in (self.prefix, self.suffix, self.middle) if m)

    def body(self, prefix: str, suffix: str, held_back: str = "") -> str:
        """The FIM part: markers around the prefix and the suffix, in the template's order.
        `held_back`: the text before the cursor that token healing keeps out of `prefix` (the
        answer must start with it); part of the cursor's line, which it decides psm-line's layout."""
        if self.order == SPM and suffix.strip():
            return (f"{self.prefix}{self.after_prefix_marker}{self.suffix}{suffix}"
                    f"{self.before_middle_marker}{self.middle}{prefix}")
        # SPM with no code after the cursor (a file's end): PSM's layout, which a keystroke
        # costs no more there (the two markers after the prefix) and which the model reads better.
        typed = ""  # PSM_LINE: the cursor line's code, after the middle marker
        if self.order == PSM_LINE:
            cut = prefix.rfind("\n") + 1
            # With no code after the cursor (a file's end) a keystroke costs PSM no more: its layout.
            # The line's code counts with what token healing holds back: a word typed on an empty
            # line is held back whole until its first token is complete (` ret`, then `u` of
            # `retu`), and a layout that followed the prompt alone would flip, the suffix prefilled
            # again at each flip.
            if (prefix[cut:] + held_back).strip() and suffix.strip():
                prefix, typed = prefix[:cut], prefix[cut:]
        return self._laid_out(prefix, suffix, typed)

    def line_body(self, prefix: str, suffix: str) -> str:
        """psm-line, a cursor line of only indentation (which body() keeps in the prefix, as PSM
        does): the body once code is typed on it, the line after the middle marker. Its first
        character then prefills only itself where this was computed ahead. "" for other orders,
        an empty line or one with code (body() has this layout already), or nothing after the cursor."""
        cut = prefix.rfind("\n") + 1
        if self.order != PSM_LINE or not prefix[cut:] or prefix[cut:].strip() or not suffix.strip():
            return ""  # (an empty line: the two layouts are one)
        return self._laid_out(prefix[:cut], suffix, prefix[cut:])

    def _laid_out(self, prefix: str, suffix: str, typed: str = "") -> str:
        """The markers around the parts, prefix first (suffix first for Codestral); `typed` (psm-line:
        the cursor line's code) after the middle marker."""
        p = f"{self.prefix}{self.after_prefix_marker}{prefix}{self.before_suffix_marker}"
        s = f"{self.suffix}{suffix}"
        if self.order == SUFFIX_FIRST:
            return f"{s}{p}{self.before_middle_marker}{self.middle}"
        return f"{p}{s}{self.before_middle_marker}{self.middle}{typed}"

    def header(self, snippets: Sequence[Snippet], path: str, comment: str = "#") -> str:
        """What goes before the FIM body: other files, in the repo-level format when the model has
        one (and the current file's path after them), else as comment blocks."""
        if not snippets:
            return ""
        if self.file_sep:
            parts = [f"{self.repo_name}{_repo_of(path)}\n" if self.repo_name else ""]
            parts += [f"{self.file_sep}{s.path}\n{s.text}\n" for s in snippets]
            parts.append(f"{self.file_sep}{path}\n")
            return "".join(parts)
        return comment_header(snippets, comment)


def comment_header(snippets: Sequence[Snippet], comment: str = "#") -> str:
    """Other files as comment blocks, for models without a repo-level format (as Tabby does)."""
    blocks = []
    for s in snippets:
        lines = [f"{comment} Path: {s.path}"] + [f"{comment} {line}".rstrip() for line in s.text.split("\n")]
        blocks.append("\n".join(lines) + "\n")
    return "".join(blocks)


_LINE_COMMENTS = {"python": "#", "sh": "#", "shellscript": "#", "bash": "#", "ruby": "#", "perl": "#", "r": "#",
                  "yaml": "#", "toml": "#", "lua": "--", "sql": "--", "haskell": "--", "vim": '"'}


def comment_prefix(language_id: str) -> str:
    """The line comment of a language (LSP languageId); `//` for the C family and the unknown."""
    return _LINE_COMMENTS.get(language_id.lower(), "//")


def _repo_of(path: str) -> str:
    # The repo name is not known to the server; a constant keeps the prompt's start stable.
    return "project"


QWEN = FimTemplate(
    "qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
    repo_name="<|repo_name|>", file_sep="<|file_sep|>",
    stop=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|fim_prefix|>", "<|fim_suffix|>",
          "<|fim_middle|>", "<|im_end|>"),
    detect=("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"),
)
CODEGEMMA = FimTemplate(
    "codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", file_sep="<|file_separator|>",
    stop=("<|file_separator|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<eos>", "<end_of_turn>"),
    detect=("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>"),
)
STARCODER = FimTemplate(
    "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", repo_name="<repo_name>", file_sep="<file_sep>",
    stop=("<|endoftext|>", "<fim_pad>", "<file_sep>", "<repo_name>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    detect=("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
)
DEEPSEEK = FimTemplate(
    "deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
    stop=("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
)
CODELLAMA = FimTemplate(
    "codellama", "<PRE>", "<SUF>", "<MID>", after_prefix_marker=" ", before_suffix_marker=" ",
    before_middle_marker=" ", stop=("<EOT>", "</s>", "<PRE>", "<SUF>", "<MID>"),
)
CODESTRAL = FimTemplate(
    "codestral", "[PREFIX]", "[SUFFIX]", "", order=SUFFIX_FIRST, stop=("</s>", "[PREFIX]", "[SUFFIX]"),
)

# Most specific first: a vocabulary with `<|file_separator|>` is CodeGemma's, with `<|file_sep|>` Qwen's.
TEMPLATES: dict[str, FimTemplate] = {t.name: t for t in (QWEN, CODEGEMMA, STARCODER, DEEPSEEK, CODELLAMA, CODESTRAL)}


def detect(count_tokens: Callable[[str], int]) -> FimTemplate | None:
    """The template whose markers are all single tokens of the model's vocabulary, or None.
    `count_tokens` is the engine's (it may add a BOS token: counted against a baseline)."""
    base = count_tokens("\n")
    known: dict[str, bool] = {}

    def single(marker: str) -> bool:
        if marker not in known:
            # The reversed string is the control: a tokenizer that keeps any such run of characters
            # as one piece has no special token for it.
            known[marker] = (count_tokens("\n" + marker) - base == 1
                             and count_tokens("\n" + marker[::-1]) - base > 1)
        return known[marker]

    for template in TEMPLATES.values():
        if all(single(m) for m in template.markers()):
            return template
    return None


def choose(setting: str, count_tokens: Callable[[str], int]) -> FimTemplate | None:
    """`completion.fim`: "off" → None, "auto" → detected, else the named template."""
    if setting == "off":
        return None
    if setting == "auto":
        return detect(count_tokens)
    return TEMPLATES[setting]


def ordered(template: FimTemplate | None, order: str) -> FimTemplate | None:
    """`completion.fim_order`: "auto" keeps the template's own order, "psm" / "psm-line" / "spm"
    force one (not on a template with a single layout of its own, Codestral's)."""
    if template is None or order == "auto" or template.order == SUFFIX_FIRST:
        return template
    return template if order == template.order else dataclasses.replace(template, order=order)
