"""`--remote URL`: the tasks against an OpenAI-compatible llama.cpp server (llama-cpp-python's) as
llama.vim would ask it (eval/llama_vim.py): its FIM prompt built here, /v1/completions streamed,
greedy, the server's stop rules for its request applied as the pieces arrive, its post-processing
and accept rule."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from aipc_lsp.bench.remote import completion_chunks
from aipc_lsp.eval import llama_vim
from aipc_lsp.eval.tasks import Task

REQUEST_TIMEOUT_S = 300.0


def _post(url: str, path: str, body: dict, timeout: float = 30.0):
    request = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


def stream_completion(url: str, body: dict, on_piece: Callable[[str, float], bool],
                      timeout: float = REQUEST_TIMEOUT_S) -> float | None:
    """/v1/completions streamed; `on_piece(text, ms since the first piece)` returns True to stop
    reading (the connection is then closed, which ends the server's generation). Returns the ms
    from the request to the first piece."""
    started, first = time.perf_counter(), None
    with contextlib.closing(completion_chunks(url, body, timeout)) as chunks:
        for piece, arrived in chunks:
            if not piece:
                continue
            now = (arrived - started) * 1000
            if first is None:
                first = now
            if on_piece(piece, now - first):
                break
    return first


class RemoteTokens:
    """The remote model's tokenizer (llama-cpp-python's /extras/tokenize and /extras/detokenize),
    to cut prefix and suffix where llama.cpp's /infill cuts them."""

    def __init__(self, url: str):
        self.url = url

    def tokens(self, text: str) -> list[int]:
        with _post(self.url, "/extras/tokenize", {"input": text}) as response:
            return json.loads(response.read())["tokens"]

    def text(self, tokens: list[int]) -> str:
        with _post(self.url, "/extras/detokenize", {"tokens": tokens}) as response:
            return json.loads(response.read())["text"]

    def count(self, text: str) -> int:
        return len(self.tokens(text)) if text else 0

    def keep_last(self, text: str, n: int) -> str:
        tokens = self.tokens(text)
        return text if len(tokens) <= n else self.text(tokens[len(tokens) - n:])

    def keep_first(self, text: str, n: int) -> str:
        tokens = self.tokens(text)
        return text if len(tokens) <= n else self.text(tokens[:n])


def probe(url: str, timeout: float = 10.0) -> tuple[str | None, str | None]:
    """(the served model's id, None) or (None, why the server cannot be used)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=timeout) as response:
            models = json.loads(response.read()).get("data") or [{}]
        return Path(str(models[0].get("id", "?"))).name, None  # llama-cpp-python names it by its path
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"{url} is unreachable or not an OpenAI-compatible server: {exc}"


def complete(url: str, task: Task, *, max_tokens: int, open_other_files: bool,
             tokens: RemoteTokens | None) -> dict:
    """One task as llama.vim would: the answer, the document after accepting it, and timings."""
    lines = task.text.split("\n")
    ctx = llama_vim.local_context(lines, task.line, task.column)
    extra = llama_vim.ring_chunks(list(task.other_files)) if open_other_files else []
    prompt = llama_vim.infill_prompt(ctx, extra, tokens)
    stop = llama_vim.ServerStop(ctx.indent)
    started = time.perf_counter()
    # repeat_penalty 1.0: llama.cpp's server default (llama-cpp-python's is 1.1).
    first_ms = stream_completion(url, {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                                       "repeat_penalty": 1.0}, stop.feed)
    total_ms = (time.perf_counter() - started) * 1000
    rendered = llama_vim.render(stop.text, lines, task.line, task.column)
    accepted = "\n".join(llama_vim.accept(lines, task.line, task.column, rendered))
    return {"suggestion": "\n".join(rendered.content) if rendered.can_accept else "", "accepted": accepted,
            "ms": total_ms, "first_ms": first_ms, "raw": stop.text, "stopped_by": stop.stopped_by}


def run(url: str, tasks: list[Task], *, max_tokens: int, open_other_files: bool,
        progress: Callable[[str], None] = lambda msg: None) -> dict:
    model, error = probe(url)
    if error:
        return {"error": error}
    tokens = RemoteTokens(url)
    try:
        tokens.count("def f():")
    except (urllib.error.URLError, OSError, ValueError):
        tokens = None  # no tokenizer endpoint: prefix and suffix go uncut
    answers = {}
    for index, task in enumerate(tasks, 1):
        try:
            answers[task.id] = complete(url, task, max_tokens=max_tokens, open_other_files=open_other_files,
                                        tokens=tokens)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            answers[task.id] = {"suggestion": "", "accepted": task.text, "ms": None, "error": str(exc)}
        progress(f"remote {index}/{len(tasks)} {task.id}")
    return {"model": model, "tokenizer_cut": tokens is not None, "answers": answers}
