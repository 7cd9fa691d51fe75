"""Completion tasks: real code with a hole, the cursor in it, and what the hole held.

Three sources, each deterministic (a fixed seed per file and kind):
- "stdlib": the pure-Python modules of the standard library this interpreter ships (the set of
  files is fixed; their text, and so the tasks, depend on the Python version the report states);
- "tests": the corpus (aipc_lsp/eval/corpus), small modules with checks, so the completed code
  can be run (pass@1);
- "crossfile": corpus modules that import a helper module, with a hole in a line that uses what
  only the helper defines; the helper is opened beside it, as an editor would have it open.

Three kinds of hole:
- "line": a whole line, the cursor after its indentation (the common case);
- "midline": the rest of a line after a token boundary;
- "block": the body (2-4 lines) of an if/for/while/with/try, the cursor after its first line's indentation.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import keyword
import random
import re
import sysconfig
import tokenize
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

KINDS = ("line", "midline", "block", "midword")
# The order holes are taken in: the kinds with the fewest sites first.
PICK_ORDER = ("block", "midline", "midword", "line")
SOURCES = ("stdlib", "tests", "crossfile")
# Not in the eval unless asked for: tasks to try a prompt or post-processing change on first, so
# that what the eval reports was not tuned on its own tasks.
DEV_SOURCE = "dev"
# Also not in the eval unless asked for: holes in this server's own modules, code written after the
# models were trained, so none of them can have seen it (the standard library's they may have).
# They follow the code: a commit's tasks are that commit's.
PROJECT_SOURCE = "project"
SEED = "aipc-lsp-eval-1"

# Pure-Python standard library modules present in every CPython 3.10-3.14.
STDLIB_FILES = (
    "textwrap.py", "shlex.py", "fnmatch.py", "difflib.py", "statistics.py", "fractions.py",
    "posixpath.py", "ipaddress.py", "configparser.py", "csv.py", "json/encoder.py", "urllib/parse.py",
)
# The development tasks' files: other pure-Python modules, none of the eval's.
DEV_FILES = (
    "calendar.py", "heapq.py", "pprint.py", "dataclasses.py", "argparse.py", "gettext.py", "string.py",
    "random.py", "base64.py", "quopri.py", "colorsys.py", "tokenize.py", "ast.py", "inspect.py", "tarfile.py",
    "shutil.py", "glob.py", "netrc.py", "plistlib.py", "mimetypes.py",
)
# Corpus modules with checks, and the helper each cross-file module imports.
CORPUS_MODULES = ("intervals", "textutil", "inventory", "graphs", "matrix", "durations", "lru", "expr")
CROSSFILE_MODULES = {"invoice": "money", "layout": "geometry", "importer": "schema"}
# Holes per file and kind. The first hole of each kind (and the corpus's second line) is the
# original 78-task set, kept as it was (`--quick` picks from it); the others add statistical power:
# with 78 tasks one task was 1.3 points, so two contenders 5 tasks apart could not be told apart.
PER_FILE = {"stdlib": {"line": 3, "midline": 3, "block": 3, "midword": 2},
            "tests": {"line": 4, "midline": 3, "block": 2, "midword": 2},
            "crossfile": {"line": 3, "midline": 3, "block": 2, "midword": 2},
            "dev": {"line": 2, "midline": 2, "block": 2, "midword": 2},
            "project": {"line": 2, "midline": 2, "block": 2, "midword": 2}}
ORIGINAL_PER_FILE = {"stdlib": {"line": 1, "midline": 1, "block": 1}, "dev": {"line": 0, "midline": 0, "block": 0},
                     "project": {},
                     "tests": {"line": 2, "midline": 1, "block": 1},
                     "crossfile": {"line": 2, "midline": 1, "block": 1}}
QUICK_PER_GROUP = 2
MIN_CODE, MAX_CODE = 6, 100
BLOCK_LINES = (2, 4)


@dataclass(frozen=True)
class Task:
    id: str
    source: str
    kind: str
    path: str  # where the document is in the (pretend) project, e.g. "corpus/intervals.py"
    text: str  # the document with the hole
    line: int  # the cursor: 0-based line
    column: int  # and code points into it
    expected: str  # what the hole held, from the cursor on
    other_files: tuple[tuple[str, str], ...] = ()  # (path, text) of files open beside it
    checks: str | None = None  # corpus module whose checks test the completed document
    round: int = 0  # the file's n-th hole of this kind (0-based; see PER_FILE)

    @property
    def original(self) -> bool:
        """One of the original 78 tasks (the eval's set until the sixteenth session)."""
        return self.round < ORIGINAL_PER_FILE[self.source].get(self.kind, 0)

    @property
    def offset(self) -> int:
        lines = self.text.split("\n")
        return sum(len(line) + 1 for line in lines[: self.line]) + self.column

    @property
    def module(self) -> str:
        return Path(self.path).stem


@dataclass(frozen=True)
class Site:
    """A hole: lines first..last (0-based, inclusive) replaced by the first one's text up to `column`."""

    first: int
    last: int
    column: int


def make_task(*, source: str, kind: str, path: str, text: str, site: Site,
              other_files: tuple = (), checks: str | None = None, round: int = 0) -> Task:
    lines = text.split("\n")
    expected = "\n".join(lines[site.first: site.last + 1])[site.column:]
    holed = lines[: site.first] + [lines[site.first][: site.column]] + lines[site.last + 1:]
    return Task(id=f"{path}:{site.first + 1}:{kind}", source=source, kind=kind, path=path,
                text="\n".join(holed), line=site.first, column=site.column, expected=expected,
                other_files=other_files, checks=checks, round=round)


def _function_bodies(tree: ast.AST) -> list[ast.stmt]:
    """Every statement inside a function or method (nested ones included)."""
    found: list[ast.stmt] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in node.body:
                found += [n for n in ast.walk(inner) if isinstance(n, ast.stmt)]
    return found


SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Expr, ast.Raise, ast.Delete)
COMPOUND = (ast.If, ast.For, ast.While, ast.With, ast.Try)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _plain(line: str) -> bool:
    """A line the expected text can be compared on: no comment, a sensible length."""
    code = line.strip()
    return "#" not in code and MIN_CODE <= len(code) <= MAX_CODE


