"""Tests for aipc_lsp.postprocess.trim_suggestion, table-driven.

Each case is a cursor situation (line_prefix | line_suffix, the document after the
cursor) plus raw model output, and the suggestion + `complete` flag expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from aipc_lsp.postprocess import END_MARKERS, Trimmed, trim_suggestion


@dataclass
class Case:
    id: str
    raw: str
    text: str
    complete: bool | None  # None: not checked
    line_prefix: str = ""
    line_suffix: str = ""
    # Document text after the cursor; defaults to line_suffix.
    suffix: str | None = None
    held_back: str = ""
    max_lines: int = 8
    finished: bool = False
    marks: list = field(default_factory=list)
    copy_window: str | None = None
    above: str = ""
    line_comment: str = "#"

    def run(self) -> Trimmed:
        return trim_suggestion(
            self.raw,
            line_prefix=self.line_prefix,
            line_suffix=self.line_suffix,
            suffix=self.line_suffix if self.suffix is None else self.suffix,
            held_back=self.held_back,
            max_lines=self.max_lines,
            finished=self.finished,
            copy_window=self.copy_window,
            above=self.above,
            line_comment=self.line_comment,
        )


def params(cases: list[Case]):
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


def check(case: Case) -> None:
    got = case.run()
    assert got.text == case.text, f"{case.id}: text"
    if case.complete is not None:
        assert got.complete is case.complete, f"{case.id}: complete"


# --- token healing: the held-back space ---------------------------------------------------

HELD_BACK = [
    Case("held-back space stripped", raw=" a + b", text="a + b", complete=False,
         line_prefix="    return ", held_back=" "),
    Case("held-back space stripped, line finished", raw=" a + b\n\n", text="a + b", complete=True,
         line_prefix="    return ", held_back=" ", suffix="\n\ndef g():\n    pass\n"),
    Case("held-back space, mid-line JS", raw=" b);", text="b", complete=False,
         line_prefix="  const sum = add(a, ", line_suffix=");", held_back=" ", suffix=");\n"),
    Case("output without the held-back space is left alone", raw="a + b", text="a + b",
         complete=False, line_prefix="    return ", held_back=" "),
    Case("only the one held-back space is removed", raw="  # comment", text=" # comment",
         complete=False, line_prefix="x = 1 ", held_back=" "),
    Case("indent-only line: the model wrote the whole indentation again", raw="    return [row[:] for row in m]",
         text="return [row[:] for row in m]", complete=False, line_prefix="    ", held_back=" "),
    Case("indent-only line: indentation deeper than the cursor's is kept", raw="        x += 1\n",
         text="    x += 1", complete=False, line_prefix="    ", held_back=" "),
    Case("indent-only line: the usual held-back space", raw=" return x\n", text="return x", complete=False,
         line_prefix="    ", held_back=" "),
    # Healed text (constrained decoding rewrites it; the editor already has it).
    Case("healed word: its rest", raw=".join(root, name))\n", text="in(root, name))", complete=True,
         line_prefix="        p = os.path.jo", held_back=".jo"),
    Case("healed word still being rewritten: wait", raw=".", text="", complete=False,
         line_prefix="        p = os.path.jo", held_back=".jo"),
    Case("healed word rewritten and nothing after it yet", raw=".jo", text="", complete=False,
         line_prefix="        p = os.path.jo", held_back=".jo"),
    Case("healed text the answer does not begin with (no constraint): nothing", raw="(x)\n", text="",
         complete=True, line_prefix="        p = os.path.jo", held_back=".jo"),
    Case("healed punctuation", raw="(a, b)\n", text="a, b)", complete=True,
         line_prefix="    x = max(", held_back="("),
]

# --- empty or indent-only line where the model first ends the line ------------------------

INDENT_ONLY = [
    Case("newline then indented line: kept, dedented to the cursor",
         raw="\n    total = sum(values)\n", text="total = sum(values)", complete=False,
         line_prefix="    ", held_back=" ", suffix="\n    return total\n"),
    Case("newline then indented block: later lines keep their indentation",
         raw="\n    x = 0\n    for v in values:\n        x += v\n\n",
         text="x = 0\n    for v in values:\n        x += v", complete=True,
         line_prefix="    ", held_back=" ", suffix="\n"),
    Case("newline then deeper indentation: only the cursor's columns removed",
         raw="\n        x = 1\n", text="    x = 1", complete=False, line_prefix="    ", held_back=" "),
    Case("several newlines before the line", raw="\n\n    x = 1\n", text="x = 1", complete=False,
         line_prefix="    ", held_back=" "),
    Case("newline then dedented line: outside the block, empty and complete",
         raw="\ndef other():\n", text="", complete=True,
         line_prefix="    ", held_back=" ", suffix="\n\nclass A:\n    pass\n"),
    Case("newline then dedented line: one token is enough to judge",
         raw="\nprint", text="", complete=True, line_prefix="        ", held_back=" "),
    Case("only a newline so far: nothing to judge yet", raw="\n", text="", complete=False,
         line_prefix="    ", held_back=" "),
    Case("newline and indentation so far: nothing to judge yet", raw="\n    ", text="",
         complete=False, line_prefix="    ", held_back=" "),
    Case("only a newline and the model finished", raw="\n", text="", complete=True,
         line_prefix="    ", held_back=" ", finished=True),
    Case("tab-indented Go body; the closing brace is already there",
         raw="\n\tx := compute()\n\treturn x\n}\n", text="x := compute()\n\treturn x", complete=True,
         line_prefix="\t", suffix="\n}\n"),
    Case("mixed indentation counts in tab stops: ' \\t' is column 4, the next line at 4 stays",
         raw="x = 1\n    y = 2\n\n", text="x = 1\n    y = 2", complete=True, line_prefix=" \t", suffix=""),
    Case("mixed indentation counts in tab stops: '  \\t  ' is column 6, a line at 4 ends it",
         raw="x = 1\n    y = 2\n", text="x = 1", complete=True, line_prefix="  \t  ", suffix=""),
    Case("empty line at top level", raw="\nimport os\nimport sys\n\n",
         text="import os\nimport sys", complete=True, line_prefix="", suffix=""),
]

# --- a started line the model breaks and writes again from its start ------------------------

RESTARTED = [
    Case("the line written again after a break: the rest of it", raw="\n        self.hits = 0\n\n",
         text="hits = 0", complete=True, line_prefix="        self.", suffix="\n        self.misses = 0\n"),
    Case("the line written again, a mid-line cursor: the rest less the overlap",
         raw="\n    total = sum(values)\n", text="values", complete=True,
         line_prefix="    total = sum(", line_suffix=")", suffix=")\n"),
    Case("written again with a block: its lines follow", raw="\n    for v in values:\n        x += v\n\n",
         text=" v in values:\n        x += v", complete=None, line_prefix="    for", suffix="\n"),
    Case("the break so far: nothing to judge yet", raw="\n        se", text="", complete=False,
         line_prefix="        self."),
    Case("only a break so far: nothing to judge yet", raw="\n", text="", complete=False,
         line_prefix="        self."),
    Case("a break and the model finished: nothing", raw="\n", text="", complete=True,
         line_prefix="        self.", finished=True),
    Case("another line after a finished statement: kept as the next line",
         raw="\n    y = 2\n", text="\n    y = 2", complete=None, line_prefix="    x = 1", finished=True),
    Case("the typed start at another indentation is no rewrite", raw="\n            self.hits = 0\n",
         text="\n            self.hits = 0", complete=None, line_prefix="        self.", finished=True),
]

# --- mid-line: single-line mode with overlap trimming ---------------------------------------

MID_LINE = [
    Case("print(|): duplicate closer dropped", raw="'hi')", text="'hi'", complete=False,
         line_prefix="    print(", line_suffix=")", suffix=")\n"),
    Case("print(|): balanced call kept whole", raw="foo(a)", text="foo(a)", complete=False,
         line_prefix="    print(", line_suffix=")", suffix=")\n"),
    Case("print(|): balanced call plus duplicate closer", raw="foo(a))", text="foo(a)",
         complete=False, line_prefix="    print(", line_suffix=")", suffix=")\n"),
    Case("sorted(key=|): two closers where the line needs none", raw="lambda x: x['age']))\n",
         text="lambda x: x['age']", complete=True, line_prefix="    return sorted(people, key=",
         line_suffix=")", suffix=")\n"),
    Case("closers the line before the cursor opened and nothing after closes are kept", raw="x))",
         text="x))", complete=False, line_prefix="print(f(", line_suffix=" # note", suffix=" # note\n"),
    Case("a newline ends the single line: complete", raw="'hi')\n    print('bye')\n",
         text="'hi'", complete=True, line_prefix="    print(", line_suffix=")", suffix=")\n"),
    Case("JS array literal with '];' after the cursor", raw="1, 2, 3];", text="1, 2, 3",
         complete=False, line_prefix="const xs = [", line_suffix="];", suffix="];\nfoo(xs);\n"),
    Case("string closer without brackets is trimmed", raw='hello"', text="hello", complete=False,
         line_prefix='greeting = "', line_suffix='"', suffix='"\n'),
    Case("overlap matched against the stripped line suffix", raw="x)  ", text="x", complete=False,
         line_prefix="f(", line_suffix=")  ", suffix=")  \n"),
    Case("no overlap: kept as is", raw="user.name", text="user.name", complete=False,
         line_prefix="    print(", line_suffix=")", suffix=")\n"),
    Case("mid-line never spans lines, even after a block opener", raw="x, y):\n    pass\n",
         text="x, y", complete=True, line_prefix="def f(", line_suffix="):", suffix="):\n"),
    Case("block opened on the cursor line ends at its dedent (indent-only line)",
         raw="\n    for v in values:\n        total += v\n    return total\n",
         text="for v in values:\n        total += v", complete=True,
         line_prefix="    ", held_back=" ", suffix="\n"),
    Case("mid-line end marker", raw="'hi'<|im_end|>junk", text="'hi'", complete=True,
         line_prefix="print(", line_suffix=")"),
    Case("a comment of the model's would swallow the line's rest: cut, then the duplicate closer",
         raw="lambda x: x['age'])  # Sorts by age in ascending order\n", text="lambda x: x['age']", complete=True,
         line_prefix="    return sorted(people, key=", line_suffix=")", suffix=")\n"),
    Case("a comment marker inside a string is code", raw="'# of items: ' + str(n)",
         text="'# of items: ' + str(n)", complete=False, line_prefix="    print(", line_suffix=")", suffix=")\n"),
    Case("an escaped quote does not end the string", raw="'it\\'s # not a comment'",
         text="'it\\'s # not a comment'", complete=False, line_prefix="    print(", line_suffix=")", suffix=")\n"),
    Case("the line's own comment after the cursor stays; the model's copy of it goes", raw="5  # the count",
         text="5", complete=False, line_prefix="    n = ", line_suffix="  # the count", suffix="  # the count\n"),
    Case("the C family's comment", raw="a + b); // sum", text="a + b", complete=False, line_comment="//",
         line_prefix="  f(", line_suffix=");", suffix=");\n"),
    Case("`//` right after code is no comment (an operator in some languages)", raw="a//b", text="a//b",
         complete=False, line_comment="//", line_prefix="  f(", line_suffix=")", suffix=")\n"),
    Case("no line comment known: kept", raw="x)  # note", text="x)  # note", complete=False, line_comment="",
         line_prefix="f(", line_suffix=")", suffix=")\n"),
    Case("whitespace-only line suffix means end of line (multi-line mode)",
         raw="\n    return 1\nprint()\n", text="\n    return 1", complete=True,
         line_prefix="def f():", line_suffix="   ", suffix="   \n"),
]

# --- multi-line mode ---------------------------------------------------------------------------

MULTI_LINE = [
    Case("def body ends at the dedent", raw="\n    return a + b\n\ndef sub(a, b):\n",
         text="\n    return a + b", complete=True,
         line_prefix="def add(a, b):", suffix="\n"),
    Case("def body: blank line inside the block is kept",
         raw="\n    a = 1\n\n    b = 2\n\nprint(f())\n", text="\n    a = 1\n\n    b = 2", complete=True,
         line_prefix="def f():", suffix="\n"),
    Case("model writes the opener itself", raw="x, y):\n    return x * y\n\nprint(f(2, 3))\n",
         text="x, y):\n    return x * y", complete=True, line_prefix="def f(", suffix="\n"),
    Case("nested block ends at the opener's level",
         raw="\n        return 1\n    return 0\n", text="\n        return 1", complete=True,
         line_prefix="    if n < 2:", suffix="\n"),
    Case("for header on the cursor line",
         raw="10):\n        print(i)\n    return\n", text="10):\n        print(i)", complete=True,
         line_prefix="    for i in range(", suffix="\n"),
    Case("JS block keeps its closing brace", raw="\n  return a + b;\n}\n\nconsole.log(add(1, 2));\n",
         text="\n  return a + b;\n}", complete=True, line_prefix="function add(a, b) {", suffix="\n"),
    Case("call arguments keep the closing paren", raw="\n    a,\n    b,\n)\nprint(x)\n",
         text="\n    a,\n    b,\n)", complete=True, line_prefix="result = call(", suffix="\n"),
    Case("arrow function opener", raw="\n  return x * 2;\n};\n", text="\n  return x * 2;\n};",
         complete=True, line_prefix="const double = (x) =>", suffix="\n"),
    Case("statements at the same level continue until a blank line",
         raw="\n    for n in nums:\n        total += n\n    return total\n\ndef g():\n",
         text="\n    for n in nums:\n        total += n\n    return total", complete=True,
         line_prefix="    total = 0", suffix="\n"),
    Case("blank line ends a non-block run", raw="\nimport sys\n\nimport re\n",
         text="\nimport sys", complete=True, line_prefix="import os", suffix="\n"),
    Case("dedent ends a non-block run", raw="\n        y = x * 2\n    return y\n",
         text="\n        y = x * 2", complete=True, line_prefix="        x = compute()", suffix="\n"),
    Case("max_lines stops the suggestion", raw="\n    a = 1\n    b = 2\n    c = 3\n    d = 4\n",
         text="\n    a = 1\n    b = 2", complete=True, line_prefix="def f():", max_lines=3, suffix="\n"),
    Case("max_lines=1 keeps only the cursor line", raw="x = 1\ny = 2\nz = 3\n", text="x = 1",
         complete=True, max_lines=1),
    Case("repeat of the next code line after the cursor stops",
         raw="\n    result = compute()\n    return result\n", text="result = compute()", complete=True,
         line_prefix="    ", held_back=" ", suffix="\n\n    return result\n"),
    Case("repeat check ignores indentation differences",
         raw="\n    for x in xs:\n        print(x)\n    cleanup()\n", text="\n    for x in xs:\n        print(x)",
         complete=True, line_prefix="    setup()", suffix="\n  cleanup()\n"),
    Case("a line merely similar to the next code line is kept",
         raw="\n    x = load()\n    y = x\n", text="\n    x = load()\n    y = x", complete=False,
         line_prefix="    prepare()", suffix="\n    x = load(path)\n"),
    Case("trailing whitespace removed on every line",
         raw="\n    a = 1   \n    b = 2\t\nprint(f())\n", text="\n    a = 1\n    b = 2", complete=True,
         line_prefix="def f():", suffix="\n"),
    Case("blank lines inside a block do not end it", raw="\n    a = 1\n\n\n", text="\n    a = 1",
         complete=False, line_prefix="def f():", suffix="\n"),
    Case("trailing blank lines dropped", raw="\n    pass\n\n\n", text="\n    pass", complete=False,
         line_prefix="class A:", suffix=""),
]

# --- end markers --------------------------------------------------------------------------------

END = [
    Case("<|im_end|> cuts and completes", raw="\n    return x<|im_end|>\n<|im_start|>user",
         text="\n    return x", complete=True, line_prefix="def f(x):", suffix="\n"),
    Case("``` after code ends it", raw="\n    return 1\n```\nThis function returns 1.",
         text="\n    return 1", complete=True, line_prefix="def one():", suffix="\n"),
    Case("marker before any code leaves nothing", raw="<|endoftext|>def f():", text="",
         complete=True),
    Case("earliest of several markers wins", raw="x = 1\n<|end|>\ny = 2```", text="x = 1",
         complete=True),
    Case("marker on the last unfinished line makes it final", raw="\n    return 1<|eot_id|>",
         text="\n    return 1", complete=True, line_prefix="def f():", suffix="\n"),
]

# --- whitespace and the complete / finished flags ------------------------------------------------

FLAGS = [
    Case("whitespace-only output is empty", raw="   ", text="", complete=False, line_prefix="x = 1"),
    Case("whitespace-only lines are empty", raw="   \n  \n", text="", complete=True,
         line_prefix="    foo()"),
    Case("empty output", raw="", text="", complete=False, line_prefix="def f():"),
    Case("last line still being written: not complete, not shown",
         raw="\n    return 1\n    ret", text="\n    return 1", complete=False,
         line_prefix="def f():", suffix="\n"),
    Case("same output once the model finished: last line kept",
         raw="\n    return 1\n    return 2", text="\n    return 1\n    return 2", complete=None,
         line_prefix="def f():", suffix="\n", finished=True),
    Case("finished single last line is kept", raw="\n    return 1", text="\n    return 1", complete=None,
         line_prefix="def f():", suffix="\n", finished=True),
    Case("unfinished single last line is held back", raw="\n    return 1", text="", complete=False,
         line_prefix="def f():", suffix="\n"),
    Case("finished: stop rules still apply to the last line", raw="\n    return 1\nprint(f())",
         text="\n    return 1", complete=True, line_prefix="def f():", suffix="\n", finished=True),
    Case("first line alone is shown while being written", raw="total = a +", text="total = a +",
         complete=False, line_prefix="    ", suffix="\n"),
]


@pytest.mark.parametrize("case", params(HELD_BACK))
def test_held_back(case):
    check(case)


@pytest.mark.parametrize("case", params(INDENT_ONLY))
def test_indent_only_line(case):
    check(case)


@pytest.mark.parametrize("case", params(RESTARTED))
def test_a_started_line_written_again(case):
    check(case)


@pytest.mark.parametrize("case", params(MID_LINE))
def test_mid_line(case):
    check(case)


@pytest.mark.parametrize("case", params(MULTI_LINE))
def test_multi_line(case):
    check(case)


@pytest.mark.parametrize("case", params(END))
def test_end_markers(case):
    check(case)


@pytest.mark.parametrize("marker", END_MARKERS)
def test_every_end_marker_cuts(marker):
    got = trim_suggestion(f"x = 1{marker}\nmore", line_prefix="", line_suffix="", suffix="")
    assert got == Trimmed("x = 1", True)


@pytest.mark.parametrize("case", params(FLAGS))
def test_flags_and_whitespace(case):
    check(case)


def test_streaming_complete_flag_goes_true_exactly_at_the_stop():
    """Feed a def body piece by piece, as the engine's on_text would: `complete` stays
    False while the outcome can still change and turns True at the first stop condition."""
    pieces = ["\n", "    ", "return", " a", " +", " b", "\n", "\n", "def", " sub", "(a, b):", "\n", "    pass"]
    args = dict(line_prefix="def add(a, b):", line_suffix="", suffix="\n")
    raw = ""
    flags = []
    for piece in pieces:
        raw += piece
        flags.append(trim_suggestion(raw, **args).complete)
    stop_at = pieces.index("\n", pieces.index("(a, b):"))
    assert flags[:stop_at] == [False] * stop_at
    assert all(flags[stop_at:])
    assert trim_suggestion(raw, **args).text == "\n    return a + b"


def test_text_is_stable_once_complete():
    args = dict(line_prefix="def add(a, b):", line_suffix="", suffix="\n")
    raw = "\n    return a + b\n\ndef sub(a, b):\n"
    done = trim_suggestion(raw, **args)
    assert done.complete
    for more in ["    return a - b\n", "\nclass X:\n    pass\n", "<|im_end|>"]:
        assert trim_suggestion(raw + more, **args) == done


# --- edge cases found in review (fixed) ---------------------------------------------------------

BUGS = [
    Case("print(|): output that is only the existing closer should be empty",
         raw=")\n", text="", complete=True,
         line_prefix="    print(", line_suffix=")", suffix=")\n"),
    Case("first line repeating the next code line should be dropped",
         raw="\n    return result\n", text="", complete=True,
         line_prefix="    ", held_back=" ", suffix="\n    return result\n"),
    Case("max_lines reached: complete before the next line is decoded",
         raw="\n    a = 1\n    b", text="\n    a = 1", complete=True,
         line_prefix="def f():", suffix="\n", max_lines=2),
]


@pytest.mark.parametrize("case", params(BUGS))
def test_review_edge_cases(case):
    check(case)


# --- fill-in-the-middle: what a code model does past the hole ------------------------------

FIM = [
    Case("a statement being finished ends with its line", raw="compute(a, b)\nprint(total)\n",
         text="compute(a, b)", complete=True, line_prefix="    total = ", suffix="\n    return total\n"),
    Case("a statement that opens a block goes on into it", raw=" x in items:\n        print(x)\n\n",
         text="x in items:\n        print(x)", complete=None, line_prefix="    for", held_back=" ",
         suffix="\n"),
    Case("a copy of a line a few lines below is no suggestion",
         raw="return len(self.items)\n\n", text="", complete=True, line_prefix="        ",
         suffix="\n\n    def peek(self):\n        return self.items[-1]\n\n    def __len__(self):\n"
                "        return len(self.items)\n"),
    Case("a short line that also comes below is kept (real code repeats `break`)", raw="break\n",
         text="break", complete=None, line_prefix="            ",
         suffix="\n        if done:\n            break\n"),
    Case("a line of the next method the prompt did not show the model is no copy",
         raw="self.traverse(node.value)\n\n", text="self.traverse(node.value)", complete=True,
         line_prefix="            ",
         suffix="\n\n    def visit_Return(self, node):\n        if node.value:\n            self.traverse(node.value)\n",
         copy_window="\n\n"),
    Case("a copy of a line the prompt showed the model is still none",
         raw="self.traverse(node.value)\n\n", text="", complete=True, line_prefix="            ",
         suffix="\n        else:\n            self.traverse(node.value)\n\n    def other(self):\n",
         copy_window="\n        else:\n            self.traverse(node.value)\n\n"),
    Case("a line the code above the cursor has too is the code's own (symmetric branches), not a copy",
         raw="value = convert(action, arg_strings)\n\n", text="value = convert(action, arg_strings)",
         complete=True, line_prefix="            ",
         suffix="\n        else:\n            value = convert(action, arg_strings)\n",
         above="        if many:\n            value = convert(action, arg_strings)\n        elif one:\n            "),
    Case("a copy is judged once the line is whole", raw="return len(self.it", text="return len(self.it",
         complete=False, line_prefix="        ", suffix="\n    def size(self):\n        return len(self.items)\n"),
    Case("a line the user has started may go on as one below does (they are writing it again)",
         raw="(current)\n", text="rent)", complete=True, line_prefix="            lines.append(cur",
         held_back="(cur", suffix="\n            current = word\n    if current:\n        lines.append(current)\n"),
    Case("a model that skipped the next line stops where it goes on with the one after it",
         raw="result = []\n    while i < len(a):\n        i += 1\n", text="result = []", complete=True,
         line_prefix="    ", suffix="\n    i = 0\n    while i < len(a):\n        i += 1\n    return result\n"),
    Case("a deeper line that the code below also has is the block's own",
         raw="if strict:\n        return None\n    return found\n", text="if strict:\n        return None",
         complete=None, line_prefix="    ", suffix="\n    if not found:\n        return None\n"),
    Case("a line further down the code below may come again (real code repeats idioms)",
         raw="fill()\n    with block():\n        visit()\n", text="fill()\n    with block():\n        visit()",
         complete=None, finished=True, line_prefix="    ",
         suffix="\n\ndef other():\n    setup()\n    with block():\n        visit()\n"),
]


@pytest.mark.parametrize("case", params(FIM))
def test_fill_in_the_middle(case: Case):
    check(case)
