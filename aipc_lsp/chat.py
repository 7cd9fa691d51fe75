"""The inline-chat pipeline, independent of LSP: instruction + selection -> streamed answer.

Builds the conversation (system prompt, the document's earlier turns, the instruction with
the selected code), renders it with the model's chat template, runs it as a "chat" job on
the scheduler and streams the answer through a stop filter. For edit-type instructions the
answer's first code block becomes the replacement for the selection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import textwrap
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from aipc_lsp.chat_template import ChatPrompter, StopFilter
from aipc_lsp.config import ChatSettings
from aipc_lsp.engines.base import GenerationParams
from aipc_lsp.runtime import ModelRuntime
from aipc_lsp.scheduler import Job, JobKind

log = logging.getLogger(__name__)

CHAT = JobKind.CHAT
ROLES = ("system", "user", "assistant")
_QUESTION = re.compile(
    r"^\s*(why|what|how|explain|describe|does|do|is|are|can|could|should|where|when|which|who|tell)\b", re.I)
_FENCE = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)^[ \t]*```", re.S | re.M)
SYSTEM_EDIT = (
    "You are a coding assistant inside a code editor. Change the code as the user asks. "
    "Reply with the complete new code in one fenced code block, without explanations.")
SYSTEM_ASK = "You are a coding assistant inside a code editor. Answer the user's question about the code briefly."
# Documents whose history is kept; the least recently used beyond this are forgotten.
MAX_DOCUMENTS = 64


class ChatTooLong(ValueError):
    """The instruction and selection alone do not fit the model's context budget."""


class ChatSuperseded(RuntimeError):
    """A newer chat on the same document (or closing it) stopped this one."""


@dataclass
class ChatAnswer:
    text: str
    mode: str  # "edit" or "ask"
    code: str | None  # the replacement for the selection (edit mode, when the answer had code)
    first_token_ms: float | None
    total_ms: float
    prompt_tokens: int
    history_turns: int


@dataclass
class ChatRequest:
    uri: str
    instruction: str
    selection: str
    language_id: str = ""
    # Lines around an empty selection, so "write a helper here" sees where "here" is.
    surrounding: str = ""
    mode: str | None = None  # "edit" / "ask"; None = guess from the instruction
    history: list[dict] | None = None  # given by the client; None = the server's own
    version: int | None = None


def guess_mode(instruction: str) -> str:
    text = instruction.strip()
    return "ask" if text.endswith("?") or _QUESTION.match(text) else "edit"


def extract_code(answer: str) -> str | None:
    match = _FENCE.search(answer)
    return match.group(1) if match else None


def fit_code(code: str, selection: str, indent: str, from_line_start: bool) -> str:
    """Shape the model's code like the selection it replaces: its indentation, its final newline.
    `from_line_start`: the edit starts at column 0 (every line gets `indent`); otherwise it
    starts after text on the first line, which keeps its place."""
    lines = textwrap.dedent(code).rstrip("\n").split("\n")
    shaped = []
    for i, line in enumerate(lines):
        if not line.strip():
            shaped.append("")
        elif i == 0 and not from_line_start:
            shaped.append(line.lstrip())
        else:
            shaped.append(indent + line)
    text = "\n".join(shaped)
    ends_line = selection.endswith("\n") or (not selection and from_line_start)
    return text + "\n" if ends_line else text


def user_message(request: ChatRequest, mode: str) -> str:
    fence = request.language_id or ""
    if request.selection.strip():
        return f"{request.instruction.strip()}\n\n```{fence}\n{request.selection.rstrip()}\n```"
    if request.surrounding.strip():
        where = "Insert at the end of" if mode == "edit" else "Context"
        return f"{request.instruction.strip()}\n\n{where} this code:\n```{fence}\n{request.surrounding.rstrip()}\n```"
    return request.instruction.strip()


