"""Engine-level benchmark, run in a child process per configuration so that peak RSS and
load time belong to that configuration alone: the figures the AI-PC guides print (model
load, first-token latency, other-token latency, tokens/s, max RSS).

"Bare" means the engine's own generate call with a streamer that only takes timestamps:
the rate aipc-lsp's server path is compared against.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import uuid

from aipc_lsp.bench.corpus import DECODE_RUNS, LONG_PROMPT, SHORT, corpus_text, decode_document


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _timed_generate(engine, og, prompt: str, max_new_tokens: int, ignore_eos: bool = True) -> dict:
    """The bare pipeline call: token timestamps only, nothing decoded. The engine's own
    generation config (greedy, prompt lookup when it is on), with the library's generate."""
    from aipc_lsp.engines.base import GenerationParams

    pipe = engine._pipe
    config = engine._generation_config(GenerationParams(max_new_tokens=max_new_tokens))
    config.ignore_eos = ignore_eos
    stamps: list[tuple[float, int]] = []  # (when, tokens): prompt lookup yields several per step

    class Stamps(og.StreamerBase):
        def write(self, token):
            stamps.append((time.perf_counter(), len(token) if isinstance(token, list) else 1))
            return og.StreamingStatus.RUNNING

        def end(self):
            pass

    started = time.perf_counter()
    if isinstance(pipe, og.ContinuousBatchingPipeline):
        pipe.generate([prompt], [config], Stamps())
    else:
        pipe.generate(prompt, config, Stamps())
    tokens = sum(n for _, n in stamps)
    first = (stamps[0][0] - started) * 1000 if stamps else None
    later = tokens - stamps[0][1] if stamps else 0
    other = (stamps[-1][0] - stamps[0][0]) * 1000 / later if later > 0 else None
    # One decode step (a streamer call): with prompt lookup it yields several tokens.
    step = (stamps[-1][0] - stamps[0][0]) * 1000 / (len(stamps) - 1) if len(stamps) > 1 else None
    return {"first_ms": first, "other_ms_per_token": other, "tokens": tokens,
            "tokens_per_s": 1000 / other if other else None, "step_ms": step}


def prompt_of_tokens(count_tokens, text: str, tokens: int) -> str:
    """The longest line-aligned beginning of `text` with at most `tokens` tokens."""
    lines = text.split("\n")
    lo, hi = 1, len(lines)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens("\n".join(lines[:mid]) + "\n") <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return "\n".join(lines[:lo]) + "\n"


def _engine_api_typing(engine, tokens: int, docs: int, keystrokes: int) -> dict:
    """The server's cold and typing figures without the server: our engine API (typing
    checkpoint, prompt lookup, settling between answers: what the worker runs) on the server
    bench's document of `tokens` tokens, cold, then typed on with the same keystrokes. What the
    server's figures cannot go below in this run."""
    from aipc_lsp.engines.base import GenerationParams

    text = corpus_text()
    base = prompt_of_tokens(engine.count_tokens, text, tokens - 16)
    following = text[len(base):len(base) + keystrokes]
    cold, typed = [], []
    for _ in range(docs):
        head = f"# run {uuid.uuid4().hex}\n" + base
        for k in range(len(following) + 1):
            prompt = head + following[:k]
            # As the server builds it: a trailing space waits for the word after it (token healing).
            prompt = prompt[:-1] if prompt.endswith(" ") else prompt
            result = engine.generate(prompt, GenerationParams(max_new_tokens=4), threading.Event())
            if result.first_token_s is not None:
                (typed if k else cold).append(result.first_token_s * 1000)
            engine.settle()  # as the worker does once an answer is out and nothing waits
    return {"api_cold_first_ms": statistics.median(cold) if cold else None,
            "api_typing_first_ms": statistics.median(typed) if typed else None}


