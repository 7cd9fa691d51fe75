"""The prompt the server builds at a cursor, built the same way outside it: for the bare engine
beside the server and for the --remote peer, so all three do the same work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from aipc_lsp import fim
from aipc_lsp.config import CompletionSettings
from aipc_lsp.context import FIM_MARKER_TOKENS, LineCountCache, build_completion_context

_DEFAULTS = CompletionSettings()


@dataclass(frozen=True)
class PromptSettings:
    """The completion settings that shape the server's prompt at a cursor. The bench builds that
    prompt again in three places (the bare engine's child process, the reference engine beside
    the server, the peer), so they travel as this one value: a new prompt setting is added here."""

    fim: str = _DEFAULTS.fim
    fim_order: str = _DEFAULTS.fim_order
    budget_tokens: int = _DEFAULTS.context_tokens
    suffix_tokens: int = _DEFAULTS.suffix_tokens
    suffix_to_definition_end: bool = _DEFAULTS.suffix_to_definition_end
    # Token healing: the prompt ends before the cursor's last token, and an engine that can
    # constrain its answer rewrites it (the peer, which cannot, gets the whole text).
    token_healing: bool = _DEFAULTS.token_healing

    @classmethod
    def of(cls, completion: CompletionSettings) -> "PromptSettings":
        return cls(fim=completion.fim, fim_order=completion.fim_order, budget_tokens=completion.context_tokens,
                   suffix_tokens=completion.suffix_tokens,
                   suffix_to_definition_end=completion.suffix_to_definition_end,
                   token_healing=completion.token_healing)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict | None) -> "PromptSettings":
        return cls(**(values or {}))

    def builder(self, template: fim.FimTemplate | None, count_tokens: Callable[[str], int] | None) -> "PromptBuilder":
        """Prompts for a model with `template` (None: prefix only; in `fim_order`'s order, as the
        server puts it), counted by `count_tokens`."""
        return PromptBuilder(self, fim.ordered(template, self.fim_order), count_tokens)


@dataclass(frozen=True)
class PromptBuilder:
    settings: PromptSettings
    template: fim.FimTemplate | None
    # None: sizes are estimated from characters (a peer without a token count endpoint).
    count_tokens: Callable[[str], int] | None

    def prompt(self, text: str, offset: int) -> str:
        return self.healed(text, offset)[0]

    def healed(self, text: str, offset: int, last_token: Callable[[str], str] | None = None) -> tuple[str, str]:
        """The prompt, and what the answer must begin with: the held-back token when `last_token`
        (the engine's, given when it constrains its answers) and `token_healing` say so, as
        suggest.py asks it; else "" and the prompt holds the whole text."""
        ctx = server_context(text, offset, template=self.template, budget_tokens=self.settings.budget_tokens,
                             suffix_tokens=self.settings.suffix_tokens, count_tokens=self.count_tokens,
                             suffix_to_definition_end=self.settings.suffix_to_definition_end,
                             last_token=last_token if self.settings.token_healing else None)
        return ctx.prompt, ctx.held_back if ctx.held_back.strip() else ""

    def suffix_reserve(self) -> int:
        return suffix_reserve(self.template, self.settings.suffix_tokens)


def template_named(name: str | None) -> fim.FimTemplate | None:
    return fim.TEMPLATES[name] if name else None


def server_prompt(text: str, offset: int, **shape) -> str:
    """The prompt of server_context (the whole text before the cursor in it: no token held back)."""
    return server_context(text, offset, **shape).prompt


def server_context(text: str, offset: int, *, template: fim.FimTemplate | None, budget_tokens: int,
                   suffix_tokens: int, count_tokens: Callable[[str], int] | None,
                   suffix_to_definition_end: bool = False, last_token: Callable[[str], str] | None = None):
    """What suggest.py builds for a cursor at `offset` with no other files: the context builder's
    CompletionContext, its token counts from a line cache over `count_tokens` as the server's are
    (so the suffix is cut at the same line)."""
    count = LineCountCache(count_tokens) if count_tokens is not None else None
    return build_completion_context(text, offset, budget_tokens=budget_tokens, count_tokens=count, fim=template,
                                    suffix_tokens=suffix_tokens, suffix_to_definition_end=suffix_to_definition_end,
                                    last_token=last_token)


def suffix_reserve(template: fim.FimTemplate | None, suffix_tokens: int) -> int:
    """Tokens of a prompt that are not the code before the cursor: the suffix budget and the
    markers (none without FIM), so a document sized to N tokens of prompt keeps N in all."""
    return suffix_tokens + FIM_MARKER_TOKENS if template is not None else 0
