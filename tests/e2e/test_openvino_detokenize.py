"""Decoding generated tokens without the detokenizer model (engines/detokenize.py) on a real
model's tokenizer (SmolLM2's): the same text and the same pieces as OpenVINO GenAI's detokenizer."""

from __future__ import annotations

import random

import pytest

from aipc_lsp.bench.corpus import corpus_text
from aipc_lsp.engines.detokenize import ByteDetokenizer, WindowDetokenizer, byte_table
from aipc_lsp.models.catalogue import SMOLLM2_135M
from aipc_lsp.models.fetch import fetch

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tokenizer():
    import openvino_genai as og

    from aipc_lsp.models.gguf_ir import ir_for

    return og.Tokenizer(str(ir_for(fetch(SMOLLM2_135M))))


def test_byte_table_decodes_as_the_detokenizer_does(tokenizer):
    table = byte_table(tokenizer)
    assert table is not None, "SmolLM2's vocabulary is byte-level BPE"
    text = corpus_text()[:12000] + "\n# Grüße, 你好, 😀 €5\n" * 30
    ids = [int(i) for i in tokenizer.encode(text).input_ids.data[0]]
    ids[100:100] = [tokenizer.get_eos_token_id(), 1]  # special tokens: skipped in text
    stray = [token for token, piece in enumerate(table) if piece in (b"\xe2", b"\x82")]
    ids[200:200] = stray + ids[:3] + stray[::-1]  # bytes no character can be made of: dropped
    rng = random.Random(7)
    ours, theirs = ByteDetokenizer(table), WindowDetokenizer(tokenizer.decode)
    at = 0
    while at < len(ids):
        step = ids[at:at + rng.randint(1, 4)]  # prompt lookup yields 1-4 tokens a step
        at += len(step)
        assert ours.push(step) == theirs.push(step)
    assert ours.text == theirs.text
    assert "你好" in ours.text and "😀" in ours.text
    assert ours.count == theirs.count == len(ids)


def test_a_character_split_across_tokens_waits_for_its_last_byte(tokenizer):
    table = byte_table(tokenizer)
    ids = [int(i) for i in tokenizer.encode("x = '😀'").input_ids.data[0]]
    parts = [i for i in ids if not table[i].decode("utf-8", "ignore")]  # pieces of the emoji
    assert parts, "the emoji is split across byte tokens"
    detok = ByteDetokenizer(table)
    shown = [detok.push([i]) for i in ids]
    assert "\ufffd" not in "".join(shown) and "".join(shown) == "x = '😀'"
    assert detok.text == tokenizer.decode(ids)
