"""`--remote URL`: the same prompts against an OpenAI-compatible completions endpoint (e.g.
llama.cpp's server), streamed, so a local peer can be compared side by side."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
import uuid

from aipc_lsp.bench.corpus import LONG_PROMPT, SHORT


def _stream(url: str, prompt: str, max_tokens: int, timeout: float = 120) -> dict:
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(url.rstrip("/") + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    stamps: list[float] = []
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if any(c.get("text") for c in chunk.get("choices", [])):
                stamps.append(time.perf_counter())
    first = (stamps[0] - started) * 1000 if stamps else None
    other = (stamps[-1] - stamps[0]) * 1000 / (len(stamps) - 1) if len(stamps) > 1 else None
    return {"first_ms": first, "other_ms_per_token": other, "chunks": len(stamps)}


def run(url: str, *, long_prompt: str, quick: bool) -> dict:
    """Streamed chunks stand in for tokens (servers send one token per chunk)."""
    reps = 2 if quick else 5
    short = [_stream(url, SHORT, 32) for _ in range(reps)]
    long = [_stream(url, LONG_PROMPT, 48 if quick else 128) for _ in range(reps)]
    cold, warm = [], []
    for _ in range(1 if quick else 3):
        prompt = f"# run {uuid.uuid4().hex}\n" + long_prompt
        cold.append(_stream(url, prompt, 4)["first_ms"])
        for extra in ("    ", "    r", "    re")[: 2 if quick else 3]:
            warm.append(_stream(url, prompt + extra, 4)["first_ms"])

    def med(rows, key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    other = med(long, "other_ms_per_token")
    return {
        "url": url,
        "first_ms": med(short, "first_ms"),
        "other_ms_per_token": other,
        "tokens_per_s": 1000 / other if other else None,
        "cold_first_ms": statistics.median(v for v in cold if v is not None) if any(cold) else None,
        "incremental_first_ms": statistics.median(v for v in warm if v is not None) if any(warm) else None,
    }