class ChatService:
    def __init__(self, runtime: ModelRuntime):
        self.runtime = runtime
        self._histories: OrderedDict[str, list[dict]] = OrderedDict()
        self._prompters: dict[int, ChatPrompter] = {}

    def forget(self, uri: str) -> None:
        self._histories.pop(uri, None)

    def history(self, uri: str) -> list[dict]:
        return list(self._histories.get(uri, []))

    def _prompter(self, engine) -> ChatPrompter:
        """The engine's prompter, made once (asks the engine for its template: not on the loop)."""
        key = id(engine)
        if key not in self._prompters:
            self._prompters = {key: ChatPrompter(engine)}  # one engine at a time is plenty
        return self._prompters[key]

    def _fit(self, prompter, engine, system: str, history: list[dict], user: str,
             settings: ChatSettings, prompt_limit: int | None = None) -> tuple[str, list[dict], int]:
        """Render the conversation, dropping the oldest turns until it fits the budget (and the
        longest prompt a statically shaped device accepts)."""
        history = history[-2 * settings.history_turns:] if settings.history_turns else []
        budget = settings.context_tokens - settings.max_tokens
        if prompt_limit:
            budget = min(budget, prompt_limit)
        while True:
            messages = [{"role": "system", "content": system}, *history, {"role": "user", "content": user}]
            prompt = prompter.render(messages)
            tokens = engine.count_tokens(prompt)
            if tokens <= budget:
                return prompt, history, tokens
            if not history:
                raise ChatTooLong(
                    f"the instruction and selection are {tokens} tokens; the chat budget leaves {budget} "
                    f"(chat.context_tokens {settings.context_tokens} - chat.max_tokens {settings.max_tokens})")
            history = history[2:] if len(history) >= 2 else []

    async def answer(self, request: ChatRequest, settings: ChatSettings,
                     on_piece: Callable[[str], None] | None = None) -> ChatAnswer:
        """Run one chat turn. `on_piece` is called in the slot's worker thread with each piece.
        Raises ChatSuperseded, ChatTooLong, ModelUnavailable; cancellation propagates."""
        started = time.perf_counter()
        scheduler = await self.runtime.scheduler()
        # Template and token counts from a loaded slot (all slots serve the same model family).
        engine = next((s for s in scheduler.slots if s.ready), scheduler.slots[0]).engine
        mode = request.mode or guess_mode(request.instruction)
        user = user_message(request, mode)
        history = request.history if request.history is not None else self.history(request.uri)
        system, limit = SYSTEM_EDIT if mode == "edit" else SYSTEM_ASK, scheduler.prompt_limit()

        def fitted() -> tuple[ChatPrompter, str, list[dict], int]:
            # The engine's template, renderer and token counts: each a round trip to its worker.
            prompter = self._prompter(engine)
            return prompter, *self._fit(prompter, engine, system, history, user, settings, limit)

        prompter, prompt, kept, prompt_tokens = await asyncio.to_thread(fitted)
        stream = StopFilter(prompter.stop)
        received: list[str] = []

        def on_text(piece: str) -> bool:
            received.append(piece)
            released = stream.feed(piece)
            if released and on_piece is not None:
                on_piece(released)
            # An edit is complete once its code block closes: no need to decode the chatter after it.
            return not stream.stopped and not (mode == "edit" and extract_code(stream.text) is not None)

        params = GenerationParams(max_new_tokens=settings.max_tokens, temperature=settings.temperature,
                                  stop=prompter.stop)
        # A chat job is generated in chunks so completions typed meanwhile can take the slot.
        job = Job(key=(request.uri, CHAT), prompt=prompt, params=params, version=request.version, on_text=on_text)
        result = await scheduler.run(job)
        if result.cancelled:
            raise ChatSuperseded("superseded by a newer chat on this document, or the document was closed")
        # Engines stop on a stop string before handing over the piece that completed it.
        seen = "".join(received)
        tail = result.text[len(seen):] if result.text.startswith(seen) else ""
        rest = (stream.feed(tail) if tail else "") + stream.flush()
        if rest and on_piece is not None:
            on_piece(rest)
        text = stream.text
        self._remember(request.uri, kept, user, text)
        answer = ChatAnswer(
            text=text, mode=mode, code=extract_code(text) if mode == "edit" else None,
            first_token_ms=result.first_token_s * 1000 if result.first_token_s is not None else None,
            total_ms=(time.perf_counter() - started) * 1000, prompt_tokens=prompt_tokens,
            history_turns=len(kept) // 2)
        log.info("chat %s (%s, %s template): %d prompt tokens, %d turns of history, first token %s, %.0f ms",
                 request.uri, mode, prompter.source, prompt_tokens, answer.history_turns,
                 f"{answer.first_token_ms:.0f} ms" if answer.first_token_ms is not None else "-", answer.total_ms)
        return answer

    def _remember(self, uri: str, history: list[dict], user: str, answer: str) -> None:
        self._histories[uri] = [*history, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        self._histories.move_to_end(uri)
        while len(self._histories) > MAX_DOCUMENTS:
            self._histories.popitem(last=False)
