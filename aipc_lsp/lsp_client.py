"""Small helpers on the LSP client side of aipc-lsp (the demo, the benchmark, tests) and for
custom messages, whose params and results pygls leaves as named tuples."""

from __future__ import annotations

import functools
from typing import Any

from lsprotocol.converters import get_converter


@functools.cache
def converter():
    """One lsprotocol converter for the custom messages' params (building one takes ~30 ms)."""
    return get_converter()


def plain(value: Any) -> Any:
    """pygls hands custom results (e.g. aipc/status) back as named tuples: dicts and lists instead."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


async def drain(stream) -> None:
    """Read the server's stderr to the end: an unread pipe would eventually block the server."""
    while await stream.readline():
        pass


def first_inline_text(result) -> str | None:
    """The text of the first item of a textDocument/inlineCompletion result (a list or a bare list of
    items, as pygls hands either back); None when there is none."""
    items = (result.items if hasattr(result, "items") else result) or []
    if not items:
        return None
    text = items[0].insert_text
    return text if isinstance(text, str) else text.value
