"""Fill-in-the-middle templates: detection from a tokenizer's vocabulary, prompt layout, budget."""

from __future__ import annotations

import pytest

from aipc_lsp import fim
from aipc_lsp.context import build_completion_context
from aipc_lsp.snippets import Snippet


def vocabulary_counter(specials: set[str], bos: bool = False):
    """count_tokens of a tokenizer whose special tokens are `specials`: each is one token, any
    other character one token each (and a BOS token first when `bos`)."""

    def count(text: str) -> int:
        n = int(bos)
        i = 0
        while i < len(text):
            match = next((s for s in specials if text.startswith(s, i)), None)
            i += len(match) if match else 1
            n += 1
        return n

    return count


QWEN_VOCAB = {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
              "<|endoftext|>", "<|im_start|>", "<|im_end|>"}
STARCODER_VOCAB = {"<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<file_sep>", "<repo_name>",
                   "<|endoftext|>"}
CODEGEMMA_VOCAB = {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>", "<eos>"}
DEEPSEEK_VOCAB = {"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>"}
CODELLAMA_VOCAB = {"<PRE>", "<SUF>", "<MID>", "<EOT>", "</s>"}
CODESTRAL_VOCAB = {"[PREFIX]", "[SUFFIX]", "</s>"}
CHAT_VOCAB = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}


@pytest.mark.parametrize("vocab, expected", [
    (QWEN_VOCAB, "qwen"), (STARCODER_VOCAB, "starcoder"), (CODEGEMMA_VOCAB, "codegemma"),
    (DEEPSEEK_VOCAB, "deepseek"), (CODELLAMA_VOCAB, "codellama"), (CODESTRAL_VOCAB, "codestral"),
])
@pytest.mark.parametrize("bos", [False, True])
def test_the_template_is_read_from_the_vocabulary(vocab, expected, bos):
    assert fim.detect(vocabulary_counter(vocab, bos)).name == expected


def test_a_tokenizer_that_keeps_any_word_whole_is_not_taken_for_fim_tokens():
    assert fim.detect(lambda text: len(text.split())) is None


def test_a_chat_model_without_fim_tokens_keeps_the_prefix_prompt():
    assert fim.detect(vocabulary_counter(CHAT_VOCAB)) is None
    assert fim.choose("auto", vocabulary_counter(CHAT_VOCAB)) is None


def test_the_setting_forces_a_template_or_turns_fim_off():
    qwen = vocabulary_counter(QWEN_VOCAB)
    assert fim.choose("off", qwen) is None
    assert fim.choose("starcoder", qwen) is fim.STARCODER  # forced, whatever the vocabulary says
    assert fim.choose("auto", qwen) is fim.QWEN


