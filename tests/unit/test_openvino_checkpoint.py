"""The OpenVINO engine's typing checkpoint, on a scripted pipeline: which requests reach the
paged pipeline, with which tokens, and when; and requests fitted to the KV cache. (tests/e2e/test_typing_checkpoint_real_model.py runs it on
the real model; `aipc-lsp bench` measures what it saves.)"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from aipc_lsp.config import OpenVINOSettings
from aipc_lsp.engines.base import GenerationParams
from aipc_lsp.engines.openvino import CHECKPOINT_HELD_TOKENS, CHECKPOINT_MIN_TOKENS, OpenVINOEngine


class _Tokenizer:
    """One token per character."""

    def encode(self, text):
        return SimpleNamespace(input_ids=SimpleNamespace(data=np.array([[ord(c) for c in text]], dtype=np.int64)))

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class _Handle:
    def __init__(self, pipe, request):
        self.pipe, self.request = pipe, request

    def can_read(self):
        return bool(self.request["unread"])

    def read(self):
        ids, self.request["unread"] = self.request["unread"], []
        return {0: SimpleNamespace(generated_ids=ids)}

    def stop(self):
        self.request["done"] = True

    cancel = stop


class _Pipe:
    """Each step gives every running request one token ("x") until its max_new_tokens."""

    def __init__(self):
        self.requests: list[dict] = []
        self.steps = 0

    def get_config(self):
        return SimpleNamespace(stop_token_ids=set())

    def add_request(self, rid, ids, config):
        request = {"ids": np.asarray(ids.data)[0].tolist(), "max": config.max_new_tokens, "made": 0,
                   "unread": [], "done": False, "added_at_step": self.steps}
        self.requests.append(request)
        return _Handle(self, request)

    def has_non_finished_requests(self):
        return any(not r["done"] for r in self.requests)

    def step(self):
        self.steps += 1
        for r in self.requests:
            if not r["done"]:
                r["made"] += 1
                r["unread"].append(ord("x"))
                r["done"] = r["made"] >= r["max"]


def _engine(**kwargs) -> tuple[OpenVINOEngine, _Pipe]:
    engine = OpenVINOEngine("m", "CPU", options=OpenVINOSettings(prompt_lookup_tokens=3, **kwargs))
    pipe = _Pipe()
    engine._pipe, engine._tokenizer, engine._stepped = pipe, _Tokenizer(), True
    return engine, pipe


LONG = "def f(x):\n    return x\n" * 8  # 192 tokens here


def test_settling_after_an_answer_caches_the_prompt_less_its_last_token_then_takes_the_one_token_shape():
    engine, pipe = _engine()
    result = engine.generate(LONG, GenerationParams(max_new_tokens=6), threading.Event())
    assert result.text == "x" * 6
    assert len(pipe.requests) == 1  # nothing beside the answer: the checkpoint waits for the idle moment
    engine.settle()
    main, checkpoint, settling = pipe.requests
    assert main["ids"] == [ord(c) for c in LONG]
    assert checkpoint["ids"] == main["ids"][:-CHECKPOINT_HELD_TOKENS]
    assert checkpoint["max"] == 1 and checkpoint["done"] and checkpoint["added_at_step"] == 6  # after the answer
    assert len(settling["ids"]) == 1 and settling["max"] == 1 and settling["done"]
    engine.settle()
    assert len(pipe.requests) == 3  # once per answer


def test_a_fill_in_the_middle_prompt_is_checkpointed_up_to_the_cursor():
    """Prefix-suffix-middle: a keystroke changes the prompt where the suffix marker begins, so the
    checkpoint ends there (less a token), not before the final marker."""
    prefix, suffix, middle = "\x01", "\x02", "\x03"  # single tokens here, as a FIM template's markers are
    engine, pipe = _engine()
    prompt = f"{prefix}{LONG}{suffix}\n    return y\n{middle}"
    engine.generate(prompt, GenerationParams(max_new_tokens=6, stop=(prefix, suffix, middle)), threading.Event())
    engine.settle()
    checkpoint = pipe.requests[1]
    assert checkpoint["max"] == 1
    assert checkpoint["ids"] == [ord(c) for c in prefix + LONG][:-CHECKPOINT_HELD_TOKENS]


@pytest.mark.parametrize("order", ["spm", "psm-line"])
def test_a_fill_in_the_middle_prompt_that_ends_in_the_typed_text_is_checkpointed_to_its_end(order):
    """Suffix-prefix-middle, or the cursor line's start after the middle marker: a keystroke grows the
    prompt at its end, so the checkpoint is the prompt less its last token, the suffix in it."""
    prefix, suffix, middle = "\x01", "\x02", "\x03"
    engine, pipe = _engine()
    if order == "spm":
        prompt = f"{prefix}{suffix}\n    return y\n{middle}{LONG}"
    else:
        prompt = f"{prefix}{LONG}\n{suffix}\n    return y\n{middle}    y = x"
    engine.generate(prompt, GenerationParams(max_new_tokens=6, stop=(prefix, suffix, middle)), threading.Event())
    engine.settle()
    assert pipe.requests[1]["ids"] == [ord(c) for c in prompt][:-CHECKPOINT_HELD_TOKENS]


def test_a_warm_up_is_checkpointed_too_which_renews_its_blocks_in_the_prefix_cache():
    """A one-token request (a warm-up) left its prompt's blocks already; the checkpoint takes them
    again, so that they are the cache's most recently taken and not the first evicted."""
    engine, pipe = _engine()
    engine.generate(LONG, GenerationParams(max_new_tokens=1), threading.Event())
    engine.settle()
    warm_up, checkpoint = pipe.requests[:2]
    assert checkpoint["ids"] == warm_up["ids"][:-CHECKPOINT_HELD_TOKENS] and checkpoint["max"] == 1


