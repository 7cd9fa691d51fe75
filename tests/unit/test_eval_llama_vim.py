"""aipc_lsp.eval.llama_vim: llama.vim's request, llama.cpp's infill prompt and stop rules, and
llama.vim's post-processing and accept, on examples worked out from their sources."""

from __future__ import annotations

from aipc_lsp.eval.llama_vim import (N_PREFIX_LINES, N_SUFFIX_LINES, RING_CHUNK_LINES, RING_CHUNKS, ServerStop, accept,
                                     infill_prompt, local_context, render, ring_chunks)

DOC = ["def add(a, b):", "    ", "", "print(add(1, 2))"]


def test_a_blank_cursor_line_is_sent_empty_and_turns_the_indent_rule_off():
    ctx = local_context(DOC, 1, 4)
    assert (ctx.prefix, ctx.middle, ctx.suffix, ctx.indent) == ("def add(a, b):\n", "", "\n\nprint(add(1, 2))\n", 0)


def test_mid_line_the_line_is_split_at_the_cursor():
    lines = ["def f(x):", "    total = sum(x)", "    return total"]
    ctx = local_context(lines, 1, 11)
    assert (ctx.prefix, ctx.middle, ctx.suffix, ctx.indent) == ("def f(x):\n", "    total =", " sum(x)\n    return total\n", 4)


def test_line_windows():
    lines = [f"x{i} = {i}" for i in range(1000)]
    ctx = local_context(lines, 500, 0)
    assert ctx.prefix.split("\n")[:-1] == lines[500 - N_PREFIX_LINES:500]
    assert ctx.suffix.split("\n")[1:-1] == lines[501:501 + N_SUFFIX_LINES]
    first = local_context(lines, 0, 3)
    assert first.prefix == "\n" and first.middle == "x0 "


def test_the_infill_prompt_in_the_repo_level_format():
    ctx = local_context(DOC, 1, 4)
    prompt = infill_prompt(ctx, [("lib/util.py", "def helper():\n    pass\n")])
    assert prompt == ("<|repo_name|>myproject\n<|file_sep|>lib/util.py\ndef helper():\n    pass\n"
                      "<|file_sep|>filename\n<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n\nprint(add(1, 2))\n"
                      "<|fim_middle|>")
    # Without other files the repo name and the current file's separator stay.
    assert infill_prompt(ctx, []).startswith("<|repo_name|>myproject\n<|file_sep|>filename\n<|fim_prefix|>")


class Tokens:
    """A tokenizer with one token per character."""

    def count(self, text):
        return len(text)

    def keep_last(self, text, n):
        return text[-n:] if len(text) > n else text

    def keep_first(self, text, n):
        return text[:n]


def test_prefix_and_suffix_are_cut_where_the_server_cuts_them():
    lines = ["a" * 3000, "    x = ", "b" * 3000]
    ctx = local_context(lines, 1, 8)
    prompt = infill_prompt(ctx, [], Tokens())
    prefix = prompt.split("<|fim_prefix|>")[1].split("    x = ")[0]
    suffix = prompt.split("<|fim_suffix|>")[1].split("<|fim_middle|>")[0]
    assert len(prefix) == 1536  # 3/4 of n_batch 2048
    assert len(suffix) == 512 - 2 - len("    x = ")


def test_ring_chunks():
    other = "\n".join(f"line {i}" for i in range(150)) + "\n"
    chunks = ring_chunks([("a.py", other)])
    assert [len(text.split("\n")) - 1 for _, text in chunks] == [RING_CHUNK_LINES, RING_CHUNK_LINES, 22]
    assert all(text.endswith("\n") and name == "a.py" for name, text in chunks)
    many = ring_chunks([(f"f{i}.py", "x = 1\n") for i in range(20)])
    assert len(many) == RING_CHUNKS and many[-1][0] == "f19.py"


def feed(stop, pieces, ms=0.0):
    for piece in pieces:
        if stop.feed(piece, ms):
            return True
    return False


def test_the_indent_rule_stops_a_line_after_the_one_indented_less():
    # As the server checks: the line is seen one piece after its first character arrived.
    stop = ServerStop(n_indent=4)
    assert feed(stop, ["x = 1", "\n", "    y", " = 2", "\n", "z", " = 3"])
    assert stop.text == "x = 1\n    y = 2\n" and stop.stopped_by == "indent"


def test_the_indent_rule_is_off_at_indent_zero():
    stop = ServerStop(n_indent=0, t_max_predict_ms=0)
    assert not feed(stop, ["x = 1", "\n", "z", " = 3", "\n", "w"])
    assert stop.text == "x = 1\nz = 3\nw"


def test_after_the_time_budget_a_new_line_ends_the_answer():
    stop = ServerStop(n_indent=0, t_max_predict_ms=250)
    assert not stop.feed("return x", 100)
    assert stop.feed(" + 1\n", 300) and stop.stopped_by == "time"
    assert stop.text == "return x + 1\n"
    early = ServerStop(n_indent=0, t_max_predict_ms=250)
    assert not feed(early, ["a\n", "b\n"], ms=10)


def test_render_and_accept_on_a_blank_line():
    lines = ["def f(x):", "    ", "    return y"]
    rendered = render("    y = x * 2\n\n", lines, 1, 4)
    assert rendered.content == ["y = x * 2"] and rendered.line_cur == "    " and rendered.can_accept
    assert accept(lines, 1, 4, rendered) == ["def f(x):", "    y = x * 2", "    return y"]
    # The model's own indentation is kept (here less than the cursor's).
    rendered = render("  y = 0", lines, 1, 4)
    assert accept(lines, 1, 4, rendered)[1] == "  y = 0"


def test_render_and_accept_mid_line_with_more_lines():
    lines = ["def f(x):", "    total =", "    return total"]
    rendered = render(" sum(x)\n    total += 1", lines, 1, 11)
    assert rendered.content == [" sum(x)", "    total += 1"]
    assert accept(lines, 1, 11, rendered) == ["def f(x):", "    total = sum(x)", "    total += 1", "    return total"]


def test_what_repeats_the_next_line_is_dropped():
    lines = ["def f(x):", "    ", "", "    return y"]
    rendered = render("    return y", lines, 1, 4)
    assert rendered.content == [""] and not rendered.can_accept
    assert accept(lines, 1, 4, rendered) == lines


def test_nothing_or_whitespace_cannot_be_accepted():
    lines = ["x = 1", "    "]
    assert not render("", lines, 1, 4).can_accept
    assert not render("   \n\n", lines, 1, 4).can_accept