def reference_decode(engine, og, round_: int, decode_tokens: int) -> dict:
    """The reference for the server's decode rate: what the server decodes in that round (its
    prompt: the document less the held-back space), by the library's own generate."""
    runs = [_timed_generate(engine, og, decode_document(run, round_)[:-1], decode_tokens) for run in range(DECODE_RUNS)]
    return {"long_tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "step_ms": statistics.median(r["step_ms"] for r in runs)}


def serve_reference(spec: dict, requests=sys.stdin, replies=sys.stdout) -> None:
    """The server's engine configuration, bare, loaded once and kept while the server bench runs,
    so the server's decode and this one take turns a few seconds apart (load drifts on a shared
    host within minutes). One JSON request per line: {"op": "decode", "round": N} or
    {"op": "typing"}; one BENCH-RESULT line each."""
    import openvino_genai as og

    engine = _openvino_engine(spec)
    engine.load()
    quick = spec.get("quick", False)
    replies.write("BENCH-RESULT {}\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        try:
            if request.get("op") == "decode":
                result = reference_decode(engine, og, int(request.get("round", 0)), 32 if quick else 128)
            else:
                result = _engine_api_typing(engine, spec.get("context_tokens", 1536), docs=1 if quick else 2,
                                            keystrokes=5 if quick else 16)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write("BENCH-RESULT " + json.dumps(result) + "\n")
        replies.flush()
    engine.close()


def _openvino_engine(spec: dict):
    from aipc_lsp.engines.openvino import OpenVINOEngine

    return OpenVINOEngine(spec["model"], spec["device"], threads=spec.get("threads", 0),
                          ov_config=spec.get("ov_config") or {}, prompt_lookup_tokens=spec.get("prompt_lookup_tokens", 0))


def run(spec: dict) -> dict:
    """One configuration: spec has model, device, label, ov_config, quick, context_tokens."""
    if spec.get("engine", "openvino") != "openvino":
        return run_engine_api(spec)
    import openvino_genai as og

    from aipc_lsp.engines.base import GenerationParams

    engine = _openvino_engine(spec)
    started = time.perf_counter()
    engine.load()
    out: dict = {"label": spec["label"], "engine": "openvino", "device": spec["device"],
                 "model": spec["model"], "load_s": time.perf_counter() - started}
    quick = spec.get("quick", False)
    repeats = 2 if quick else 5
    decode_tokens = 32 if quick else 128

    short = [_timed_generate(engine, og, SHORT, decode_tokens) for _ in range(repeats)]
    out["short_prompt_tokens"] = engine.count_tokens(SHORT)
    out["first_ms"] = statistics.median(r["first_ms"] for r in short)
    out["other_ms_per_token"] = statistics.median(r["other_ms_per_token"] for r in short)
    out["tokens_per_s"] = 1000 / out["other_ms_per_token"]
    # The decode-rate reference for the server path: the same prompt the server bench uses.
    long = [_timed_generate(engine, og, LONG_PROMPT, decode_tokens) for _ in range(repeats)]
    out["long_tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in long)
    out["step_ms"] = statistics.median(r["step_ms"] for r in long)

    # A long prompt cold (a unique first line defeats the prefix cache), then the same
    # prompt grown by a few characters, as when the user types.
    long_tokens = spec.get("context_tokens", 1536)
    base = prompt_of_tokens(engine.count_tokens, corpus_text(), long_tokens - 16)
    cold, warm = [], []
    for i in range(1 if quick else 3):
        prompt = f"# run {uuid.uuid4().hex}\n" + base
        cold.append(_timed_generate(engine, og, prompt, 4)["first_ms"])
        for extra in ("    ", "    r", "    re", "    ret", "    retu")[: 2 if quick else 5]:
            warm.append(_timed_generate(engine, og, prompt + extra, 4)["first_ms"])
    out["long_prompt_tokens"] = engine.count_tokens("# run x\n" + base)
    out["cold_first_ms"] = statistics.median(cold)
    out["incremental_first_ms"] = statistics.median(warm)

    # Our own streaming path (incremental detokenizer + callbacks) on the same prompt.
    ours = []
    for _ in range(repeats):
        result = engine.generate(LONG_PROMPT, GenerationParams(max_new_tokens=decode_tokens), threading.Event(),
                                 lambda piece: True)
        if result.tokens > 1:
            ours.append((result.tokens - 1) / (result.total_s - result.first_token_s))
    out["engine_api_tokens_per_s"] = statistics.median(ours) if ours else None
    text = corpus_text()
    # Documents for the server bench, sized by this tokenizer (16 tokens spare for a unique first line).
    out["doc_sizes"] = {n: len(prompt_of_tokens(engine.count_tokens, text, n - 16)) for n in spec.get("doc_tokens", [])}
    out["peak_rss_mb"] = peak_rss_mb()
    engine.close()
    return out


def run_engine_api(spec: dict) -> dict:
    """Another engine (ONNX Runtime GenAI, transformers), built as the server builds it. Their
    decode loops are aipc-lsp's own over the library's model call, so "bare" is the engine API:
    the figures come from its first-token time and the total of each generation."""
    import importlib

    from aipc_lsp.config import Settings, SlotSettings
    from aipc_lsp.engines import engine_spec
    from aipc_lsp.engines.base import GenerationParams

    built = engine_spec(SlotSettings(engine=spec["engine"], device=spec["device"], precision=spec.get("precision", "")),
                        spec["model"], Settings())
    engine = getattr(importlib.import_module(built.module), built.cls)(*built.args, **built.kwargs)
    started = time.perf_counter()
    engine.load()
    out: dict = {"label": spec["label"], "engine": spec["engine"], "device": spec["device"],
                 "model": spec["model"], "load_s": time.perf_counter() - started}
    quick = spec.get("quick", False)
    repeats = 1 if quick else 2  # these engines decode slower than OpenVINO here (transformers fp32: ~10x)
    decode_tokens = 32 if quick else 128

    def generate(prompt: str, tokens: int):
        return engine.generate(prompt, GenerationParams(max_new_tokens=tokens), threading.Event(), lambda piece: True)

    def rate(result) -> float | None:
        later = result.total_s - (result.first_token_s or 0.0)
        return (result.tokens - 1) / later if result.tokens > 1 and later > 0 else None

    short = [generate(SHORT, decode_tokens) for _ in range(repeats)]
    out["short_prompt_tokens"] = engine.count_tokens(SHORT)
    out["first_ms"] = statistics.median(r.first_token_s * 1000 for r in short if r.first_token_s is not None)
    long = [generate(LONG_PROMPT, decode_tokens) for _ in range(repeats)]
    rates = [r for r in (rate(result) for result in long) if r]
    out["long_tokens_per_s"] = out["tokens_per_s"] = out["engine_api_tokens_per_s"] = (
        statistics.median(rates) if rates else None)
    out["other_ms_per_token"] = out["step_ms"] = 1000 / out["tokens_per_s"] if out["tokens_per_s"] else None

    base = prompt_of_tokens(engine.count_tokens, corpus_text(), spec.get("context_tokens", 1536) - 16)
    cold, warm = [], []
    for _ in range(1 if quick else 2):
        prompt = f"# run {uuid.uuid4().hex}\n" + base
        cold.append(generate(prompt, 4).first_token_s * 1000)
        for extra in ("    ", "    r", "    re", "    ret", "    retu")[: 2 if quick else 5]:
            warm.append(generate(prompt + extra, 4).first_token_s * 1000)
    out["long_prompt_tokens"] = engine.count_tokens("# run x\n" + base)
    out["cold_first_ms"] = statistics.median(cold)
    out["incremental_first_ms"] = statistics.median(warm)
    out["doc_sizes"] = {}
    out["peak_rss_mb"] = peak_rss_mb()
    engine.close()
    return out


def main(argv: list[str]) -> int:
    if argv[0] == "--reference":
        serve_reference(json.loads(argv[1]))
        return 0
    spec = json.loads(argv[0])
    try:
        result = run(spec)
    except Exception as exc:  # reported as a row, not a crash of the whole bench
        result = {"label": spec.get("label"), "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
