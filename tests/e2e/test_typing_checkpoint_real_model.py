"""The typing checkpoint on the real model and OpenVINO GenAI's paged pipeline: cached when the
engine settles after an answer, it makes each keystroke prefill only the tokens it changed; a
keystroke after it still gets the model's suggestion, and a cancelled answer leaves the pipeline
clean. (Its speed: `aipc-lsp bench`.)"""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import pytest

from aipc_lsp.bench.corpus import corpus_text
from aipc_lsp.config import OpenVINOSettings
from aipc_lsp.engines.base import GenerationParams
from aipc_lsp.engines.openvino import OpenVINOEngine
from aipc_lsp.models.catalogue import SMOLLM2_135M
from aipc_lsp.models.fetch import fetch

pytestmark = pytest.mark.model

TEXT = corpus_text()


def _engine(**kwargs) -> OpenVINOEngine:
    engine = OpenVINOEngine(fetch(SMOLLM2_135M), "CPU", options=OpenVINOSettings(prompt_lookup_tokens=3, **kwargs))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engines():
    with_checkpoint, without = _engine(), _engine(typing_checkpoint=False)
    yield with_checkpoint, without
    with_checkpoint.close()
    without.close()


def _generate(engine: OpenVINOEngine, prompt: str, cancel: threading.Event | None = None, on_text=None):
    return engine.generate(prompt, GenerationParams(max_new_tokens=12), cancel or threading.Event(), on_text)


def test_a_keystroke_after_the_checkpoint_gets_the_models_suggestion(engines):
    with_checkpoint, without = engines
    agreed = 0
    for start in (0, 4000, 8000):
        head, typed = TEXT[start:start + 2000], TEXT[start + 2000:start + 2002]
        first = _generate(with_checkpoint, head)
        assert first.text and first.first_token_s is not None
        with_checkpoint.settle()
        assert not with_checkpoint._pipe.has_non_finished_requests()
        ours, reference = _generate(with_checkpoint, head + typed), _generate(without, head + typed)
        assert ours.text.strip(), ours
        # The restored block holds the same tokens' KV, computed in other chunks: bf16 rounding
        # may flip a near tie further on, but the suggestion starts as the model's own.
        agreed += ours.text[:3] == reference.text[:3]
    assert agreed >= 2


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# A fill-in-the-middle prompt with the cursor line's code after the middle marker
# (completion.fim_order = "psm-line"), SmolLM2's special tokens standing for the markers.
PSM_LINE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@pytest.mark.parametrize("layout", ["code", "psm-line"])
def test_each_keystroke_prefills_only_the_tokens_it_changed(monkeypatch, layout):
    """Typing along a line of code, settling after each answer as the worker does. The pipeline
    is made to compute one token per step, so the steps before the first token are the tokens
    the keystroke prefilled. Where the last answer's checkpoint (its prompt less the last token)
    prefixes the new prompt, those are at most the tokens after it: 1 where the typed character
    joined the last word, 2 where it began a new one. (A checkpoint filed under an older length
    made them grow with each token typed into the block.) With the line after the middle marker
    the same holds: the checkpoint is cut at the prompt's end, not before its last marker."""
    import openvino_genai as og

    class OneTokenPerStep(og.SchedulerConfig):
        def __init__(self):
            super().__init__()
            self.max_num_batched_tokens = 1

    monkeypatch.setattr(og, "SchedulerConfig", OneTokenPerStep)
    engine = _engine()
    try:
        pipe, steps, first_at = engine._pipe, [], []

        def step():
            steps.append(None)
            pipe.step()

        def on_text(piece):
            if not first_at:
                first_at.append(len(steps))

        def ids(text):
            return [int(i) for i in engine._tokenizer.encode(text).input_ids.data[0]]

        monkeypatch.setattr(engine, "_pipe", SimpleNamespace(
            step=step, add_request=pipe.add_request, has_non_finished_requests=pipe.has_non_finished_requests,
            get_config=pipe.get_config))
        start = TEXT.index("\n", 3000) + 1
        head = TEXT[start:start + 400]
        head = head[:head.rindex("\n") + 1]
        line = TEXT[start + len(head):].split("\n")[0].lstrip()[:20]
        indent = " " * 8
        stop: tuple[str, ...] = ()
        if layout == "psm-line":
            prefix, suffix, middle = stop = PSM_LINE_MARKERS
            below = TEXT[start + len(head):][:600]
            head = f"{prefix}{head}{suffix}{below[:below.rindex(chr(10))]}{middle}"
        checked, previous = [], None
        for k in range(1, len(line) + 1):
            prompt = head + indent + line[:k]
            prompt = prompt[:-1] if prompt.endswith(" ") else prompt  # as the server: a space waits for its word
            steps.clear()
            first_at.clear()
            engine.generate(prompt, GenerationParams(max_new_tokens=4, stop=stop), threading.Event(), on_text)
            engine.settle()
            tokens = ids(prompt)
            # (A prompt the same as the last, a space held back, is the server's to answer from
            # the last generation; here its request may restore an older block.)
            if previous not in (None, tokens) and _common(tokens, previous[:-1]) == len(previous) - 1:
                checked.append((repr(line[:k]), first_at[0], len(tokens) - (len(previous) - 1)))
            previous = tokens
        assert len(checked) >= 10, checked
        # Fewer where a longer partial block was cached too (a keystroke that left the prompt as it was).
        assert all(prefilled <= expected for _, prefilled, expected in checked), checked
        assert any(expected == 1 for _, _, expected in checked[5:]), checked  # well into the block too
    finally:
        engine.close()


