"""Snippets of the user's other files for the completion prompt.

A ring of chunks, as llama.vim keeps one: the outline of each opened or saved document, and the
lines around where the user edited or where the cursor rested. A request takes the chunks of the
OTHER documents, oldest first, that fit its budget and that the code around its cursor does not
already hold.

The snippets open the prompt, so the engine's prefix cache reuses their KV only while the picked
list stays identical. Hence: a document's own events (every keystroke, every cursor rest, a save)
are held back as pending until another document has an event or is asked for snippets. Typing in
a document therefore never changes the ring its requests pick from; the ring moves when the user
moves to another file, which changes that file's prompt once.

A request takes only the chunks of documents the code around its cursor uses (it names what they
declare, or their module; completion.other_files_used_only): with an unrelated file open beside
each corpus task, the default model's exact match fell from 36.5 to 31.2 % and its pass@1 from
43.8 to 34.4 % (docs/QUALITY.md). The pick changes when the user types the first name of such a
document: once, as when they move to another file.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pygls import uris

# llama.vim's rule: a new chunk evicts chunks whose words are > 90% the same.
SIMILAR = 0.9
# A chunk is left out of a request when more than this share of its meaningful lines is in the
# code around the cursor (the prompt has them already; repeating them makes the model repeat).
IN_WINDOW = 0.5
# Lines longer than this (minified code, data) are left out of chunks: they cost much and say little.
MAX_LINE_CHARS = 240
# Chunks smaller than this say too little to be worth a file header (llama.vim: 3 lines).
MIN_LINES = 3
# A chunk trimmed to a request's budget goes in only with this many lines (a scrap is not worth its header).
MIN_TRIMMED_LINES = 6
# A window is kept while the cursor stays inside it, else starts on a multiple of
# window_lines // WINDOW_STEPS: a cursor that moves a few lines makes the same chunk (nothing
# changes: the order and the prompts' KV cache stay).
WINDOW_STEPS = 4
# Most windows (edited or visited places) kept per document; its outline comes on top.
WINDOWS_PER_DOCUMENT = 3
# Signature lines (an outline's def/class/fn) go on through at most this many continuation lines.
MAX_SIGNATURE_LINES = 8

_WORDS = re.compile(r"\w+")
# A line with no word of 2+ characters (`}`, `)`, `end`, `pass`, `else:`...) says nothing about
# which code it is; such lines are not counted when comparing a chunk with the cursor's window.
_MEANINGFUL = re.compile(r"\w\w")
_TRIVIAL = frozenset({"pass", "else", "end", "return", "break", "continue", "try", "finally", "fi", "done", "esac"})


@dataclass(frozen=True)
class Snippet:
    path: str  # as the model sees it: relative to the workspace root when under it, else the file name
    text: str  # whole lines, without a trailing newline


@dataclass(eq=False)  # compared by identity
class _Chunk:
    uri: str
    outline: bool  # the document's outline (one per document), else a window of lines
    start: int  # a window's first line in the document (0 for an outline)
    end: int  # a window's end line (exclusive)
    lines: tuple[str, ...]
    focus: int  # the line kept when a request trims the chunk (the edited/visited line; 0: the head)
    # What its document declares and its module name (code that uses the document names them),
    # and those of them unlikely in unrelated code: the module name, `parse_amount`, `Money`, not `add`.
    names: frozenset[str] = frozenset()
    telling_names: frozenset[str] = frozenset()
    text: str = field(init=False, repr=False)
    keys: tuple[str, ...] = field(init=False, repr=False)  # its lines as compared with a cursor's window
    words: Counter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.text = "\n".join(self.lines)
        self.keys = tuple(k for k in map(_key, self.lines) if k)
        self.words = Counter(_WORDS.findall(self.text))

    def used_by(self, words: set[str]) -> bool:
        """Whether code with these words uses the chunk's document: it names one of its telling
        names or two of its others."""
        return not self.telling_names.isdisjoint(words) or len(self.names & words) >= 2


@dataclass
class _Pending:
    """A document's events not yet in the ring: its text as last seen, whether its outline is
    wanted (opened or saved), the lines where it was edited or visited (newest last)."""

    text: str
    outline: bool = False
    at: list[int] = field(default_factory=list)
    seq: int = 0  # when its latest event came (documents enter the ring in that order)


class SnippetRing:
    def __init__(self, *, chunk_lines: int = 64, max_chunks: int = 16, max_line_chars: int = MAX_LINE_CHARS):
        self.chunk_lines = max(MIN_LINES, chunk_lines)
        # An edited or visited place: half as many lines, as llama.vim's chunks are (a random half
        # of the chunk_lines around the cursor), so a request's budget (512 tokens by default,
        # ~1,500 characters) holds more than one chunk.
        self.window_lines = max(MIN_LINES, chunk_lines // 2)
        self.max_chunks = max(1, max_chunks)
        self.max_line_chars = max(1, max_line_chars)
        self._ring: list[_Chunk] = []  # oldest first
        self._pending: dict[str, _Pending] = {}
        # Open documents' texts as last seen: a whole-document change finds its first changed line.
        self._texts: dict[str, str] = {}
        self._roots: list[str] = []
        self._seq = 0
        self.evicted = 0
        # The LSP handlers and a request's prompt building may run on different threads.
        self._lock = threading.Lock()

    # --- the editor's events ---------------------------------------------------------------

    def set_root(self, root_uri_or_path: str | None) -> None:
        """The workspace root (initialize's rootUri or rootPath)."""
        self.set_roots([root_uri_or_path] if root_uri_or_path else [])

    def set_roots(self, roots: list[str]) -> None:
        """The workspace folders: a path is shown relative to the deepest one holding it."""
        normalized = (_normalize(_fs_path(r) or "").rstrip("/") for r in roots)
        self._roots = sorted({r for r in normalized if r}, key=len, reverse=True)

    def opened(self, uri: str, text: str) -> None:
        with self._lock:
            self._event(uri, text, outline=True)

    def saved(self, uri: str, text: str) -> None:
        with self._lock:
            self._event(uri, text, outline=True)

    def edited(self, uri: str, text: str, line: int | None) -> None:
        """`line`: the first changed line; None (a whole-document change): found by comparing
        with the text last seen."""
        with self._lock:
            if line is None:
                line = _first_difference(self._texts.get(uri), text)
            self._event(uri, text, line=line)

    def visited(self, uri: str, text: str, line: int) -> None:
        with self._lock:
            self._event(uri, text, line=line)

    def closed(self, uri: str) -> None:
        """Its pending events go into the ring, and its chunks stay: a file the user just worked
        in or read is what the next one likely calls (llama.vim and Continue keep them too); the
        ring's bounds age them out."""
        with self._lock:
            self._texts.pop(uri, None)
            pending = self._pending.pop(uri, None)
            if pending is not None:
                self._apply(uri, pending)

    def clear(self) -> None:
        with self._lock:
            self._ring.clear()
            self._pending.clear()
            self._texts.clear()

    # --- a request ---------------------------------------------------------------------------

    def pick(self, uri: str, local_window: str, max_chars: int, used_only: bool = False) -> list[Snippet]:
        """Chunks of documents other than `uri`, in the ring's order (oldest first), within
        `max_chars` (each costs its path, its text and 2 newlines): the newest first when over
        budget, the newest one that does not fit trimmed to the whole lines around its focus.
        Chunks mostly in `local_window` (the code around the cursor the prompt holds) are left out;
        with `used_only`, so are those of documents that code does not use (see _Chunk.used_by)."""
        with self._lock:
            self._flush(but=uri)
            near = {_key(l) for l in local_window.split("\n")}
            words: set[str] | None = None  # the window's, read when a chunk first needs them
            chosen: list[tuple[_Chunk, tuple[str, ...]]] = []
            left = max_chars
            for chunk in reversed(self._ring):
                if chunk.uri == uri or _mostly_in(chunk.keys, near):
                    continue
                if used_only:
                    words = set(_WORDS.findall(local_window)) if words is None else words
                    if not chunk.used_by(words):
                        continue
                cost = len(self.path_of(chunk.uri)) + 2
                if cost + len(chunk.text) <= left:
                    chosen.append((chunk, chunk.lines))
                    left -= cost + len(chunk.text)
                    continue
                trimmed = _strip_blank(_trim(chunk.lines, chunk.focus, left - cost))
                if sum(1 for l in trimmed if l.strip()) >= MIN_TRIMMED_LINES:
                    chosen.append((chunk, trimmed))
                break  # older chunks wait for a larger budget
            return [Snippet(self.path_of(c.uri), "\n".join(lines)) for c, lines in reversed(chosen)]

    def path_of(self, uri: str) -> str:
        """The path the model sees: relative to the workspace folder holding it, else its name."""
        path = _fs_path(uri)
        if path is None:  # untitled:Untitled-1, vscode-notebook-cell:/a/b.ipynb#x...
            return PurePosixPath(uris.urlparse(uri)[2]).name or uri
        path = _normalize(path)
        folded = path.casefold() if _is_drive_path(path) else path
        for root in self._roots:
            if folded.startswith((root.casefold() if _is_drive_path(root) else root) + "/"):
                return path[len(root) + 1:]
        return PurePosixPath(path).name or path

    @property
    def chunk_count(self) -> int:
        return len(self._ring)

    def summary(self) -> list[dict]:
        """The ring, oldest first, for aipc/status: each chunk's path, kind and line count."""
        with self._lock:
            return [{"path": self.path_of(c.uri), "kind": "outline" if c.outline else "window",
                     "lines": len(c.lines)} for c in self._ring]

    # --- inside (the lock held) ----------------------------------------------------------------

    def _event(self, uri: str, text: str, *, outline: bool = False, line: int | None = None) -> None:
        """Other documents' pending events into the ring; this one's wait (see the module's doc)."""
        self._flush(but=uri)
        self._texts[uri] = text
        self._seq += 1
        pending = self._pending.setdefault(uri, _Pending(text))
        pending.text, pending.seq = text, self._seq
        pending.outline |= outline
        if line is not None:
            # One place per window: the newest replaces the places whose windows it overlaps.
            pending.at = [a for a in pending.at if abs(a - line) >= self.window_lines]
            pending.at = (pending.at + [max(0, line)])[-WINDOWS_PER_DOCUMENT:]

    def _flush(self, but: str) -> None:
        """Every other document's pending events into the ring, the least recent first."""
        for uri, pending in sorted(self._pending.items(), key=lambda item: item[1].seq):
            if uri != but:
                del self._pending[uri]
                self._apply(uri, pending)

    def _apply(self, uri: str, pending: _Pending) -> None:
        lines = pending.text.split("\n")
        # One scan of its declarations gives both its names and its outline.
        declarations = _declarations(lines, len(lines), self.max_line_chars)
        declared = _names_in(declarations)
        module = PurePosixPath(self.path_of(uri)).stem
        module_names = {module} if len(module) >= 3 and module not in _NOT_NAMES else set()
        names = (declared | module_names, frozenset(n for n in declared if _telling(n)) | module_names)
        if pending.outline:
            outline = _outline_of(lines, declarations, self.chunk_lines, self.max_line_chars)
            self._add(self._make(uri, True, 0, len(lines), outline, 0, names))
        for line in pending.at:
            start, end = self._window(uri, line, len(lines))
            fits = [len(l) <= self.max_line_chars for l in lines[start:end]]
            kept = [l for l, ok in zip(lines[start:end], fits) if ok]
            self._add(self._make(uri, False, start, end, kept, sum(fits[:max(0, line - start)]), names))

    def _window(self, uri: str, line: int, count: int) -> tuple[int, int]:
        """window_lines lines around `line`: the document's window that has it away from its
        edges, else one starting on a multiple of a quarter of window_lines."""
        size = self.window_lines
        step = max(1, size // WINDOW_STEPS)
        for c in self._ring:
            if c.uri == uri and not c.outline and c.start + step <= line < c.end - step and c.end <= count:
                return c.start, c.end
        start = (max(0, line - size // 2) + step // 2) // step * step
        start = max(0, min(start, count - size))
        return start, min(count, start + size)

    @staticmethod
    def _make(uri: str, outline: bool, start: int, end: int, lines: list[str], focus: int,
              names: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())) -> _Chunk | None:
        """`names`: the chunk's names and telling names (see _Chunk)."""
        stripped = _strip_blank(lines)
        focus -= next((i for i, l in enumerate(lines) if l.strip()), 0)
        lines = list(stripped)
        if sum(1 for l in lines if l.strip()) < MIN_LINES:
            return None
        return _Chunk(uri, outline, start, end, tuple(lines), max(0, min(focus, len(lines) - 1)), *names)

    def _add(self, new: _Chunk | None) -> None:
        """llama.vim's rules: an identical chunk is left where it is; a new one replaces its
        document's outline or the windows it overlaps, and any chunk > SIMILAR alike; the oldest
        go beyond max_chunks."""
        if new is None or any(c.uri == new.uri and c.lines == new.lines for c in self._ring):
            return  # already there: its place (and every prompt's KV) stays
        mine = [c for c in self._ring if c.uri == new.uri and c.outline == new.outline]
        replaced = [c for c in mine if new.outline or (c.start < new.end and new.start < c.end)]
        windows_left = [c for c in mine if c not in replaced]
        if not new.outline and len(windows_left) >= WINDOWS_PER_DOCUMENT:
            replaced.append(windows_left[0])  # its oldest window
        replaced += [c for c in self._ring if c not in replaced and similarity(c.words, new.words) > SIMILAR]
        self._ring = [c for c in self._ring if c not in replaced] + [new]
        self.evicted += len(replaced)
        while len(self._ring) > self.max_chunks:
            self._ring.pop(0)
            self.evicted += 1


def similarity(a: Counter, b: Counter) -> float:
    """How alike two chunks' words are: 0 nothing shared, 1 the same words as often (Dice's
    coefficient over the multisets; llama.vim's chunk_sim is its one-sided form)."""
    total = sum(a.values()) + sum(b.values())
    return 1.0 if total == 0 else 2 * sum((a & b).values()) / total


def _telling(name: str) -> bool:
    """A name unlikely in unrelated code: with an inner underscore or a capital (`parse_amount`, `Money`)."""
    return "_" in name.strip("_") or not name.islower()


def _key(line: str) -> str:
    """A line as compared with the cursor's window: stripped; "" when it says nothing."""
    stripped = line.strip()
    if not _MEANINGFUL.search(stripped) or stripped.rstrip(":;{}") in _TRIVIAL:
        return ""
    return stripped


def _mostly_in(keys: tuple[str, ...], near: set[str]) -> bool:
    return not keys or sum(1 for k in keys if k in near) > IN_WINDOW * len(keys)


def _trim(lines: tuple[str, ...], focus: int, max_chars: int) -> tuple[str, ...]:
    """The whole lines around `focus` that fit `max_chars` (joined by newlines): it first, then
    the lines after it and before it in turn (an outline's focus is its head: it keeps a prefix)."""
    if max_chars <= 0 or not lines:
        return ()
    lo = hi = min(max(focus, 0), len(lines) - 1)
    used = len(lines[lo])
    if used > max_chars:
        return ()
    while True:
        grown = False
        for side in (1, -1):
            at = hi + 1 if side > 0 else lo - 1
            if 0 <= at < len(lines) and used + 1 + len(lines[at]) <= max_chars:
                used += 1 + len(lines[at])
                lo, hi = min(lo, at), max(hi, at)
                grown = True
        if not grown:
            return tuple(lines[lo:hi + 1])


def _strip_blank(lines) -> tuple[str, ...]:
    """Without blank lines at either end: a snippet begins and ends on code."""
    lines = tuple(lines)
    first = next((i for i, l in enumerate(lines) if l.strip()), len(lines))
    last = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].strip()), -1)
    return lines[first:last + 1]


