"""Whether the logs may hold the user's code (documents, suggestions, message bodies): only with
`-vv` (docs/SECURITY.md). Below that a log line says how long such a text is, not what it says."""

from __future__ import annotations

_allowed = False


def allow_document_text(allowed: bool) -> None:
    global _allowed
    _allowed = allowed


def shown(value) -> str:
    """`value` (text, bytes, a message) for a log line: itself with -vv, else its length."""
    if _allowed:
        return repr(value)
    kind = "bytes" if isinstance(value, (bytes, bytearray)) else "characters"
    size = len(value) if isinstance(value, (str, bytes, bytearray)) else len(repr(value))
    return f"<{size} {kind}: -vv shows them>"