def test_layouts():
    assert fim.QWEN.body("a = ", "\nb") == "<|fim_prefix|>a = <|fim_suffix|>\nb<|fim_middle|>"
    # Suffix-prefix-middle (the FIM paper's SPM), the prefix running into the answer.
    assert fim.ordered(fim.QWEN, "spm").body("a = ", "\nb") == "<|fim_prefix|><|fim_suffix|>\nb<|fim_middle|>a = "
    assert fim.STARCODER.body("a = ", "\nb") == "<fim_prefix>a = <fim_suffix>\nb<fim_middle>"
    assert fim.ordered(fim.STARCODER, "spm").body("a = ", "\nb") == "<fim_prefix><fim_suffix>\nb<fim_middle>a = "
    assert fim.CODELLAMA.body("a =", "\nb") == "<PRE> a = <SUF>\nb <MID>"
    # PSM with the cursor line's typed start after the middle marker: the prefix part ends at a line start.
    line = fim.ordered(fim.QWEN, "psm-line")
    assert line.body("x = 1\n    a = ", "\nb") == "<|fim_prefix|>x = 1\n<|fim_suffix|>\nb<|fim_middle|>    a = "
    assert line.body("x = 1\n", "b") == fim.QWEN.body("x = 1\n", "b")  # nothing typed on the line: PSM
    assert line.body("x = 1\n    ", "b") == fim.QWEN.body("x = 1\n    ", "b")  # only its indentation: PSM
    # A word typed on an empty line that token healing holds back whole is the line's code too.
    assert line.body("x = 1\n   ", "\nb", held_back=" ret") == "<|fim_prefix|>x = 1\n<|fim_suffix|>\nb<|fim_middle|>   "
    assert line.body("x = 1\n   ", "\nb", held_back=" ") == fim.QWEN.body("x = 1\n   ", "\nb")  # only indentation
    for nothing_after in ("", "\n\n"):  # the file's end: a keystroke costs PSM no more, so PSM
        assert line.body("x = 1\n    a = ", nothing_after) == fim.QWEN.body("x = 1\n    a = ", nothing_after)
    assert line.body("a = ", "\nb") == "<|fim_prefix|><|fim_suffix|>\nb<|fim_middle|>a = "
    assert fim.ordered(fim.CODELLAMA, "psm-line").body("x\na =", "\nb") == "<PRE> x\n <SUF>\nb <MID>a ="
    assert fim.CODESTRAL.body("a = ", "\nb") == "[SUFFIX]\nb[PREFIX]a = "
    assert fim.DEEPSEEK.body("x", "y") == "<｜fim▁begin｜>x<｜fim▁hole｜>y<｜fim▁end｜>"


def test_the_order_setting_keeps_or_forces_an_order_but_not_codestrals_own_layout():
    assert fim.ordered(fim.QWEN, "auto") is fim.QWEN and fim.QWEN.order == "psm"
    assert fim.ordered(fim.QWEN, "psm") is fim.QWEN and fim.ordered(fim.DEEPSEEK, "auto").order == "psm"
    assert fim.ordered(fim.QWEN, "psm-line").order == "psm-line"
    assert fim.ordered(fim.QWEN, "spm").order == "spm" and fim.ordered(fim.QWEN, "spm").name == "qwen"
    assert fim.ordered(fim.CODESTRAL, "psm") is fim.CODESTRAL
    assert fim.ordered(None, "spm") is None


def test_other_files_in_the_repo_level_format_or_as_comments():
    snippets = [Snippet("pkg/util.py", "def helper():\n    return 1"), Snippet("b.py", "X = 2")]
    header = fim.QWEN.header(snippets, "pkg/main.py")
    assert header == ("<|repo_name|>project\n<|file_sep|>pkg/util.py\ndef helper():\n    return 1\n"
                      "<|file_sep|>b.py\nX = 2\n<|file_sep|>pkg/main.py\n")
    assert fim.DEEPSEEK.header(snippets, "pkg/main.py") == (
        "# Path: pkg/util.py\n# def helper():\n#     return 1\n# Path: b.py\n# X = 2\n")
    assert fim.comment_header(snippets[1:], fim.comment_prefix("typescript")) == "// Path: b.py\n// X = 2\n"
    assert fim.QWEN.header([], "a.py") == ""


def count_chars(text: str) -> int:
    return len(text)


def test_the_fim_prompt_holds_the_suffix_within_its_budget():
    before = "def f(x):\n    y = "
    after = "\n" + "".join(f"    line{i} = {i}\n" for i in range(200))
    text = before + after
    ctx = build_completion_context(text, len(before), budget_tokens=400, count_tokens=count_chars, fim=fim.QWEN,
                                   suffix_tokens=100)
    assert ctx.prompt.startswith("<|fim_prefix|>def f(x):\n    y =<|fim_suffix|>\n    line0 = 0\n")
    assert ctx.prompt.endswith("<|fim_middle|>")
    assert len(ctx.suffix_window) <= 100 and ctx.suffix_window.endswith("\n" + ctx.suffix_window.split("\n")[-1])
    assert after.startswith(ctx.suffix_window)
    assert ctx.held_back == " "  # token healing as without FIM
    assert ctx.suffix == after  # post-processing still sees all of it


