"""Engine-level benchmark, run in a child process per configuration so that peak RSS and
load time belong to that configuration alone: the figures the AI-PC guides print (model
load, first-token latency, other-token latency, tokens/s, max RSS).

"Bare" means the engine's own generate call with a streamer that only takes timestamps:
the rate aipc-lsp's server path is compared against.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import sys
import threading
import time
import uuid

from aipc_lsp.bench.corpus import (DECODE_RUNS, LONG_PROMPT, SHORT, corpus_text, decode_document, typing_document,
                                   typing_line_starts, typing_parts)
from aipc_lsp.bench.prompts import PromptBuilder, PromptSettings


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


def server_prompts(spec: dict, engine) -> PromptBuilder:
    """How the server builds its prompts for this model, from the bench's prompt settings
    (`spec["prompts"]`, bench.prompts.PromptSettings as JSON)."""
    from aipc_lsp import fim

    settings = PromptSettings.from_json(spec.get("prompts"))
    return settings.builder(fim.choose(settings.fim, engine.count_tokens), engine.count_tokens)


_NEWLINE = re.compile("\n")


def typing_place(text: str, tokens: int, prompts: PromptBuilder) -> tuple[int, int]:
    """Where the server bench's typing document begins in `text` and where it opens its new line
    (corpus.typing_parts), so that the prompt the server builds at the cursor (its real suffix, to
    the end of the definition; a unique first line before it) has at most `tokens` tokens and
    comes within a line of that: the first such line whose whole prefix holds more, the document
    beginning as late as that takes. (Until the twenty-seventh session the document began at the
    corpus's beginning and the place was the last that fitted: where few places qualify, the
    prompt came out ~400 tokens short.)"""
    count = prompts.count_tokens
    starts = typing_line_starts(text)
    if not starts:
        return 0, len(prompt_of_tokens(count, text, max(64, tokens - prompts.suffix_reserve())))
    head = f"# bench {uuid.uuid4().hex}\n"

    def size(prefix: str, suffix: str) -> int:
        return count(prompts.prompt(head + prefix + suffix, len(head) + len(prefix)))

    def whole_size(start: int) -> int:
        prefix, _, suffix = typing_parts(text, start)
        return size(prefix, suffix)

    lo, hi = 0, len(starts) - 1  # the first place whose whole prefix holds more than `tokens`
    while lo < hi:
        mid = (lo + hi) // 2
        if whole_size(starts[mid]) > tokens:
            hi = mid
        else:
            lo = mid + 1
    start = starts[lo]
    prefix, _, suffix = typing_parts(text, start)  # (the document at `begin` is prefix[begin:]: typing_document)
    # Dropping lines from the document's beginning only shortens the prompt (the budget is larger).
    begins = [0] + [m.end() for m in _NEWLINE.finditer(text, 0, start)]
    lo, hi = 0, len(begins) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if size(prefix[begins[mid]:], suffix) <= tokens:
            hi = mid
        else:
            lo = mid + 1
    return begins[lo], start


def _engine_api_typing(engine, tokens: int, docs: int, keystrokes: int, prompts: PromptBuilder) -> dict:
    """The server's cold and typing figures without the server: our engine API (typing
    checkpoint, prompt lookup, settling between answers: what the worker runs) on the server
    bench's document of `tokens` tokens, cold, then typed on with the same keystrokes, its prompts
    built as the server builds them (FIM when the model has it, token healing when it is on). What
    the server's figures cannot go below in this run; with token healing, also what its grammar
    adds to a keystroke for a word not typed before (the peer compiles none)."""
    from aipc_lsp.engines.base import GenerationParams

    text = corpus_text()
    prefix, typed, suffix = typing_document(text, *typing_place(text, tokens, prompts))
    stop = prompts.template.stop if prompts.template is not None else ()
    # Token healing as the server asks it: the prompt ends before the typed word's last token and
    # the answer is constrained to rewrite it.
    last_token = engine.last_token if engine.info.constrains_start and prompts.settings.token_healing else None
    cold, typing = [], []
    for _ in range(docs):
        head = f"# run {uuid.uuid4().hex}\n" + prefix
        for k in range(min(keystrokes, len(typed)) + 1):
            prompt, start = prompts.healed(head + typed[:k] + suffix, len(head) + k, last_token)
            result = engine.generate(prompt, GenerationParams(max_new_tokens=4, stop=stop, start=start),
                                     threading.Event())
            if result.first_token_s is not None:
                (typing if k else cold).append(result.first_token_s * 1000)
            engine.settle()  # as the worker does once an answer is out and nothing waits
    return {"api_cold_first_ms": statistics.median(cold) if cold else None,
            "api_typing_first_ms": statistics.median(typing) if typing else None,
            "healing_grammar_ms": _healing_grammar_ms(engine, prompt, stop) if last_token is not None else None}


def _healing_grammar_ms(engine, prompt: str, stop: tuple[str, ...], pairs: int = 4) -> float:
    """What token healing's constraint adds to a keystroke's first token: the engine compiles a
    grammar for each held-back text it has not met before (the library keeps those it compiled),
    so a word the user has not typed before pays it. The same prompt answered with a start never
    seen and with none, in turns; the median difference."""
    from aipc_lsp.engines.base import GenerationParams

    def first_ms(start: str) -> float:
        result = engine.generate(prompt, GenerationParams(max_new_tokens=1, stop=stop, start=start), threading.Event())
        engine.settle()
        return (result.first_token_s or 0.0) * 1000

    first_ms("")  # the prompt cached, as a keystroke finds it
    # A word of letters no text has (the grammar's cost grows a little with its length: 5 here).
    words = [" " + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:4]) + "q" for _ in range(pairs)]
    return statistics.median(first_ms(word) - first_ms("") for word in words)


def reference_decode(engine, og, round_: int, decode_tokens: int, prompts: PromptBuilder) -> dict:
    """The reference for the server's decode rate: what the server decodes in that round (its
    prompt at the document's end, built as the server builds it), by the library's own generate."""
    docs = [decode_document(run, round_) for run in range(DECODE_RUNS)]
    runs = [_timed_generate(engine, og, prompts.prompt(doc, len(doc)), decode_tokens) for doc in docs]
    return {"long_tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "step_ms": statistics.median(r["step_ms"] for r in runs)}


def serve_reference(spec: dict, requests=sys.stdin, replies=sys.stdout) -> None:
    """The server's engine configuration, bare, loaded once and kept while the server bench runs,
    so the server's decode and this one take turns a few seconds apart (load drifts on a shared
    host within minutes). One JSON request per line: {"op": "decode", "round": N} or
    {"op": "typing"}; one BENCH-RESULT line each."""
    import openvino_genai as og

    engine = _engine(spec)
    engine.load()
    quick = spec.get("quick", False)
    prompts = server_prompts(spec, engine)
    replies.write("BENCH-RESULT {}\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        try:
            if request.get("op") == "decode":
                result = reference_decode(engine, og, int(request.get("round", 0)), 32 if quick else 128, prompts)
            else:
                result = _engine_api_typing(engine, spec.get("context_tokens", 1536), docs=1 if quick else 2,
                                            keystrokes=5 if quick else 16, prompts=prompts)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write("BENCH-RESULT " + json.dumps(result) + "\n")
        replies.flush()
    engine.close()


def _engine(spec: dict):
    """The configuration's engine, built as the server builds it (in this process): the default
    settings but for the configuration's OpenVINO properties and prompt lookup."""
    from aipc_lsp.config import Settings, SlotSettings
    from aipc_lsp.engines import build_engine, engine_spec

    settings = Settings()
    settings.openvino = dataclasses.replace(settings.openvino, config=spec.get("ov_config") or {},
                                            prompt_lookup_tokens=spec.get("prompt_lookup_tokens", 0))
    slot = SlotSettings(engine=spec.get("engine", "openvino"), device=spec["device"], threads=spec.get("threads", 0),
                        precision=spec.get("precision", ""))
    return build_engine(engine_spec(slot, spec["model"], settings))


