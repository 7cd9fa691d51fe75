"""The completion pipeline, independent of LSP: document text + cursor -> suggestion.

context.py builds the prompt, the scheduler runs it on a slot, postprocess.py trims the
output while it streams (stopping the engine once the suggestion is complete).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aipc_lsp.config import CompletionSettings
from aipc_lsp.context import build_completion_context
from aipc_lsp.engines.base import GenerationParams
from aipc_lsp.postprocess import trim_suggestion
from aipc_lsp.runtime import ModelRuntime
from aipc_lsp.scheduler import Job

log = logging.getLogger(__name__)

COMPLETION = "completion"


@dataclass(frozen=True)
class Suggestion:
    text: str
    first_token_ms: float | None
    total_ms: float
    tokens: int


class Suggester:
    def __init__(self, runtime: ModelRuntime):
        self.runtime = runtime
        # Requests for the very same context (VS Code asks for inline completion and
        # completion items at one position) share one generation instead of superseding.
        self._inflight: dict[tuple, asyncio.Future] = {}

    async def suggest(
        self,
        *,
        text: str,
        offset: int,
        settings: CompletionSettings,
        uri: str = "",
        language_id: str = "",
        version: int | None = None,
    ) -> Suggestion | None:
        """None when the request was superseded or no model can serve."""
        key = (uri, version, offset, text if version is None else None)
        shared = self._inflight.get(key)
        if shared is not None and not shared.done():
            return await asyncio.shield(shared)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._suggest(text, offset, settings, uri, language_id, version)
        except BaseException as exc:
            if not future.done():
                future.set_result(None)
            raise exc
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        if not future.done():
            future.set_result(result)
        return result

    async def _suggest(self, text, offset, settings, uri, language_id, version) -> Suggestion | None:
        started = time.perf_counter()
        scheduler = await self.runtime.scheduler()
        # Any ready slot's tokenizer sizes the prompt; slots normally share one model family.
        engine = next((s for s in scheduler.slots if s.ready), scheduler.slots[0]).engine
        ctx = build_completion_context(
            text, offset,
            budget_tokens=settings.context_tokens, count_tokens=engine.count_tokens,
        )
        trim_args = dict(
            line_prefix=ctx.line_prefix, line_suffix=ctx.line_suffix, suffix=ctx.suffix,
            held_back=ctx.held_back, max_lines=settings.max_lines,
        )
        produced: list[str] = []

        def on_text(piece: str) -> bool:
            produced.append(piece)
            return not trim_suggestion("".join(produced), **trim_args).complete

        params = GenerationParams(max_new_tokens=settings.max_tokens, temperature=settings.temperature)
        job = Job(key=(uri, COMPLETION), prompt=ctx.prompt, params=params, version=version, on_text=on_text)
        result = await scheduler.run(job)
        if result.cancelled:
            return None
        # Output cut by the token limit may end mid-line: then the last line is dropped.
        final = trim_suggestion(result.text, **trim_args, finished=result.tokens < params.max_new_tokens)
        total_ms = (time.perf_counter() - started) * 1000
        log.debug("suggestion for %s@%s: %r (%.0f ms)", uri, version, final.text, total_ms)
        return Suggestion(
            text=final.text,
            first_token_ms=result.first_token_s * 1000 if result.first_token_s is not None else None,
            total_ms=total_ms,
            tokens=result.tokens,
        )