def test_a_cancel_just_after_the_first_token_leaves_the_pipeline_clean(engines):
    with_checkpoint, _ = engines
    cancel = threading.Event()
    prompt = TEXT[12000:14000]
    result = _generate(with_checkpoint, prompt, cancel, on_text=lambda piece: cancel.set())
    assert result.cancelled
    assert not with_checkpoint._pipe.has_non_finished_requests()
    again = _generate(with_checkpoint, prompt + TEXT[14000])
    assert again.text.strip() and not again.cancelled


def test_settle_after_prompt_lookup_decode_steps_runs_on_the_real_pipeline(engines):
    # Without the checkpoint, whose block (the same tokens' KV computed in another chunk) may flip
    # a near tie further on: the settling request alone must leave the text as it was.
    _, engine = engines
    head = TEXT[16000:18000]
    first = _generate(engine, head)
    assert first.tokens > 1 and engine._unsettled  # decode steps checked candidates
    engine.settle()
    assert not engine._unsettled and not engine._pipe.has_non_finished_requests()
    again = _generate(engine, head)  # the same prompt: the prefix cache and the text are unharmed
    assert again.text == first.text


def _resident_bytes(path) -> int:
    """Resident bytes of this process's mappings of the file `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and not head[0].endswith(":"):
                inside = len(head) == 6 and head[5].strip() == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")
def test_settle_gives_back_the_weights_pages_an_answer_read_back():
    from aipc_lsp.models import gguf_ir

    # No prefix cache: every answer is computed the same way from the prompt, so the answer after
    # the pages went is comparable token for token with the one before.
    engine = OpenVINOEngine(gguf_ir.ir_for(fetch(SMOLLM2_135M)), "CPU", options=OpenVINOSettings(prefix_caching=False))
    engine.load()
    try:
        weights = engine._weights.resolve()
        prompt = TEXT[20000:22000]
        first = _generate(engine, prompt)
        # The prompt's embedding rows were read from the mapped file again.
        assert _resident_bytes(weights) > 0
        engine.settle()
        assert _resident_bytes(weights) == 0
        assert _generate(engine, prompt).text == first.text  # read back unchanged
    finally:
        engine.close()
