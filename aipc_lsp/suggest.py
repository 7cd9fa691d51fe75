"""The completion pipeline, independent of LSP: document text + cursor -> suggestion.

context.py builds the prompt, the scheduler runs it on a slot, postprocess.py trims the
output while it streams (stopping the engine once the suggestion is complete).

Work is reused three ways before a new generation is started:
- identical requests (VS Code asks for inline completion and completion items at one
  position) share one answer;
- an LRU cache keyed by the prompt answers undo/redo and revisits;
- typed-ahead: when the user typed what the running or the last generation of the
  document predicted, the rest of that prediction is the answer (see generation.py).

And ways ahead of a request, while the model is idle: a document just opened or a cursor the client
says rests has its window's KV cache computed (`warm`), so the first suggestion there skips the
cold prefill; once the user pauses on a suggestion, the one that follows it when accepted is
computed and cached (`_suggest_ahead`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, TypeVar

from aipc_lsp.config import CompletionSettings
from aipc_lsp import fim
from aipc_lsp.context import (CHARS_PER_TOKEN, CompletionContext, LastTokenCache, LineCountCache, NotCounted,
                              build_completion_context)
from aipc_lsp.engines.base import GenerationParams
from aipc_lsp.generation import CANCELLED, MISS, OK, Generation, answer_from
from aipc_lsp.log_privacy import shown
from aipc_lsp.runtime import ModelRuntime
from aipc_lsp.scheduler import Job, JobKind

log = logging.getLogger(__name__)
T = TypeVar("T")

COMPLETION, WARM = JobKind.COMPLETION, JobKind.WARM
RESULT_CACHE_SIZE = 128
RECENT_SIZE = 64
# A burst of opens (a restored session, a search result preview) warms only the last document.
WARM_DELAY_S = 0.3
# The line computed ahead after a suggestion waits this long: a request that comes at once (the
# suggestion accepted, the cursor moved on) then finds the model free instead of the warm-up's
# prefill step in flight, which it cannot stop.
LINE_WARM_DELAY_S = 0.1
# The suggestion that follows an accepted one is computed once the user has paused this long after
# a suggestion: while they type on (a keystroke every 0.1-0.25 s) it would only take the model from
# the next keystroke's request (which then waits for the step in flight), and an accept that comes
# sooner is a request like any other.
SUGGEST_AHEAD_DELAY_S = 0.35
# Ends tried for the first window of an opened document (Suggester._first_window).
FIRST_WINDOW_TRIES = 3


@dataclass(frozen=True)
class Suggestion:
    text: str
    first_token_ms: float | None
    total_ms: float
    tokens: int
    # generated | typed-ahead | cache | shared: how the answer was obtained.
    source: str = "generated"


class Suggester:
    def __init__(self, runtime: ModelRuntime):
        self.runtime = runtime
        self._inflight: dict[tuple, asyncio.Future] = {}
        # The newest generation per document: running, or finished (for typed-ahead reuse).
        self._latest: dict[str, Generation] = {}
        self._results: OrderedDict[tuple, str] = OrderedDict()
        # Per document: events of requests waiting for an answer, set when the document changes.
        self._pending: dict[str, set[asyncio.Event]] = {}
        # Timings of the latest answers, for aipc/status (and so for `aipc-lsp bench`).
        self.recent: deque[dict] = deque(maxlen=RECENT_SIZE)
        self._count: LineCountCache | None = None
        self._count_exactly = None
        self._last_token: LastTokenCache | None = None
        # completion.fim and .fim_order -> the template they mean for the current model (detected once).
        self._fim: dict[tuple[str, str], fim.FimTemplate | None] = {}
        self._scheduler_ref: weakref.ref | None = None
        self._warming: asyncio.Task | None = None
        self._warming_uri: str | None = None
        self._warming_prompt = ""  # what the running warm-up computes, once it has its prompt
        # The generation computed ahead for an accepted suggestion (_suggest_ahead), by document.
        self._ahead: dict[str, Generation] = {}
        # The latest warm-ups, for aipc/status.
        self.warmups: deque[dict] = deque(maxlen=RECENT_SIZE)
        # The prompt the engine computed last (a suggestion's or a warm-up's): a cursor warm-up of
        # the same prompt is skipped (a client reports where typing stopped; after other prompts
        # its blocks may have been evicted, so it is computed again).
        self._last_computed: str | None = None

    # --- called by the LSP features -----------------------------------------------------

    def document_changed(self, uri: str, text: str | None) -> None:
        """A new version of `uri` (None: closed). Requests for the old one are answered with
        nothing at once; its running generation goes on only if the edit is what it predicted."""
        for stale in self._pending.get(uri, ()):
            stale.set()
        g = self._latest.get(uri)
        if g is None or g.done:
            return
        if text is not None and g.predicts(text):
            g.kept_alive = True  # the user's next request will pick it up
        else:
            g.stop()

    def document_closed(self, uri: str) -> None:
        self.document_changed(uri, None)
        self._latest.pop(uri, None)
        self._ahead.pop(uri, None)
        if self._warming_uri == uri:
            self._stop_warming()

    def warm(self, uri: str, text: str, settings: CompletionSettings, offset: int | None = None,
             snippets=None, language_id: str = "") -> None:
        """Once the model is idle, compute the KV cache of a window, so the first suggestion there
        prefills a few tokens instead of the whole window. A document opened (`offset` None): its
        first window (the prompt for a cursor anywhere in a file that fits the budget, or in the
        first budget's worth of a longer one). A cursor the client says rests at `offset` (a
        document brought to the front, a jump within it; aipc/warm): the prompt a request there
        would send, unless it is the prompt the engine computed last. The newest wins; any request
        stops it (the prefix cache keeps what it computed), unless the request's prompt extends it."""
        self._start_warming(uri, lambda: self._warm(uri, text, settings, offset, snippets, language_id))

    def _start_warming(self, uri: str, work: Callable[[], Awaitable[None]]) -> None:
        """The newest warm-up replaces the one there is."""
        self._stop_warming()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop runs the server (the protocol driven by hand): nothing to warm with
        self._warming_uri = uri
        self._warming = loop.create_task(work())

    def _warming_ended(self) -> None:
        """The running warm-up task is over (called from it)."""
        if self._warming is asyncio.current_task():
            self._warming = self._warming_uri = None
            self._warming_prompt = ""

    def _stop_warming(self, unless_extended_by: str | None = None) -> None:
        """Stop the warm-up, unless it is computing a prompt that `unless_extended_by` (a request's)
        begins with: stopped, its work would only be done again for the request, which waits for it
        instead (the scheduler lets such a warm-up finish too)."""
        if (unless_extended_by is not None and self._warming_prompt
                and unless_extended_by.startswith(self._warming_prompt)):
            return
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
        self._warming = self._warming_uri = None
        self._warming_prompt = ""

    async def _warm(self, uri: str, text: str, settings: CompletionSettings, offset: int | None,
                    snippets=None, language_id: str = "") -> None:
        await asyncio.sleep(WARM_DELAY_S)
        prompt = ""
        try:
            scheduler = await self.runtime.scheduler()
            if scheduler.keeps_prompt_cache():  # (e.g. OpenVINO on the NPU prefills every request anew)
                budget, template, heal = await self._setup(scheduler, settings)
                if offset is None and template is not None and template.suffix_first():
                    # The prompt begins with the code after a cursor the server does not know yet:
                    # no window computed now would begin another cursor's prompt.
                    self._record_warmup(uri, "open", 0, cancelled=False, ms=0.0,
                                        skipped="the FIM order puts the code after the cursor first")
                elif offset is None:
                    ctx = await self._first_window(text, budget, settings, template, uri, snippets, language_id,
                                                   heal)
                    # (none when no cursor's window would start at the document's beginning)
                    prompt = ctx.prompt if ctx.window_start_line == 0 else ""
                else:
                    ctx = await self._context(text, offset, budget, settings, template, uri, snippets, language_id,
                                              heal)
                    # (none when cached: the last suggestion's, or the client said it twice)
                    prompt = ctx.prompt if ctx.prompt != self._last_computed else ""
        except Exception as exc:  # no model: the completion path says so when it is asked
            log.debug("no warm-up for %s: %s", uri, exc)
        if not prompt:
            self._warming_ended()
            return
        await self._compute_ahead(uri, prompt, "open" if offset is None else "cursor", scheduler)

    async def _first_window(self, text: str, budget: int, settings: CompletionSettings,
                            template: fim.FimTemplate | None, uri: str, snippets, language_id: str,
                            heal: bool) -> CompletionContext:
        """The context at the last cursor whose window starts at the document's first line: every
        cursor before it sends a prompt that begins as this one's does (up to the cursor). The
        code before the cursor gets what the budget leaves after the code after it (FIM), the
        markers and other files, which depend on where the cursor is: measured at a first end, the
        end moves back by what they took (a few times: the code after a new end may be longer)."""
        window_budget = budget
        for _ in range(FIRST_WINDOW_TRIES):
            end = await self._counted(lambda count, _: _first_window_end(text, window_budget, count))
            ctx = await self._context(text, end, budget, settings, template, uri, snippets, language_id, heal)
            if ctx.window_start_line == 0 or end == 0:
                return ctx
            taken = await self._counted(lambda count, _: count(ctx.prompt) - count(ctx.window))
            window_budget = min(window_budget - 1, budget - taken)
            if window_budget <= 0:
                break
        return ctx

    def _warm_line(self, uri: str, prompt: str, scheduler) -> None:
        """After a suggestion on a line of only indentation (psm-line): compute the prompt that
        typing code on it will extend (CompletionContext.line_prompt) while the user reads, so
        that its first character does not prefill the code after the cursor again. Skipped when
        the user types what was suggested (answered from it), stopped by any request."""
        self._start_warming(uri, lambda: self._compute_ahead(uri, prompt, "line", scheduler, LINE_WARM_DELAY_S))

    async def _compute_ahead(self, uri: str, prompt: str, at: str, scheduler, delay_s: float = 0.0) -> None:
        """The KV cache of `prompt`, once the model is idle (a job that yields to any other)."""
        if delay_s:
            try:
                await asyncio.sleep(delay_s)
            except asyncio.CancelledError:
                self._warming_ended()
                raise
        started = time.perf_counter()
        cancelled = True
        self._warming_prompt = prompt
        try:
            job = Job(key=("", WARM), prompt=prompt, params=GenerationParams(max_new_tokens=1))
            cancelled = (await scheduler.run(job)).cancelled
            self._last_computed = None if cancelled else prompt
        except asyncio.CancelledError:
            raise  # a request took over (recorded below)
        except Exception as exc:  # the slot failed: the next request finds out and says so
            log.debug("no warm-up for %s: %s", uri, exc)
        finally:
            self._warming_ended()
            self._record_warmup(uri, at, len(prompt), cancelled=cancelled, ms=(time.perf_counter() - started) * 1000)
            log.debug("warm-up of %s (%s): %d chars, %s", uri, at, len(prompt), "cancelled" if cancelled else "done")

    async def _suggest_ahead(self, uri: str, text: str, offset: int, settings: CompletionSettings, scheduler,
                             snippets, language_id: str) -> None:
        """The suggestion at `offset` of `text` (a suggestion accepted: inserted, the cursor after it),
        computed once the user has paused (SUGGEST_AHEAD_DELAY_S) and kept in the result cache, so
        that the editor's request after the accept is answered at once (llama.vim computes the same
        ahead). A job that yields to any other; a request for this very place that comes meanwhile
        is answered from it as it grows (`_ahead`, the way typed-ahead answers are)."""
        started = time.perf_counter()
        prompt, cancelled = "", True
        try:
            await asyncio.sleep(SUGGEST_AHEAD_DELAY_S)
            budget, template, heal = await self._setup(scheduler, settings)
            ctx = await self._context(text, offset, budget, settings, template, uri, snippets, language_id, heal)
            before, after = text[:offset], text[offset:]
            params, trim_args, cache_key = _request(ctx, after, settings, template, heal, language_id)
            if cache_key in self._results:
                return
            prompt = self._warming_prompt = ctx.prompt
            g = Generation(before=before, held_back=ctx.held_back, after=after, params=params, trim_args=trim_args)
            job = Job(key=("", WARM), prompt=prompt, params=params, on_text=g.on_text)
            g.start(job, scheduler.run(job))
            self._ahead = {uri: g}
            outcome, answer, _ = await answer_from(g, before, trim_args, stale=asyncio.Event(), owner=True)
            if outcome is OK:
                cancelled = False
                self._last_computed = prompt
                self._remember(cache_key, answer)
        except asyncio.CancelledError:
            raise  # a request took over, or the user went on (recorded below)
        except Exception as exc:  # the slot failed: the next request finds out and says so
            log.debug("no suggestion ahead for %s: %s", uri, exc)
        finally:
            self._warming_ended()
            if prompt:
                self._record_warmup(uri, "accept", len(prompt), cancelled=cancelled,
                                    ms=(time.perf_counter() - started) * 1000)

    def _record_warmup(self, uri: str, at: str, prompt_chars: int, *, cancelled: bool, ms: float,
                       skipped: str | None = None) -> None:
        """A warm-up as aipc/status lists it."""
        record = {"uri": uri, "promptChars": prompt_chars, "cancelled": cancelled, "at": at, "ms": round(ms, 1)}
        self.warmups.append(record | ({"skipped": skipped} if skipped else {}))

    async def suggest(
        self,
        *,
        text: str,
        offset: int,
        settings: CompletionSettings,
        uri: str = "",
        language_id: str = "",
        version: int | None = None,
        snippets=None,
    ) -> Suggestion | None:
        """None when the request was superseded or no model can serve. `snippets`: the other
        files' source (snippets.SnippetRing), None for none."""
        key = (uri, version, offset, text if version is None else None)
        shared = self._inflight.get(key)
        if shared is not None and not shared.done():
            result = await asyncio.shield(shared)
            if result is not None:
                result = Suggestion(result.text, result.first_token_ms, result.total_ms, result.tokens, "shared")
            return result
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        stale = asyncio.Event()
        self._pending.setdefault(uri, set()).add(stale)
        try:
            result = await self._suggest(text, offset, settings, uri, version, stale, snippets, language_id)
        except BaseException as exc:
            if not future.done():
                future.set_result(None)
            raise exc
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
            waiting = self._pending.get(uri)
            if waiting is not None:
                waiting.discard(stale)
                if not waiting:
                    del self._pending[uri]
        if not future.done():
            future.set_result(result)
        return result

    # --- the pipeline ---------------------------------------------------------------------

    async def _suggest(self, text, offset, settings, uri, version, stale: asyncio.Event, snippets=None,
                       language_id: str = "") -> Suggestion | None:
        started = time.perf_counter()
        scheduler = await self.runtime.scheduler()
        budget, template, heal = await self._setup(scheduler, settings)
        ctx = await self._context(text, offset, budget, settings, template, uri, snippets, language_id, heal)
        # The model is not idle any more: the request does a warm-up's work itself, or waits for it.
        self._stop_warming(unless_extended_by=ctx.prompt)
        if not ctx.window.strip() and not ctx.suffix_window.strip():
            return None  # an empty document: no code to go on (other files' snippets alone are not its code)
        before, after = text[:offset], text[offset:]
        params, trim_args, cache_key = _request(ctx, after, settings, template, heal, language_id)

        cached = self._results.get(cache_key)
        if cached is not None:
            self._results.move_to_end(cache_key)
            self._after_answer(uri, text, offset, cached, ctx, settings, scheduler, snippets, language_id)
            return self._done(uri, version, started, cached, "cache", started, 0, ctx.other_files)

        # The user's last generation (typed along), then the one computed ahead for an accepted suggestion.
        for earlier, source in ((self._latest.get(uri), "typed-ahead"), (self._ahead.get(uri), "ahead")):
            if earlier is not None and earlier.may_serve(before, after, params):
                outcome, answer, first_at = await answer_from(earlier, before, trim_args, stale=stale)
                if outcome is CANCELLED:
                    return None  # the document changed meanwhile
                if outcome is not MISS:
                    self._remember(cache_key, answer)
                    self._after_answer(uri, text, offset, answer, ctx, settings, scheduler, snippets, language_id)
                    return self._done(uri, version, started, answer, source, first_at, 0, ctx.other_files)

        if stale.is_set():
            return None
        ahead = self._ahead.get(uri)
        if ahead is not None and not ahead.done:
            ahead.stop()  # its prompt may begin this one's, but the rest of its answer is of no use here
        self._last_computed = ctx.prompt
        g = Generation(before=before, held_back=ctx.held_back, after=after, params=params, trim_args=trim_args)
        job = Job(key=(uri, COMPLETION), prompt=ctx.prompt, params=params, version=version, on_text=g.on_text)
        g.start(job, scheduler.run(job))
        self._latest[uri] = g
        outcome, answer, first_at = await answer_from(g, before, trim_args, stale=stale, owner=True)
        log.debug("model output for %s@%s (before post-processing): %s", uri, version, shown(g.text))
        if outcome is CANCELLED or outcome is MISS:
            return None
        self._remember(cache_key, answer)
        self._after_answer(uri, text, offset, answer, ctx, settings, scheduler, snippets, language_id)
        return self._done(uri, version, started, answer, "generated", first_at, g.tokens, ctx.other_files)

    def _after_answer(self, uri: str, text: str, offset: int, answer: str, ctx: CompletionContext,
                      settings: CompletionSettings, scheduler, snippets, language_id: str) -> None:
        """What the model computes ahead while the user reads a suggestion: the line that typing
        code extends (psm-line), else the suggestion that follows this one once it is accepted."""
        if not scheduler.keeps_prompt_cache():
            return  # (each would be a whole prefill: e.g. OpenVINO on the NPU)
        if ctx.line_prompt and settings.warm_at_cursor:
            self._warm_line(uri, ctx.line_prompt, scheduler)
        elif answer and settings.suggest_ahead:
            accepted = text[:offset] + answer + text[offset:]
            self._start_warming(uri, lambda: self._suggest_ahead(
                uri, accepted, offset + len(answer), settings, scheduler, snippets, language_id))

    async def _setup(self, scheduler, settings: CompletionSettings) -> tuple[int, fim.FimTemplate | None, bool]:
        """What building a prompt on this scheduler needs: its budget, the FIM template, whether to heal."""
        budget = self._prepare(scheduler, settings)
        template = await self._template(scheduler, settings)
        return budget, template, settings.token_healing and scheduler.constrains_start()

    def _prepare(self, scheduler, settings: CompletionSettings) -> int:
        """The prompt budget on this scheduler (its token counter set up for it)."""
        # Any ready slot's tokenizer sizes the prompt; slots normally share one model family.
        engine = next((s for s in scheduler.slots if s.ready), scheduler.slots[0]).engine
        if self._scheduler_ref is None or self._scheduler_ref() is not scheduler:
            # Another model (settings changed): nothing it did not generate may be served.
            self._scheduler_ref = weakref.ref(scheduler)
            self._count = LineCountCache(engine.count_tokens)
            self._count_exactly = engine.count_tokens
            self._last_token = LastTokenCache(engine.last_token)
            self._latest.clear()
            self._ahead.clear()
            self._results.clear()
            self._fim.clear()
        return min(settings.context_tokens, scheduler.prompt_limit() or settings.context_tokens)

    def prompt_format(self, settings: CompletionSettings) -> str | None:
        """The FIM template's name for `settings`, "prefix" without one, None until known."""
        if (settings.fim, settings.fim_order) not in self._fim:
            return None
        template = self._fim[settings.fim, settings.fim_order]
        return template.name if template is not None else "prefix"

    async def _template(self, scheduler, settings: CompletionSettings) -> fim.FimTemplate | None:
        """The FIM template `completion.fim` means for this model, in the order `completion.fim_order`
        says; detection asks the tokenizer (a round trip to the engine's worker), so it runs off the
        event loop, once per model."""
        key = (settings.fim, settings.fim_order)
        if key not in self._fim:
            # Exact counts: the line cache bounds a short last line by its bytes instead of counting it.
            chosen = await asyncio.to_thread(fim.choose, settings.fim, self._count_exactly)
            self._fim[key] = template = fim.ordered(chosen, settings.fim_order)
            log.info("completion prompt: %s", f"fill-in-the-middle ({template.name}, {template.order})"
                     if template else "the code before the cursor")
        return self._fim[key]

    async def _counted(self, work: Callable[[Callable[[str], int], Callable[[str], str]], T]) -> T:
        """`work(count, last_token)`, on the event loop when every token count and last token it
        asks for is remembered (a keystroke on the line of the last request), else in a thread: one
        the caches lack is a round trip to the engine's worker, which answers between two decode steps."""
        try:
            return work(self._count.cached_only, self._last_token.cached_only)
        except NotCounted:
            return await asyncio.to_thread(work, self._count, self._last_token)

    async def _context(self, text: str, offset: int, budget: int, settings: CompletionSettings,
                       template: fim.FimTemplate | None, uri: str, snippets, language_id: str,
                       heal: bool = False) -> CompletionContext:
        """The prompt at `offset`: other files first (when enabled), then the FIM body or the code
        before the cursor. The other files' header is picked here, on the loop that feeds the ring."""
        header, chosen = "", []
        if snippets is not None and settings.other_files and settings.other_files_tokens:
            near = int(budget * CHARS_PER_TOKEN)
            local = text[max(0, offset - near): offset + int(settings.suffix_tokens * CHARS_PER_TOKEN)]
            chosen = snippets.pick(uri, local, int(settings.other_files_tokens * CHARS_PER_TOKEN),
                                   used_only=settings.other_files_used_only)
            if chosen:
                path = snippets.path_of(uri) if hasattr(snippets, "path_of") else uri.rsplit("/", 1)[-1]
                header = (template.header(chosen, path) if template is not None
                          else fim.comment_header(chosen, fim.comment_prefix(language_id)))
        ctx = await self._counted(lambda count, last_token: build_completion_context(
            text, offset, budget_tokens=budget, count_tokens=count, fim=template,
            suffix_tokens=settings.suffix_tokens, header=header, last_token=last_token if heal else None,
            suffix_to_definition_end=settings.suffix_to_definition_end))
        return replace(ctx, other_files=tuple(dict.fromkeys(snippet.path for snippet in chosen)))

    def _remember(self, key: tuple, text: str) -> None:
        self._results[key] = text
        self._results.move_to_end(key)
        while len(self._results) > RESULT_CACHE_SIZE:
            self._results.popitem(last=False)

    def _done(self, uri, version, started, text, source, first_at, tokens, other_files=()) -> Suggestion:
        now = time.perf_counter()
        first_ms = (max(first_at, started) - started) * 1000 if first_at is not None else None
        total_ms = (now - started) * 1000
        self.recent.append({"uri": uri, "version": version, "source": source, "firstTokenMs": first_ms,
                            "totalMs": total_ms, "tokens": tokens, "otherFiles": list(other_files)})
        log.debug("suggestion for %s@%s (%s): %s (%.0f ms)", uri, version, source, shown(text), total_ms)
        return Suggestion(text=text, first_token_ms=first_ms, total_ms=total_ms, tokens=tokens, source=source)