def _first_difference(old: str | None, new: str) -> int | None:
    """The first line where `new` differs from `old` (None: no old text, or no difference)."""
    if old is None or old == new:
        return None
    a, b = old.split("\n"), new.split("\n")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) - 1 if len(a) != len(b) else None


def _fs_path(uri_or_path: str) -> str | None:
    if ":" not in uri_or_path or _is_drive_path(uri_or_path.replace("\\", "/")):
        return uri_or_path  # a plain path (rootPath, or a Windows path)
    if uri_or_path.startswith("file:"):
        return uris.to_fs_path(uri_or_path)
    return None


def _normalize(path: str) -> str:
    """Forward slashes, a Windows drive in lower case (clients spell it both ways)."""
    path = path.replace("\\", "/")
    if _is_drive_path(path):
        path = path[0].lower() + path[1:]
    return path


def _is_drive_path(path: str) -> bool:
    return len(path) >= 2 and path[1] == ":" and path[0].isalpha() and (len(path) == 2 or path[2] == "/")


# --- outlines ---------------------------------------------------------------------------------
#
# What of an opened file helps a caller in another file most, in a few hundred tokens: the names it
# defines and how to call them. Its first lines are mostly a licence, a module docstring, imports.
# Measured over 1,565 pairs of Python modules where one imports the other (15 standard-library
# packages, 13 of this project's dependencies and this project; the imported module longer than
# 64 lines): of the imported module's functions and classes that the importer uses, the share
# whose def/class line is in the chunk was, at 1,000 / 2,000 / 4,000 characters, 15% / 31% / 51%
# for the module's first lines and 53% / 72% / 86% for its outline (80% at 4,000 when the outline
# is capped at 64 lines, as chunks are). With the imports added to the outline: 45% / 67% / 85%,
# so outlines leave them out. (The other languages' patterns below are reasoned, not measured.)