def line_sites(text: str, tree: ast.AST) -> list[Site]:
    lines = text.split("\n")
    sites = set()
    for node in _function_bodies(tree):
        if not isinstance(node, SIMPLE) or _is_docstring(node) or node.lineno != node.end_lineno:
            continue
        line = lines[node.lineno - 1]
        indent = len(line) - len(line.lstrip())
        # One statement alone on its line (the offsets count UTF-8 bytes).
        alone = node.col_offset == indent and node.end_col_offset == len(line.rstrip().encode("utf-8"))
        if alone and _plain(line):
            sites.add(Site(node.lineno - 1, node.lineno - 1, indent))
    return sorted(sites, key=lambda s: s.first)


def midline_sites(text: str, tree: ast.AST) -> list[Site]:
    """Token ends inside a line site, with at least 3 non-space characters left to complete."""
    lines = text.split("\n")
    sites = []
    for site in line_sites(text, tree):
        line = lines[site.first]
        for end in _token_ends(line.strip()):
            column = site.column + end
            if len(line[column:].strip()) >= 3:
                sites.append(Site(site.first, site.first, column))
    return sites


def _first_line_tokens(code: str) -> list[tokenize.TokenInfo]:
    """The Python tokens of one line of code (none when it does not tokenize alone)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code + "\n").readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    return [t for t in tokens if t.end[0] == 1]


def _token_ends(code: str) -> list[int]:
    significant = (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING)
    return [t.end[1] for t in _first_line_tokens(code) if t.type in significant][:-1]


def midword_sites(text: str, tree: ast.AST) -> list[Site]:
    """Inside a name of at least 4 characters, 1 to 3 characters into it (the user typing it)."""
    lines = text.split("\n")
    sites = []
    for site in line_sites(text, tree):
        line = lines[site.first]
        for start, end in _name_spans(line.strip()):
            for typed in range(1, min(3, end - start - 2) + 1):
                sites.append(Site(site.first, site.first, site.column + start + typed))
    return sites


def _name_spans(code: str) -> list[tuple[int, int]]:
    return [(t.start[1], t.end[1]) for t in _first_line_tokens(code) if t.type == tokenize.NAME
            and t.end[1] - t.start[1] >= 4 and not keyword.iskeyword(t.string)]


def block_sites(text: str, tree: ast.AST) -> list[Site]:
    lines = text.split("\n")
    sites = []
    for node in _function_bodies(tree):
        if not isinstance(node, COMPOUND):
            continue
        first, last = node.body[0].lineno - 1, node.body[-1].end_lineno - 1
        span = lines[first: last + 1]
        if first != node.lineno or not BLOCK_LINES[0] <= len(span) <= BLOCK_LINES[1]:
            continue  # a header over several lines, or a body too short or long
        if all(_plain(line) for line in span):
            sites.append(Site(first, last, len(lines[first]) - len(lines[first].lstrip())))
    return sorted(sites, key=lambda s: s.first)


SITE_FINDERS = {"line": line_sites, "midline": midline_sites, "block": block_sites, "midword": midword_sites}


def tasks_for_file(*, source: str, path: str, text: str, per_kind: dict[str, int], other_files: tuple = (),
                   checks: str | None = None, must_use: frozenset[str] = frozenset(),
                   first: dict[str, int] | None = None) -> list[Task]:
    """Holes in one file, none sharing a line. `must_use`: only holes whose expected text uses one
    of these names (the names a cross-file module imports from its helper).

    Each kind's candidate sites are shuffled by a generator seeded with the file's path and the
    kind (the same order on every run). The `first` holes of each kind are taken kind after kind
    (blocks first: they have the fewest sites), then the rest up to `per_kind` one of each kind a
    round, so asking for more holes keeps the ones the `first` counts alone give."""
    tree = ast.parse(text)
    lines = text.split("\n")
    kinds = sorted(per_kind, key=PICK_ORDER.index)
    pools = {}
    for kind in kinds:
        sites = SITE_FINDERS[kind](text, tree)
        if must_use:
            sites = [s for s in sites if _uses(lines, s, must_use)]
        pool = list(sites)
        random.Random(f"{SEED}/{path}/{kind}").shuffle(pool)
        pools[kind] = iter(pool)
    tasks, taken = [], set()
    counts = dict.fromkeys(kinds, 0)

    def take(kind: str) -> None:
        for site in pools[kind]:
            hole = set(range(site.first, site.last + 1))
            if not hole & taken:
                taken.update(hole)
                tasks.append(make_task(source=source, kind=kind, path=path, text=text, site=site,
                                       other_files=other_files, checks=checks, round=counts[kind]))
                counts[kind] += 1
                return

    for kind in kinds:
        for _ in range(min(per_kind[kind], (first or per_kind).get(kind, 0))):
            take(kind)
    for _ in range(max(per_kind.values(), default=0)):
        for kind in kinds:
            if counts[kind] < per_kind[kind]:
                take(kind)
    return sorted(tasks, key=lambda t: t.line)


def _uses(lines: list[str], site: Site, names: frozenset[str]) -> bool:
    """Whether the hole holds one of `names` (a name the hole begins inside counts whole)."""
    line = lines[site.first]
    inside = re.match(r"\w", line[site.column: site.column + 1]) is not None
    start = len(re.search(r"\w*$", line[: site.column]).group(0)) if inside else 0
    hole = "\n".join(lines[site.first: site.last + 1])[site.column - start:]
    return bool(set(re.findall(r"[A-Za-z_]\w*", hole)) & names)


def imported_names(text: str, module: str) -> frozenset[str]:
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            names.update(alias.asname or alias.name for alias in node.names)
    return frozenset(names)


def corpus_text(name: str) -> str:
    return resources.files("aipc_lsp.eval.corpus").joinpath(f"{name}.py").read_text(encoding="utf-8")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_tasks(per_file: dict = PER_FILE, files: tuple[str, ...] = STDLIB_FILES, source: str = "stdlib") -> list[Task]:
    tasks = []
    root = stdlib_dir()
    for relative in files:
        try:
            text = (root / relative).read_text(encoding="utf-8")
        except OSError:
            continue  # a trimmed standard library: the report lists how many tasks ran
        tasks += tasks_for_file(source=source, path=f"stdlib/{relative}", text=text, per_kind=per_file[source],
                                first=ORIGINAL_PER_FILE[source])
    return tasks


def dev_tasks(per_file: dict = PER_FILE) -> list[Task]:
    return stdlib_tasks(per_file, DEV_FILES, DEV_SOURCE)


def project_tasks(per_file: dict = PER_FILE) -> list[Task]:
    package = Path(__file__).resolve().parents[1]
    tasks = []
    for file in sorted(package.rglob("*.py")):
        relative = file.relative_to(package.parent).as_posix()
        if "/eval/corpus/" in relative:
            continue  # the eval's own
        tasks += tasks_for_file(source=PROJECT_SOURCE, path=relative, text=file.read_text(encoding="utf-8"),
                                per_kind=per_file[PROJECT_SOURCE])
    return tasks


def corpus_tasks(per_file: dict = PER_FILE) -> list[Task]:
    tasks = []
    for name in CORPUS_MODULES:
        tasks += tasks_for_file(source="tests", path=f"corpus/{name}.py", text=corpus_text(name),
                                per_kind=per_file["tests"], first=ORIGINAL_PER_FILE["tests"], checks=name)
    return tasks


def crossfile_tasks(per_file: dict = PER_FILE) -> list[Task]:
    tasks = []
    for name, helper in CROSSFILE_MODULES.items():
        text = corpus_text(name)
        tasks += tasks_for_file(source="crossfile", path=f"corpus/{name}.py", text=text,
                                per_kind=per_file["crossfile"], first=ORIGINAL_PER_FILE["crossfile"], checks=name,
                                other_files=((f"corpus/{helper}.py", corpus_text(helper)),),
                                must_use=imported_names(text, helper))
    return tasks


BUILDERS = {"stdlib": stdlib_tasks, "tests": corpus_tasks, "crossfile": crossfile_tasks, DEV_SOURCE: dev_tasks,
            PROJECT_SOURCE: project_tasks}


def build_tasks(*, sources=SOURCES, kinds=KINDS, quick: bool = False, limit: int | None = None) -> list[Task]:
    """The task set, interleaved by (source, kind) so that a `limit` or `quick` keeps every group.
    quick: QUICK_PER_GROUP tasks of each group, from the original set."""
    groups: dict[tuple[str, str], list[Task]] = {}
    for source in sources:
        for task in BUILDERS[source](ORIGINAL_PER_FILE if quick else PER_FILE):
            if task.kind in kinds:
                groups.setdefault((source, task.kind), []).append(task)
    if quick:
        groups = {key: _spread(group, QUICK_PER_GROUP) for key, group in groups.items()}
    ordered: list[Task] = []
    for rank in range(max((len(g) for g in groups.values()), default=0)):
        ordered += [g[rank] for g in groups.values() if rank < len(g)]
    return ordered[:limit] if limit is not None else ordered


def with_unrelated(tasks: list[Task], count: int) -> list[Task]:
    """`tasks` with `count` more files open beside each, corpus modules it neither is nor needs
    (opened before its own: an editor where other work is open). A fixed choice per task."""
    if count <= 0:
        return tasks
    pool = {f"corpus/{name}.py": corpus_text(name) for name in CORPUS_MODULES + tuple(CROSSFILE_MODULES.values())}
    out = []
    for task in tasks:
        own = {task.path} | {path for path, _ in task.other_files}
        candidates = [path for path in pool if path not in own]
        picked = random.Random(f"{SEED}:unrelated:{task.id}").sample(candidates, min(count, len(candidates)))
        extra = tuple((path, pool[path]) for path in picked)
        out.append(dataclasses.replace(task, other_files=extra + task.other_files))
    return out


def _spread(group: list[Task], count: int) -> list[Task]:
    """`count` tasks from different files where there are enough (the group is in file order)."""
    step = max(1, len(group) // count)
    return group[::step][:count]
