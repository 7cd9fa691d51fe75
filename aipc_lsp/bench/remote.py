"""`--remote URL`: an OpenAI-compatible completions server (llama.cpp's) given the very prompts the
server builds (the model's FIM layout, the same suffix budget), streamed, so a local peer is
compared side by side. The server bench asks it between its own phases (bench/server.py): while
one computes the other idles, and a drift of a shared host shows in both.

llama-cpp-python's `suffix` parameter does not emit FIM tokens (0.3.36), so the FIM prompt is sent
whole, built here by the server's own context builder (bench/prompts.py). The peer reuses the KV
cache of its previous prompt's common beginning as llama.cpp does (`cache_prompt`), so a keystroke
costs it what changed: in a prefix-suffix-middle prompt, the typed character and the whole suffix."""

from __future__ import annotations

import functools
import json
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable

from aipc_lsp.bench import rss
from aipc_lsp.bench.corpus import DECODE_RUNS, decode_document
from aipc_lsp.bench.prompts import PromptBuilder, PromptSettings
from aipc_lsp.bench.stats import summary
from aipc_lsp.fim import FimTemplate

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Tokens asked for a keystroke or a cold prompt: only the first one is timed.
FIRST_TOKEN_REQUEST = 4
REQUEST_TIMEOUT_S = 300.0


class PeerError(Exception):
    """The peer cannot be measured, and why."""


def _guarded(measure):
    """A measurement that records the peer's first failure instead of raising it, and is
    skipped once one was recorded."""
    @functools.wraps(measure)
    def call(self, *args, **kwargs):
        if self.error is not None:
            return None
        try:
            return measure(self, *args, **kwargs)
        except (OSError, ValueError, KeyError) as exc:  # URLError is an OSError
            self.error = f"{type(exc).__name__}: {exc}"
            return None
    return call


class Peer:
    """The peer over one bench run: asked by the server bench between its phases, its figures
    kept for the report."""

    def __init__(self, url: str, pid: int | None = None):
        self.url = url.rstrip("/")
        # Its memory, when it is a process of this machine: named, or the one listening on a loopback URL.
        self.pid = pid if pid is not None else _loopback_pid(self.url)
        self._count_path: str | None = None
        self._prompt: PromptBuilder | None = None
        self._typing: dict = {}
        self._decode: list[float | None] = []
        # The first failure mid-run: the peer is asked nothing more, the server bench goes on.
        self.error: str | None = None

    def prepare(self, template: FimTemplate | None, prompts: PromptSettings) -> None:
        """Checks that an OpenAI-compatible server answers (PeerError if not) and sets the
        server's prompt settings, counted by the peer's tokenizer when it has a count endpoint."""
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=10) as response:
                json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PeerError(f"{self.url} is unreachable or not an OpenAI-compatible server: {exc}") from None
        self._prompt = prompts.builder(template, self._token_counter())

    # --- its tokenizer (the same model's: the prompt's budget is counted as the server counts it) ---

    def _token_counter(self) -> Callable[[str], int] | None:
        """A token count by the peer's own tokenizer (llama-cpp-python's /extras/tokenize/count,
        llama.cpp's /tokenize), or None when it has neither (then sizes are estimated from characters)."""
        for path in ("/extras/tokenize/count", "/tokenize"):
            self._count_path = path
            try:
                if self.count_tokens("def f(x):\n    return x\n") > 0:
                    return self.count_tokens
            except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
                continue
        self._count_path = None
        return None

    def count_tokens(self, text: str) -> int:
        if self._count_path == "/tokenize":  # llama.cpp's own server
            return len(_post_json(self.url, "/tokenize", {"content": text})["tokens"])
        return int(_post_json(self.url, "/extras/tokenize/count", {"input": text})["count"])

    # --- measurements ------------------------------------------------------------------------

    def stream(self, prompt: str, max_tokens: int) -> dict:
        """One streamed completion: ms to its first chunk (the first token, even one that ends the
        answer at once) and the later tokens' rate (one chunk per token, as llama.cpp sends them)."""
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "cache_prompt": True}
        started, first, stamps = time.perf_counter(), None, []
        for text, now in completion_chunks(self.url, body):
            first = first if first is not None else now
            if text:
                stamps.append(now)
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
        return {"first_ms": (first - started) * 1000 if first is not None else None, "tokens": len(stamps),
                "tokens_per_s": rate}

    def _first_ms(self, text: str, offset: int) -> float | None:
        return self.stream(self._prompt.prompt(text, offset), FIRST_TOKEN_REQUEST)["first_ms"]

    @_guarded
    def typing(self, prefix: str, typed: str, suffix: str, *, cold_reps: int, pause_s: float) -> None:
        """The server bench's typing document: `cold_reps` new documents (a unique first line each)
        asked cold, then the last one typed on, one character of `typed` a request."""
        cold, incremental, head = [], [], ""
        for _ in range(cold_reps):
            head = f"# bench {uuid.uuid4().hex}\n{prefix}"
            cold.append(self._first_ms(head + suffix, len(head)))
        for k in range(1, len(typed) + 1):
            incremental.append(self._first_ms(head + typed[:k] + suffix, len(head) + k))
            time.sleep(pause_s)
        count = self._prompt.count_tokens
        self._typing = {"cold": [v for v in cold if v is not None],
                        "incremental": [v for v in incremental if v is not None],
                        "prompt_tokens": count(self._prompt.prompt(head + suffix, len(head))) if count else None}

    @_guarded
    def decode(self, round_: int, *, max_tokens: int, runs: int = DECODE_RUNS) -> float | None:
        """Tokens/s on the server's decode prompts of that round (the median of `runs`)."""
        rates = []
        for run in range(runs):
            doc = decode_document(run, round_)
            rate = self.stream(self._prompt.prompt(doc, len(doc)), max_tokens)["tokens_per_s"]
            if rate:
                rates.append(rate)
        self._decode.append(statistics.median(rates) if rates else None)
        return self._decode[-1]

    def report(self) -> dict:
        cold, incremental = self._typing.get("cold") or [], self._typing.get("incremental") or []
        rates = [r for r in self._decode if r]
        return {
            "url": self.url, "pid": self.pid, **({"error": self.error} if self.error else {}),
            "counted_by": {"/tokenize": "its /tokenize", "/extras/tokenize/count": "its /extras/tokenize/count"}.get(
                self._count_path, "a characters-per-token estimate"),
            "prompt_tokens": self._typing.get("prompt_tokens"),
            "cold_ms": summary(cold), "incremental_ms": summary(incremental),
            # p50 as the server's figures take it (the lower middle of an even count)
            "cold_first_ms": summary(cold)["p50"], "incremental_first_ms": summary(incremental)["p50"],
            "decode_rounds": self._decode,
            "tokens_per_s": statistics.median(rates) if rates else None,
            "peak_rss_mb": rss.peak_rss_mb(self.pid)[0] if self.pid is not None else None,
        }


def completion_chunks(url: str, body: dict, timeout: float = REQUEST_TIMEOUT_S):
    """POST /v1/completions streamed: each chunk's text ("" for one without) and when it arrived
    (time.perf_counter()), until [DONE]. Closing the generator early closes the connection, which
    ends the server's generation (`aipc-lsp eval` stops the peer's answer where llama.vim would)."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/completions", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield "".join(c.get("text") or "" for c in json.loads(data).get("choices", [])), time.perf_counter()


def _post_json(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _loopback_pid(url: str) -> int | None:
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in LOOPBACK:
        return None
    return rss.listening_pid(parts.port or (443 if parts.scheme == "https" else 80))
