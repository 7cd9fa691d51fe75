"""The prompt the server builds at a cursor, built the same way outside it: for the bare engine
beside the server and for the --remote peer, so all three do the same work."""

from __future__ import annotations

from typing import Callable

from aipc_lsp import fim
from aipc_lsp.context import FIM_MARKER_TOKENS, LineCountCache, build_completion_context


def template_named(name: str | None) -> fim.FimTemplate | None:
    return fim.TEMPLATES[name] if name else None


def server_prompt(text: str, offset: int, *, template: fim.FimTemplate | None, budget_tokens: int,
                  suffix_tokens: int, count_tokens: Callable[[str], int] | None,
                  suffix_to_definition_end: bool = False) -> str:
    """What suggest.py sends the engine for a cursor at `offset` with no other files: the context
    builder's prompt, its token counts from a line cache over `count_tokens` as the server's are
    (so the suffix is cut at the same line)."""
    count = LineCountCache(count_tokens) if count_tokens is not None else None
    return build_completion_context(text, offset, budget_tokens=budget_tokens, count_tokens=count, fim=template,
                                    suffix_tokens=suffix_tokens,
                                    suffix_to_definition_end=suffix_to_definition_end).prompt


def suffix_reserve(template: fim.FimTemplate | None, suffix_tokens: int) -> int:
    """Tokens of a prompt that are not the code before the cursor: the suffix budget and the
    markers (none without FIM), so a document sized to N tokens of prompt keeps N in all."""
    return suffix_tokens + FIM_MARKER_TOKENS if template is not None else 0
