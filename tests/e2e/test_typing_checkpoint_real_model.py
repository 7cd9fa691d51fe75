"""The typing checkpoint on the real model and OpenVINO GenAI's paged pipeline: the extra
one-token request runs, a keystroke after it still gets the model's suggestion, and a cancel
in the step that adds it leaves the pipeline clean. (Its speed: `aipc-lsp bench`.)"""

from __future__ import annotations

import sys
import threading

import pytest

from aipc_lsp.bench.corpus import corpus_text
from aipc_lsp.engines.base import GenerationParams
from aipc_lsp.engines.openvino import OpenVINOEngine
from aipc_lsp.models.fetch import fetch

pytestmark = pytest.mark.model

TEXT = corpus_text()


def _engine(**kwargs) -> OpenVINOEngine:
    engine = OpenVINOEngine(fetch(), "CPU", prompt_lookup_tokens=3, **kwargs)
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
    import openvino_genai as og

    with_checkpoint, without = engines
    agreed = 0
    for start in (0, 4000, 8000):
        head, typed = TEXT[start:start + 2000], TEXT[start + 2000:start + 2002]
        first = _generate(with_checkpoint, head)
        assert first.text and first.first_token_s is not None
        assert with_checkpoint._checkpoint_handle.get_status() == og.GenerationStatus.FINISHED
        ours, reference = _generate(with_checkpoint, head + typed), _generate(without, head + typed)
        assert ours.text.strip(), ours
        # The restored block holds the same tokens' KV, computed in other chunks: bf16 rounding
        # may flip a near tie further on, but the suggestion starts as the model's own.
        agreed += ours.text[:3] == reference.text[:3]
    assert agreed >= 2


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
    with_checkpoint, _ = engines
    head = TEXT[16000:18000]
    first = _generate(with_checkpoint, head)
    assert first.tokens > 1 and with_checkpoint._unsettled  # decode steps checked candidates
    with_checkpoint.settle()
    assert not with_checkpoint._unsettled and not with_checkpoint._pipe.has_non_finished_requests()
    again = _generate(with_checkpoint, head)  # the same prompt: the prefix cache and the text are unharmed
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
    engine = OpenVINOEngine(gguf_ir.ir_for(fetch()), "CPU", prefix_caching=False)
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
