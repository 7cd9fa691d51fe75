"""The typing checkpoint on the real model and OpenVINO GenAI's paged pipeline: the extra
one-token request runs, a keystroke after it still gets the model's suggestion, and a cancel
in the step that adds it leaves the pipeline clean. (Its speed: `aipc-lsp bench`.)"""

from __future__ import annotations

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