# Declarations, after the indentation: Python, JS/TS, Go, Rust, Java/C#/Kotlin, C/C++, Ruby, Lua, shell.
_DECLARATION = re.compile(
    r"(?:@\w[\w.]*\s*(?:\(|$)|(?:async\s+)?def\s|class\s|(?:export\s+(?:default\s+)?)?(?:declare\s+)?(?:async\s+)?function\b"
    r"|(?:export\s+)?(?:abstract\s+)?(?:class|interface|enum|namespace|module|trait|object)\s+\w"
    r"|(?:export\s+)?type\s+\w+\s*(?:[<=\[]|struct|interface)"
    r"|(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+)?(?:async\s+)?(?:fn|struct|enum|trait|impl|union)\b"
    r"|func\s|(?:local\s+)?function\s|fun\s|struct\s+\w|typedef\s|#define\s"
    r"|(?:(?:public|private|protected|internal|static|final|abstract|override|virtual|sealed|partial|suspend)\s+)+[\w<]"
    r")")
# At the top level only: constants and module variables (`NAME = `, `NAME: type = `, const/let/var/val).
_TOP_LEVEL = re.compile(
    r"(?:(?:export\s+)?(?:const|let|var|val)\s+[\w{\[]|[A-Za-z_][\w.]*\s*(?::[^=]+)?=[^=]"
    r"|[\w*&:<>,\s]+\s[*&]*[\w:~]+\s*\()")
