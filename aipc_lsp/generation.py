"""One completion generation as its requests see it: the growing model output for a
document state, shared by the request that started it and later requests whose text the
user typed along the prediction (typed-ahead reuse).

Rules that keep a reused answer honest:
- the text after the cursor and the generation parameters are identical;
- the text the user typed since (`typed`) is exactly the start of the model's output;
- the rest is trimmed for the *new* cursor, and used only if that trimming is final
  (complete) or the model ended on its own; otherwise a new generation runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from aipc_lsp.engines.base import GenerationParams, GenerationResult
from aipc_lsp.postprocess import trim_suggestion

OK, MISS, CANCELLED = "ok", "miss", "cancelled"


class Generation:
    def __init__(self, *, before: str, held_back: str, after: str, params: GenerationParams, trim_args: dict):
        # The document text the model continues (the prompt's window is a suffix of it).
        self.body = before[: len(before) - len(held_back)]
        self.after = after
        self.params = params
        self._owner_trim = trim_args
        self.text = ""  # written by the slot thread only; a str assignment is atomic
        self._marks: list[tuple[int, float]] = []  # (len(text), time) after each piece
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self.done = False
        # Set when the document changed along the prediction: no request waits right now,
        # but the next one probably will, so the generation is not stopped.
        self.kept_alive = False
        self.waiters = 0
        # Requests answered from this generation's text that did not start it (typed-ahead):
        # they need every piece; the owner only needs to hear when its suggestion is complete.
        self.followers = 0
        self.owner_complete = False  # the engine stops by itself after this piece
        self.job = None
        self._listeners: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future | None = None

    def start(self, job, run) -> None:
        """`run` is the scheduler's coroutine for `job`; it runs detached from any request so
        that a request cancelled because the user typed on does not kill a useful prediction."""
        self._loop = asyncio.get_running_loop()
        self.job = job
        self._task = asyncio.ensure_future(run)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.done = True
        if task.cancelled():
            self.result = GenerationResult(cancelled=True)
        elif task.exception() is not None:
            self.error = task.exception()
            self.result = GenerationResult(cancelled=True)
        else:
            self.result = task.result()
        self._notify()

    @property
    def tokens(self) -> int:
        return self.result.tokens if self.result is not None and self.result.tokens else len(self._marks)

    def on_text(self, piece: str) -> bool:
        """Slot thread: the engine decoded `piece`. False = the owner's suggestion is complete."""
        text = self.text + piece
        self._marks.append((len(text), time.perf_counter()))
        self.text = text
        self.owner_complete = trim_suggestion(text, **self._owner_trim).complete
        if self.owner_complete or self.followers:
            # Waking the event loop for every piece nobody can use would take CPU from the
            # engine on a small machine; the end of the generation always notifies.
            self._loop.call_soon_threadsafe(self._notify)
        return not self.owner_complete

    def _notify(self) -> None:
        for listener in self._listeners:
            listener.set()

    def stop(self) -> None:
        if self.job is not None and not self.done and not self.owner_complete:
            self.job.abandon(superseded=True)

    def available_at(self, length: int) -> float | None:
        """When the output first grew beyond `length` characters."""
        for size, at in list(self._marks):
            if size > length:
                return at
        return None

    def may_serve(self, before: str, after: str, params: GenerationParams) -> bool:
        # `start` is the owner's held-back text, which typing along the prediction changes.
        same = dataclasses.replace(params, start="") == dataclasses.replace(self.params, start="")
        return self.error is None and same and after == self.after and before.startswith(self.body)

    def predicts(self, document: str) -> bool:
        """Whether `document` is the generation's document plus text it already predicted."""
        if len(document) < len(self.body) + len(self.after):
            return False
        if not (document.startswith(self.body) and document.endswith(self.after)):
            return False
        typed = document[len(self.body): len(document) - len(self.after)]
        return self.text.startswith(typed)

    def evaluate(self, before: str, trim_args: dict, owner: bool):
        """(outcome, text, first_at), or None while more output is needed to decide."""
        done = self.done  # read before the text: once done, the text is final
        text = self.text
        if owner:
            if self.error is not None:
                raise self.error
            typed, raw = "", text
        else:
            typed = before[len(self.body):]
            if len(text) < len(typed):
                return (MISS, "", None) if done or not typed.startswith(text) else None
            if not text.startswith(typed) or len(trim_args["held_back"]) > len(typed):
                return MISS, "", None  # (the new cursor holds back text from before this generation's)
            raw = text[len(typed) - len(trim_args["held_back"]):]
        first_at = self.available_at(len(typed))
        trimmed = trim_suggestion(raw, **trim_args)
        if trimmed.complete and (trimmed.text or owner):
            return OK, trimmed.text, first_at
        if not done:
            return None
        result = self.result
        if result.cancelled or (not owner and result.stopped_by_caller):
            # Cut short (superseded, or the owner's suggestion ended before this one's would).
            return (CANCELLED if owner else MISS), "", None
        # Cut by the token limit: the last line may be unfinished and is dropped.
        final = trim_suggestion(raw, **trim_args, finished=result.tokens < self.params.max_new_tokens)
        if not owner and not final.text:
            return MISS, "", None
        return OK, final.text, first_at


async def answer_from(g: Generation, before: str, trim_args: dict, *, stale: asyncio.Event, owner: bool = False):
    """Wait until `g` answers the request for `before` (OK), cannot (MISS), or the document
    changed / the generation was cancelled (CANCELLED). Returns (outcome, text, first_at)."""
    g.waiters += 1
    g.followers += 0 if owner else 1
    g.kept_alive = False
    listener = asyncio.Event()
    g._listeners.add(listener)
    try:
        while True:
            listener.clear()
            outcome = g.evaluate(before, trim_args, owner)
            if outcome is not None:
                if outcome[0] is OK and g.owner_complete and not g.done:
                    # The engine is stopping by itself (its loop stops right after this piece):
                    # answer once the slot is free, so the job is over when the client sees it.
                    await asyncio.shield(g._task)
                return outcome
            if stale.is_set():
                return CANCELLED, "", None
            progress = asyncio.ensure_future(listener.wait())
            changed = asyncio.ensure_future(stale.wait())
            try:
                await asyncio.wait({progress, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                progress.cancel()
                changed.cancel()
    finally:
        g._listeners.discard(listener)
        g.waiters -= 1
        g.followers -= 0 if owner else 1
        # Nobody wants the rest: free the slot (unless the user is typing along it).
        if g.waiters == 0 and not g.kept_alive:
            g.stop()
