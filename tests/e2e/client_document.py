"""The client's copy of a document, kept by the rules of the reference client library
(vscode-languageserver-textdocument), written apart from the server's code so the fuzz tests can
compare the two: LSP's line breaks are \\r\\n, \\r and \\n; a line past the last one means the end of
the document; a character past the end of its line, the end of that line's text; a reversed range
is applied with its ends swapped."""

from __future__ import annotations

WIDTH = {"utf-8": lambda c: len(c.encode("utf-8")), "utf-16": lambda c: 2 if ord(c) > 0xFFFF else 1,
         "utf-32": lambda c: 1}


def line_bounds(text: str) -> list[tuple[int, int]]:
    """(start, end of the text before the line break) of each line."""
    bounds, start, i = [], 0, 0
    while i < len(text):
        if text[i] in "\r\n":
            end = i
            i += 2 if text.startswith("\r\n", i) else 1
            bounds.append((start, end))
            start = i
        else:
            i += 1
    bounds.append((start, len(text)))
    return bounds


def units(text: str, encoding: str) -> int:
    return sum(WIDTH[encoding](c) for c in text)


def offset_at(text: str, line: int, character: int, encoding: str) -> int:
    """The reference library's offsetAt, in code points."""
    bounds = line_bounds(text)
    if line >= len(bounds):
        return len(text)
    start, end = bounds[line]
    counted = 0
    for i in range(start, end):
        if counted >= character:
            return i
        counted += WIDTH[encoding](text[i])
    return end


def apply(text: str, change: dict, encoding: str) -> str:
    """`text` after one didChange content change (LSP JSON)."""
    if "range" not in change:
        return change["text"]
    start, end = change["range"]["start"], change["range"]["end"]
    if (end["line"], end["character"]) < (start["line"], start["character"]):
        start, end = end, start
    a = offset_at(text, start["line"], start["character"], encoding)
    b = offset_at(text, end["line"], end["character"], encoding)
    return text[:a] + change["text"] + text[b:]