_CONTROL = re.compile(r"(?:if|for|while|switch|return|else|elif|catch|with|try|do)\b")
# Declarations whose body holds fields: `name: type` and `NAME = value` lines there are kept.
_CLASS = re.compile(r"(?:export\s+)?(?:abstract\s+)?(?:(?:public|private|internal|data|sealed|pub)\s+)*"
                    r"(?:class|struct|interface|object|record|trait)\b|type\s+\w+\s+(?:struct|interface)\b")
# In a class body: fields (Python/TS `name: type`, `NAME = value`; C `type name;`; Go `Name Type`)
# and method signatures without a keyword (TS/JS `name(args): type {`).
_FIELD = re.compile(r"(?:(?:readonly|pub)\s+)?[A-Za-z_]\w*\??\s*(?::\s*[^=\s(][^=(]*)?(?:=[^=]|;?$)"
                    r"|(?:[\w:<>,]+[\s*&]+)+\w+(?:\[\w*\])?\s*;"
                    r"|[A-Z]\w*\s+[\w.*\[\]]+\s*(?:`[^`]*`)?$"
                    r"|(?:(?:async|static|get|set|public|private|protected|readonly)\s+)*[\w$]+\??\s*(?:<[^>]*>)?"
                    r"\([^)]*\)\s*(?::[^={]+)?[{;]?$")
