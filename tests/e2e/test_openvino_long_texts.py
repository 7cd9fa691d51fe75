"""Texts longer than OpenVINO's tokenizer takes: it keeps only the last `max_length` tokens
(8192 for SmolLM2's, made from its GGUF) without a word. Counts must be the whole
text's, and a prompt cut that way must be refused, not answered from its tail."""

from __future__ import annotations

import threading

import pytest

from aipc_lsp.bench.corpus import corpus_text
from aipc_lsp.config import OpenVINOSettings
from aipc_lsp.engines.base import GenerationParams, RequestError
from aipc_lsp.engines.openvino import OpenVINOEngine
from aipc_lsp.models.catalogue import SMOLLM2_135M
from aipc_lsp.models.fetch import fetch

pytestmark = pytest.mark.model

TEXT = corpus_text()


@pytest.fixture(scope="module")
def engine():
    # A KV cache large enough for any of these prompts: what refuses one is the tokenizer's cut.
    engine = OpenVINOEngine(fetch(SMOLLM2_135M), "CPU", options=OpenVINOSettings(kv_cache_tokens=32768))
    engine.load()
    yield engine
    engine.close()


def test_counts_go_past_the_tokenizers_cap(engine):
    tokenizer = engine._tokenizer
    long = TEXT[:60000]
    assert tokenizer.encode(long).input_ids.shape[1] == 8192  # the cap this test is about
    # Counted in pieces: the tokens of the text's two halves, give or take a few at the edges.
    halves = sum(engine.count_tokens(part) for part in (long[:30000], long[30000:]))
    assert engine.count_tokens(long) > 8192
    assert abs(engine.count_tokens(long) - halves) <= 40
    # Under the cap the count is the tokenizer's own, exactly.
    medium = TEXT[:20000]
    assert 4096 <= tokenizer.encode(medium).input_ids.shape[1] < 8192
    assert engine.count_tokens(medium) == tokenizer.encode(medium).input_ids.shape[1]


def test_a_prompt_cut_by_the_tokenizer_is_refused_and_one_under_it_is_answered(engine):
    with pytest.raises(RequestError, match=r"tokenizer takes \(8192\)"):
        engine.generate(TEXT[:60000], GenerationParams(max_new_tokens=4), threading.Event())
    # 4096+ tokens but not cut: answered.
    result = engine.generate(TEXT[:20000], GenerationParams(max_new_tokens=4), threading.Event())
    assert result.tokens > 0 and result.text