@pytest.mark.parametrize("case", ["short prompt", "switched off", "cancelled"])
def test_no_checkpoint_when_it_cannot_help(case):
    engine, pipe = _engine(typing_checkpoint=case != "switched off")
    prompt = "x = 1\n" if case == "short prompt" else LONG
    cancel = threading.Event()
    if case == "cancelled":  # the user typed on: the next request is on its way, with its own prompt
        original = pipe.step
        pipe.step = lambda: (original(), cancel.set())
    engine.generate(prompt, GenerationParams(max_new_tokens=6), cancel)
    engine.settle()
    assert not any(r["ids"] == [ord(c) for c in prompt][:-CHECKPOINT_HELD_TOKENS] for r in pipe.requests)
    assert not pipe.has_non_finished_requests()


def test_a_newer_answer_replaces_the_checkpoint_an_older_one_left():
    engine, pipe = _engine()
    engine.generate(LONG, GenerationParams(max_new_tokens=6), threading.Event())
    newer = LONG + "y = 2\n"
    engine.generate(newer, GenerationParams(max_new_tokens=6), threading.Event())
    engine.settle()
    cached = [r["ids"] for r in pipe.requests if r["max"] == 1 and len(r["ids"]) >= CHECKPOINT_MIN_TOKENS]
    assert cached == [[ord(c) for c in newer][:-CHECKPOINT_HELD_TOKENS]]


def test_a_request_that_comes_while_settling_skips_what_is_left():
    engine, pipe = _engine()
    engine.generate(LONG, GenerationParams(max_new_tokens=6), threading.Event())
    before = len(pipe.requests)
    engine.settle(busy=lambda: pipe.steps > 6)  # a request came during the checkpoint's step
    assert len(pipe.requests) == before + 1 and not engine._checkpoint  # the checkpoint ran, no settling request
    engine.generate(LONG, GenerationParams(max_new_tokens=6), threading.Event())
    before = len(pipe.requests)
    engine.settle(busy=lambda: True)  # one came before settling began: nothing runs
    assert len(pipe.requests) == before


def test_no_checkpoint_without_prefix_caching():
    assert not OpenVINOEngine("m", "CPU", options=OpenVINOSettings(prefix_caching=False)).typing_checkpoint


def test_a_request_is_fitted_to_the_kv_cache_or_refused_with_what_to_change():
    from aipc_lsp.engines.base import RequestError

    engine, _ = _engine(kv_cache_tokens=512)
    held = 3 + 1  # the prompt-lookup candidates a step writes past the answer's end
    asked = GenerationParams(max_new_tokens=64)
    assert engine._fit(512 - held - 64, asked) is asked  # fits as asked
    assert engine._fit(512 - held - 10, asked).max_new_tokens == 10  # cut where the cache ends
    with pytest.raises(RequestError, match=r"the prompt is 508 tokens.*kv_cache_tokens = 512"):
        engine._fit(512 - held, asked)
    assert OpenVINOEngine("m", "CPU", options=OpenVINOSettings(prefix_caching=False))._fit(10**6, asked) is asked  # no paged cache