_TRAILING_COMMENT = re.compile(r"\s+(?:#|//)")
# The name a declaration line declares: after its keyword, else a constant's leading name, else
# the name before its parameters.
_NAMED = re.compile(r"\b(?:def|class|function|fn|func|fun|struct|enum|trait|interface|type|union|module|namespace"
                    r"|object|record|const|let|var|val|define)\s+\*?([A-Za-z_$][\w$]*)")
_CALLED = re.compile(r"([A-Za-z_$][\w$]*)\s*(?:<[^>()]*>)?\s*\(")
_LEADING_NAME = re.compile(r"^(?:(?:export|pub|readonly|static|final)\s+)*([A-Za-z_$][\w$]*)\s*\??\s*[:=]")
_NOT_NAMES = frozenset({"self", "this", "cls", "new", "init", "main", "get", "set", "run", "str", "int", "len",
                        "func", "function", "def", "class", "public", "private", "protected", "static", "async",
                        "void", "return", "const", "let", "var", "export", "default", "pub", "impl", "fn"})
_COMMENTS = ("#", "//", "--", "*", "/*", "<!--", ";")
_DOCSTRING = re.compile(r"[rRbBuU]?(?:\"\"\"|''')")


def outline_lines(lines: list[str], max_lines: int, max_line_chars: int = MAX_LINE_CHARS) -> list[str]:
    """What of a document a caller in another file needs, in at most `max_lines` lines: the whole
    document when it is that short, else its declarations (signature lines with their
    continuation lines and a docstring's first line, a class's fields) and its top-level
    constants. A text with few declarations (prose, data) gives its first lines instead."""
    return _outline_of(lines, _declarations(lines, max_lines, max_line_chars), max_lines, max_line_chars)