def run(spec: dict) -> dict:
    """One configuration: spec has model, device, label, ov_config, quick, context_tokens."""
    if spec.get("engine", "openvino") != "openvino":
        return run_engine_api(spec)
    import openvino_genai as og

    from aipc_lsp.engines.base import GenerationParams

    engine = _engine(spec)
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
    if spec.get("doc_tokens"):
        # Documents for the server bench, sized by this tokenizer so that the prompt the server builds
        # at the cursor has about N tokens, and that prompt's size, counted.
        text, prompts = corpus_text(), server_prompts(spec, engine)
        out["fim"] = prompts.template.name if prompts.template is not None else None
        out["fim_order"] = prompts.template.order if prompts.template is not None else None
        out["doc_sizes"], out["prompt_tokens"] = {}, {}
        for n in spec["doc_tokens"]:
            out["doc_sizes"][n] = place = typing_place(text, n, prompts)
            prefix, _, suffix = typing_document(text, *place)
            head = f"# bench {uuid.uuid4().hex}\n{prefix}"
            out["prompt_tokens"][n] = engine.count_tokens(prompts.prompt(head + suffix, len(head)))
    out["peak_rss_mb"] = peak_rss_mb()
    engine.close()
    return out


def run_engine_api(spec: dict) -> dict:
    """Another engine (ONNX Runtime GenAI, transformers), built as the server builds it. Their
    decode loops are aipc-lsp's own over the library's model call, so "bare" is the engine API:
    the figures come from its first-token time and the total of each generation."""
    from aipc_lsp.engines.base import GenerationParams

    engine = _engine(spec)
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