def test_the_suffix_fills_its_budget_by_the_real_count():
    """Code runs ~4 characters a token: a cut by the 3-characters estimate held ~190 of 256 tokens
    and stopped short of a small file's end (fewer right answers in the eval)."""
    def four_chars(text: str) -> int:
        return -(-len(text) // 4)

    before = "def f():\n    x = 1"
    after = "\n" + "".join(f"    total += item{i:03d}\n" for i in range(200))  # 24 characters, 6 tokens a line
    ctx = build_completion_context(before + after, len(before), count_tokens=four_chars, fim=fim.QWEN,
                                   suffix_tokens=256)
    assert 256 - 6 < four_chars(ctx.suffix_window) <= 256
    assert after.startswith(ctx.suffix_window)
    small_file = "\n" + "".join(f"    total += item{i:03d}\n" for i in range(40))  # 240 tokens: all of it
    ctx = build_completion_context(before + small_file, len(before), count_tokens=four_chars, fim=fim.QWEN,
                                   suffix_tokens=256)
    assert ctx.suffix_window == small_file.rstrip()


def test_prefix_and_suffix_share_the_budget():
    before = "".join(f"a{i} = {i}\n" for i in range(300))
    after = "\n" + "".join(f"b{i} = {i}\n" for i in range(300))
    header = "<|file_sep|>other.py\nZ = 1\n"
    ctx = build_completion_context(before + after, len(before), budget_tokens=1000, count_tokens=count_chars,
                                   fim=fim.QWEN, suffix_tokens=200, header=header)
    assert ctx.prompt.startswith(header)
    assert len(ctx.window) + len(ctx.suffix_window) + len(header) <= 1000
    assert len(ctx.suffix_window) <= 200 and len(ctx.window) > 400  # whole 32-line steps


def test_the_rest_of_the_cursor_line_is_always_in_the_suffix():
    text = "print(|" + "x" * 50 + ")\nnext_line()\n"
    offset = text.index("|")
    text = text.replace("|", "")
    ctx = build_completion_context(text, offset, budget_tokens=1000, count_tokens=count_chars, fim=fim.QWEN,
                                   suffix_tokens=10)
    assert ctx.suffix_window == "x" * 50 + ")"


def test_token_healing_holds_back_the_last_space_of_an_indentation_with_fim_too():
    """BPE keeps a run of spaces before a word as spaces + " word": a prefix ending in all of them ends in
    a token the model rarely saw there (measured with the eval: pass@1 and edit similarity lower)."""
    text = "def f():\n    "
    ctx = build_completion_context(text, len(text), fim=fim.QWEN)
    assert ctx.held_back == " " and ctx.prompt.startswith("<|fim_prefix|>def f():\n   <|fim_suffix|>")
    ctx = build_completion_context(text + "\n\nf()\n", len(text), fim=fim.ordered(fim.QWEN, "spm"))
    assert ctx.held_back == " " and ctx.prompt.endswith("<|fim_middle|>def f():\n   ")


def test_spm_with_no_code_after_the_cursor_is_laid_out_as_psm():
    """At a file's end a keystroke costs PSM's layout no more (the two markers after the prefix)."""
    text = "def f():\n    return 1\n\nprint(f"
    spm = build_completion_context(text, len(text), fim=fim.ordered(fim.QWEN, "spm")).prompt
    assert spm == build_completion_context(text, len(text), fim=fim.QWEN).prompt
    assert spm.endswith("<|fim_suffix|><|fim_middle|>") and spm.startswith("<|fim_prefix|>def f():")


def test_typing_changes_only_the_prompt_where_the_cursor_is():
    """The header and the prefix's beginning stay, so the prefix cache keeps them; in SPM the suffix
    too, which comes before the prefix: the prompt only grows by what was typed."""
    doc = "import os\n\ndef f():\n    return os.pa|\n\nprint(f())\n"
    offset = doc.index("|")
    doc = doc.replace("|", "")
    header = "<|file_sep|>b.py\nX = 2\n"
    one = build_completion_context(doc, offset, fim=fim.QWEN, header=header).prompt
    typed = doc[:offset] + "t" + doc[offset:]
    two = build_completion_context(typed, offset + 1, fim=fim.QWEN, header=header).prompt
    common = len(next((a for a in [one[:i] for i in range(len(one), 0, -1)] if two.startswith(a)), ""))
    assert one[:common].endswith("return os.pa")
    assert one.startswith(header + "<|fim_prefix|>") and one.split("<|fim_suffix|>")[0] + "t" == two.split("<|fim_suffix|>")[0]
    for order in ("spm", "psm-line"):
        template = fim.ordered(fim.QWEN, order)
        one = build_completion_context(doc, offset, fim=template, header=header).prompt
        two = build_completion_context(typed, offset + 1, fim=template, header=header).prompt
        assert two == one + "t", order


def test_with_the_typed_line_in_the_middle_only_a_new_line_changes_the_prompt_before_the_typed_text():
    """psm-line: the prefix part ends where the cursor's line starts, so a keystroke on the line grows
    the prompt at its end (the suffix stays cached); Enter, or the line's first character, moves the
    prompt's change before the suffix, once."""
    line = fim.ordered(fim.QWEN, "psm-line")
    doc = "def f(x):\n    y = x + 1\n    return y\n"
    offset = doc.index("+ 1")
    ctx = build_completion_context(doc, offset, fim=line)
    assert ctx.prompt == "<|fim_prefix|>def f(x):\n<|fim_suffix|>+ 1\n    return y<|fim_middle|>    y = x"
    assert ctx.held_back == " " and ctx.window.endswith("    y = x")
    # Typing a word with token healing: the layout stays psm-line whether the word is held back
    # whole (` ret`) or in part (`u` of `retu`), so the suffix is not prefilled again.
    healed = lambda tail: tail if len(tail) <= 4 else tail[4:]  # a tokenizer whose first token is 4 characters
    for typed in ("r", "ret", "retu", "return"):
        doc = f"def f(x):\n    y = 1\n    {typed}\n    return y\n"
        ctx = build_completion_context(doc, doc.index(f"{typed}\n") + len(typed), fim=line, last_token=healed)
        assert ctx.prompt.startswith("<|fim_prefix|>def f(x):\n    y = 1\n<|fim_suffix|>"), (typed, ctx.prompt)
        assert ctx.prompt.endswith("<|fim_middle|>" + f"    {typed}"[:len(f"    {typed}") - len(ctx.held_back)])
    doc = "def f(x):\n    "  # a line of indentation only stays in the prefix, as in PSM
    ctx = build_completion_context(doc, len(doc), fim=line)
    assert ctx.prompt == "<|fim_prefix|>def f(x):\n   <|fim_suffix|><|fim_middle|>"


def test_the_line_body_is_what_typing_code_on_a_line_of_only_indentation_extends():
    line = fim.ordered(fim.QWEN, "psm-line")
    ahead = line.line_body("x = 1\n   ", "\nb")
    assert ahead == "<|fim_prefix|>x = 1\n<|fim_suffix|>\nb<|fim_middle|>   "
    # The first character typed there (its space held back or not) gives a prompt that extends it.
    assert line.body("x = 1\n   ", "\nb", held_back=" r").startswith(ahead)
    assert line.body("x = 1\n    (", "\nb").startswith(ahead)
    # None where body() has that layout already, the two layouts are one, or for other orders.
    assert line.line_body("x = 1\n    a", "\nb") == ""  # code on the line
    assert line.line_body("x = 1\n", "\nb") == ""  # an empty line
    assert line.line_body("x = 1\n    ", "\n\n") == ""  # nothing after the cursor: PSM's layout stays
    assert fim.QWEN.line_body("x = 1\n    ", "\nb") == ""
    assert fim.ordered(fim.QWEN, "spm").line_body("x = 1\n    ", "\nb") == ""