def test_a_prompt_past_the_kv_cache_fails_before_the_pipeline_sees_it():
    from aipc_lsp.engines.base import RequestError

    engine, pipe = _engine(kv_cache_tokens=512)
    with pytest.raises(RequestError):
        engine.generate("x" * 600, GenerationParams(max_new_tokens=8), threading.Event())
    assert pipe.requests == []
    result = engine.generate("x" * 450, GenerationParams(max_new_tokens=64), threading.Event())
    assert pipe.requests[0]["max"] == 512 - 450 - 4 and result.text == "x" * 58  # cut to the room


def test_an_empty_prompt_is_answered_empty_without_the_pipeline():
    engine, pipe = _engine()
    result = engine.generate("", GenerationParams(max_new_tokens=8), threading.Event())
    assert result.text == "" and result.tokens == 0 and pipe.requests == []


def test_settle_runs_one_tiny_request_after_prompt_lookup_decode_steps_once():
    engine, pipe = _engine()
    engine.settle()
    assert pipe.requests == []  # nothing ran yet: nothing to settle
    engine.typing_checkpoint = False  # settling alone
    engine.generate(LONG, GenerationParams(max_new_tokens=6), threading.Event())
    before = len(pipe.requests)
    engine.settle()
    settled = pipe.requests[before:]
    assert [(len(r["ids"]), r["max"], r["done"]) for r in settled] == [(1, 1, True)]
    engine.settle()
    assert len(pipe.requests) == before + 1  # once: its own one-token step is what the next request needs


@pytest.mark.parametrize("case", ["answered by the first piece", "a warm-up", "cancelled at once"])
def test_settle_runs_the_one_token_request_after_a_prefill_that_no_decode_step_followed(case):
    # The last pass was the prompt's (a chunk of it, or a keystroke's few tokens): not one token wide.
    engine, pipe = _engine(typing_checkpoint=False)
    cancel = threading.Event()
    if case == "cancelled at once":  # (the worker does not settle then: the next request is coming)
        original = pipe.step
        pipe.step = lambda: (original(), cancel.set())
    on_text = (lambda piece: False) if case == "answered by the first piece" else None
    engine.generate(LONG, GenerationParams(max_new_tokens=1 if case == "a warm-up" else 6), cancel, on_text)
    before = len(pipe.requests)
    engine.settle()
    assert [len(r["ids"]) for r in pipe.requests[before:]] == [1]


def test_settle_does_nothing_after_one_token_decode_steps():
    engine, pipe = _engine(typing_checkpoint=False)
    engine.prompt_lookup_tokens = 0
    engine.generate(LONG, GenerationParams(max_new_tokens=6), threading.Event())
    before = len(pipe.requests)
    engine.settle()
    assert len(pipe.requests) == before


def test_settle_gives_back_the_weights_pages_after_every_answer(monkeypatch, tmp_path):
    from aipc_lsp.engines import openvino

    released = []
    monkeypatch.setattr(openvino, "release", lambda path: released.append(path) or 0)
    engine, pipe = _engine()
    engine.settle()
    assert released == []  # no IR weights file (a GGUF, or release_weight_pages off): nothing to give back
    engine._weights = tmp_path / "openvino_model.bin"
    engine.typing_checkpoint = False
    engine.prompt_lookup_tokens = 0  # an answer without prompt-lookup steps: no tiny request, pages still
    engine.generate(LONG, GenerationParams(max_new_tokens=6), threading.Event())
    before = len(pipe.requests)
    engine.settle()
    assert released == [engine._weights] and len(pipe.requests) == before


def test_each_settling_prompt_is_another_token():
    """The same one-token prompt again would put an old KV block back in the pool of never-used
    blocks (SETTLE_FIRST_TOKEN's comment), and the next new prompt's first block would be evicted first."""
    engine, pipe = _engine(typing_checkpoint=False)
    engine._byte_table = [b"t"] * 3000  # a vocabulary of 3000 tokens
    settled = []
    for _ in range(3):
        engine.generate(LONG, GenerationParams(max_new_tokens=1), threading.Event())
        engine.settle()
        settled.append(pipe.requests[-1]["ids"])
    assert len({tuple(ids) for ids in settled}) == 3 and all(len(ids) == 1 for ids in settled)
    engine._settlings = iter([10**6])  # any count stays inside the vocabulary
    assert 0 <= int(engine._settling_ids()[0, 0]) < 3000