def _first_window_end(text: str, budget_tokens: int, count: Callable[[str], int]) -> int:
    """The end of the last whole line within the budget counted from the document's start (so
    a cursor there gets a window from line 0): first by the context builder's own chars-per-token
    estimate, then back by the real count where the code is denser."""
    limit = int(budget_tokens * CHARS_PER_TOKEN)
    end = len(text) if len(text) <= limit else text.rfind("\n", 0, limit) + 1
    while end > 0 and (tokens := count(text[:end])) > budget_tokens:
        end = text.rfind("\n", 0, int(end * budget_tokens / tokens * 0.95)) + 1
    return end


def _request(ctx: CompletionContext, after: str, settings: CompletionSettings, template: fim.FimTemplate | None,
             heal: bool, language_id: str) -> tuple[GenerationParams, dict, tuple]:
    """A request at `ctx`: its generation parameters, how its output is trimmed, its result cache key."""
    params = GenerationParams(max_new_tokens=settings.max_tokens, temperature=settings.temperature,
                              stop=template.stop if template is not None else (),
                              start=ctx.held_back if heal and ctx.held_back.strip() else "")
    trim_args = dict(
        line_prefix=ctx.line_prefix, line_suffix=ctx.line_suffix, suffix=ctx.suffix,
        held_back=ctx.held_back, max_lines=settings.max_lines,
        # What the model saw below the cursor: a copy of a line it was not shown is no copy.
        copy_window=ctx.suffix_window if template is not None else None,
        above=ctx.window, line_comment=fim.comment_prefix(language_id),
    )
    return params, trim_args, (ctx.prompt, ctx.held_back, ctx.line_suffix, after, settings.max_lines, params)