def _outline_of(lines: list[str], declarations: list[str], max_lines: int, max_line_chars: int) -> list[str]:
    """outline_lines from the document's declaration lines (all of them, or its first `max_lines`:
    a longer scan only appends)."""
    if len(lines) <= max_lines:
        return [l for l in lines if len(l) <= max_line_chars]
    kept = declarations[:max_lines]
    if len(kept) < max(MIN_LINES, sum(1 for l in lines if l.strip()) // 50):
        return [l for l in lines[:max_lines] if len(l) <= max_line_chars]  # not code we can outline
    return kept


def declared_names(lines: list[str]) -> frozenset[str]:
    """The names a document declares (functions, classes, methods, top-level constants): what
    code in another file calls it by. Fields, and names shorter than 3, are in too much code to
    say which file is meant."""
    return _names_in(_declarations(lines, len(lines), MAX_LINE_CHARS))


def _names_in(declarations: list[str]) -> frozenset[str]:
    """declared_names from a document's declaration lines."""
    names: set[str] = set()
    for line in declarations:
        body = line.strip()
        if body.startswith("@") or _DOCSTRING.match(body):
            continue  # a decorator names what the declaration uses; a docstring is prose
        named = _NAMED.findall(body)
        if not named and line[:1].isspace() and not _CALLED.search(body):
            continue  # a field (`width`, `name`)
        found = named or _LEADING_NAME.findall(body) or _CALLED.findall(body)
        # The first that is a name (Go's `func (r *Reader) ReadAll(`: ReadAll).
        name = next((n for n in found if n not in _NOT_NAMES), "")
        if len(name) >= 3 and not name.startswith("__"):
            names.add(name)
    return frozenset(names)


def _declarations(lines: list[str], max_lines: int, max_line_chars: int) -> list[str]:
    """The declaration lines of an outline (see outline_lines), at most `max_lines`."""
    kept: list[str] = []
    class_indent = class_body = -1  # the innermost class-like declaration's, and its body's
    closing = ""  # inside a string or comment block: what ends it
    i = 0
    while i < len(lines) and len(kept) < max_lines:
        line = lines[i]
        body = line.lstrip()
        indent = indent_width(line)
        i += 1
        if closing:
            closing = "" if closing in line else closing
            continue
        closing = _opens_block(body)
        if len(line) > max_line_chars or not body or body.startswith(_COMMENTS) or _DOCSTRING.match(body):
            continue
        if indent <= class_indent:
            class_indent = class_body = -1
        elif class_indent >= 0 and class_body < 0:
            class_body = indent
        if indent <= 8 and _DECLARATION.match(body) and not _CONTROL.match(body):
            if _CLASS.match(body):
                class_indent, class_body = indent, -1
            kept.append(line)
            i = _continuation(lines, i, body, kept, max_lines, max_line_chars)
            i = _docstring(lines, i, kept, max_lines, max_line_chars)
        elif ((indent == 0 and _TOP_LEVEL.match(body) and not _CONTROL.match(body))
              or (indent == class_body and _FIELD.match(_TRAILING_COMMENT.split(body, 1)[0]) and _key(body))):
            kept.append(line)  # a constant or a field: its first line says enough
    return kept


def _continuation(lines: list[str], i: int, first: str, kept: list[str], max_lines: int, max_line_chars: int) -> int:
    """A signature's (or constant's) lines up to where its brackets close, at most MAX_SIGNATURE_LINES."""
    depth = _open_brackets(first)
    end = min(len(lines), i + MAX_SIGNATURE_LINES)
    while depth > 0 and i < end and len(kept) < max_lines:
        if len(lines[i]) <= max_line_chars:
            kept.append(lines[i])
        depth += _open_brackets(lines[i])
        i += 1
    return i


def _docstring(lines: list[str], i: int, kept: list[str], max_lines: int, max_line_chars: int) -> int:
    """After a signature: its docstring's first line (two when the quotes stand alone); the
    line after the docstring is returned."""
    opening = _DOCSTRING.match(lines[i].lstrip()) if i < len(lines) else None
    if opening is None:
        return i
    quotes = opening.group(0)[-3:]
    first = lines[i].strip()
    summary = [lines[i]] + ([lines[i + 1]] if first.lstrip("rRbBuU") == quotes and i + 1 < len(lines) else [])
    kept += [l for l in summary if len(l) <= max_line_chars and l.strip()][:max_lines - len(kept)]
    if first.count(quotes) % 2 == 0:
        return i + 1  # closed on its first line
    end = next((j for j in range(i + 1, len(lines)) if quotes in lines[j]), len(lines) - 1)
    return end + 1


def _opens_block(body: str) -> str:
    """What closes the string or comment block this line opens and leaves open ("" for none):
    a docstring's or a block comment's prose is not code to outline."""
    for quotes in ('"""', "'''"):
        if body.count(quotes) % 2:
            return quotes
    if "/*" in body and "*/" not in body[body.index("/*"):]:
        return "*/"
    return ""


def indentation(line: str) -> str:
    """A line's leading spaces and tabs, as written."""
    return line[: len(line) - len(line.lstrip(" \t"))]


def indent_width(line: str) -> int:
    """Columns of a line's leading whitespace (tab stops of 4)."""
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _open_brackets(line: str) -> int:
    """Parentheses and square brackets left open (braces open bodies, not signatures)."""
    return line.count("(") + line.count("[") - line.count(")") - line.count("]")
