"""OpenVINO GenAI engine: a GGUF file or an OpenVINO IR folder on CPU, GPU, NPU or AUTO."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aipc_lsp.config import OpenVINOSettings
from aipc_lsp.engines.base import (Engine, EngineError, EngineInfo, GenerationParams, GenerationResult, OnText,
                                   RequestError, prompt_limit_of)
from aipc_lsp.engines.detokenize import ByteDetokenizer, WindowDetokenizer, byte_table
from aipc_lsp.engines.pages import Releasing, release
from aipc_lsp.engines.textstream import TextStream

log = logging.getLogger(__name__)

# Longest run of the last generated tokens searched for in the prompt by prompt lookup.
PROMPT_LOOKUP_NGRAM = 3
# The typing checkpoint leaves out the prompt's last token: the one the next keystroke is likely
# to change (BPE merges the typed character into the word before it). The pipeline restores the
# shortest cached partial block that prefixes a prompt, so one checkpoint length serves.
CHECKPOINT_HELD_TOKENS = 1
# Shorter prompts are cheap to prefill anyway.
CHECKPOINT_MIN_TOKENS = 64
# What `settle` runs: one token of prefill and one generated, the shape of a keystroke's first step;
# a different token each time, SETTLE_TOKENS of them from the id SETTLE_FIRST_TOKEN on. Why not the
# same one: the paged pipeline files a freed KV block under its content's hash, and a block whose
# hash is filed already sends the filed one back to the pool of never-used blocks, with its old
# timestamp; a block taken from that pool keeps it. The same settling prompt after every answer
# thus put an old block in that pool, the next new prompt (a warm-up's) took it for its first
# block, and once that prompt was done its first block was the cache's least recently used: the
# first evicted, when the cache was full, which lost the whole prompt (a prompt's blocks are found
# from its first on). Measured: a warm-up's prompt asked again after it missed its cache 1 time
# in 8 with the cache full (3 in 8 once a cache 2.7x larger had filled), with a different token each time 0 in 21.
SETTLE_FIRST_TOKEN, SETTLE_TOKENS = 1000, 4096
# Tokens per KV-cache block of the paged-attention pipeline: 32 on the CPU plugin, 16 on the GPU.
CPU_BLOCK_TOKENS, OTHER_BLOCK_TOKENS = 32, 16
# OpenVINO's tokenizer keeps only the last `max_length` tokens of a longer text, without a word
# (8192 for the default model's, made from its GGUF). A text that encodes to this many tokens or
# more is checked for that cut (its first tokens against those of its first characters alone); a
# cut one is counted in pieces too short to reach the cap (a character is 4 tokens at most).
LONG_TEXT_TOKENS = 4096
PIECE_CHARS = 1024
HEAD_CHECK_TOKENS, HEAD_CHECK_CHARS = 16, 256


class OpenVINOEngine(Engine):
    """`options`: the `openvino` settings section (OpenVINOSettings; its defaults when None)."""

    name = "openvino"

    def __init__(self, model_path: str | Path, device: str = "CPU", *, threads: int = 0, precision: str = "",
                 options: OpenVINOSettings | None = None):
        options = options or OpenVINOSettings()
        super().__init__(model_path, device, threads=threads, precision=precision, options=options)
        self.kv_cache_tokens = options.kv_cache_tokens
        # The NPU runs the statically shaped LLMPipeline: no paged attention, so no prefix caching.
        self.prefix_caching = options.prefix_caching and not device.upper().startswith("NPU")
        self.ov_config = dict(options.config)
        self.npu_max_prompt_len = options.npu_max_prompt_len
        self.npu_min_response_len = options.npu_min_response_len
        # Prompt lookup rides on the paged pipeline (prefix caching); the NPU path has neither.
        self.prompt_lookup_tokens = options.prompt_lookup_tokens if self.prefix_caching else 0
        self.typing_checkpoint = options.typing_checkpoint and self.prefix_caching
        # The last answer's prompt less its last token, cached when the engine settles (see settle()).
        self._checkpoint = None
        # The last pass was wider than one token (settle()).
        self._unsettled = False
        self.release_weight_pages = options.release_weight_pages
        self._weights: Path | None = None  # the IR's weights file whose pages are given back
        self._pipe = None
        self._tokenizer = None
        # Token bytes for decoding without the detokenizer model (detokenize.py), when they agree.
        self._byte_table: list[bytes] | None = None
        self._special_ids: dict[str, int | None] = {}  # stop marker -> its special token's id
        self._stepped = False
        self._request_ids = itertools.count()
        self._settlings = itertools.count()

    @property
    def block_tokens(self) -> int:
        return CPU_BLOCK_TOKENS if self.device.upper().startswith("CPU") else OTHER_BLOCK_TOKENS

    @property
    def kv_capacity(self) -> int | None:
        """Tokens the paged KV cache holds (its whole blocks), or None without one."""
        if not self.prefix_caching:
            return None
        return -(-self.kv_cache_tokens // self.block_tokens) * self.block_tokens

    @property
    def max_prompt_tokens(self) -> int | None:
        """The NPU is compiled for a fixed longest prompt; a paged KV cache holds so many tokens,
        of which prompts get all but the answer's room."""
        if self.device.upper().startswith("NPU"):
            return self.npu_max_prompt_len
        capacity = self.kv_capacity
        return None if capacity is None else prompt_limit_of(capacity)

    def _room(self, prompt_tokens: int) -> int | None:
        """Tokens the KV cache leaves for the answer to a prompt this long, or None without a
        cap. Held back: the prompt-lookup candidates a step writes beyond the answer's end."""
        capacity = self.kv_capacity
        if capacity is None:
            return None
        return capacity - prompt_tokens - self.prompt_lookup_tokens - 1

    def _compile_properties(self) -> dict:
        props: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if self.device.upper().startswith("CPU"):
            # Measured here: pinning and an explicit thread count cut per-token latency ~25%.
            props["ENABLE_CPU_PINNING"] = True
            if self.threads > 0:
                props["INFERENCE_NUM_THREADS"] = self.threads
        if self.device.upper().startswith("NPU"):
            # The NPU compiles static shapes: the longest prompt and the answer's room are fixed here.
            props["MAX_PROMPT_LEN"] = self.npu_max_prompt_len
            props["MIN_RESPONSE_LEN"] = self.npu_min_response_len
        props.update(self.ov_config)
        return props

    def load_model(self) -> EngineInfo:
        try:
            import openvino_genai as og
        except ImportError as exc:  # pragma: no cover - the package is a hard dependency
            raise EngineError(f"openvino-genai is not installed: {exc}") from exc
        path = Path(self.model_path)
        if not path.exists():
            raise EngineError(f"model not found: {path}")
        started = time.perf_counter()
        kwargs = self._compile_properties()
        if self.prefix_caching:
            # The paged-attention pipeline keeps KV blocks of earlier prompts, so a prompt
            # that shares its beginning with the previous one (the user typing) skips that prefill.
            scheduler = og.SchedulerConfig()
            scheduler.enable_prefix_caching = True
            # In blocks, not bytes: how many tokens a request may use must not depend on the model.
            scheduler.cache_size = 0
            scheduler.num_kv_blocks = self.kv_capacity // self.block_tokens
        try:
            if self.prefix_caching:
                # The same paged-attention pipeline LLMPipeline builds for a scheduler_config,
                # driven step by step (see _generate_stepped).
                if self.prompt_lookup_tokens:
                    # Candidate tokens copied from the prompt are verified in the same forward pass
                    # as the next token: on a 2-core CPU a step costs about the same for 1 or 4 tokens.
                    kwargs["prompt_lookup"] = True
                self._pipe = og.ContinuousBatchingPipeline(str(path), scheduler, self.device, kwargs)
                self._stepped = True
            else:
                self._pipe = og.LLMPipeline(str(path), self.device, **kwargs)
                self._stepped = False
        except Exception as exc:
            raise EngineError(f"OpenVINO could not load {path} on {self.device}: {exc}") from exc
        self._tokenizer = self._pipe.get_tokenizer()
        self._byte_table = byte_table(self._tokenizer)
        # The first generate compiles kernels for the shapes it meets; pay that now, not on
        # the user's first keystroke. It is also when the CPU plugin repacks the weights into memory
        # of its own: the IR's mapped weights file is read once, and its pages are given back
        # while and after that happens (see pages.py; -70 MB of peak RSS for SmolLM2-135M int4).
        weights = path / "openvino_model.bin" if path.is_dir() and self.release_weight_pages else None
        self._weights = weights if weights is not None and weights.is_file() else None
        with Releasing(self._weights):
            self._warm_up()
        # Then once through our own loop (step(), the detokenizer), as the first request will go.
        self.generate("\n", GenerationParams(max_new_tokens=2), threading.Event())
        log.info("openvino: loaded %s on %s in %.2fs", path.name, self.device, time.perf_counter() - started)
        # A prompt's KV cache outlives its request with prefix caching (warming a document pays off).
        return EngineInfo(max_prompt_tokens=self.max_prompt_tokens, keeps_prompt_cache=self.prefix_caching,
                          constrains_start=self._stepped,  # (structured output: the paged pipeline's sampler)
                          chat_template=self._tokenizer.chat_template, eos_token=self._tokenizer.get_eos_token())

    def _warm_up(self) -> None:
        # The library's own generate: it releases the GIL (step() does not), so the page releasing
        # thread runs during it.
        config = self._generation_config(GenerationParams(max_new_tokens=2))
        if self._stepped:
            self._pipe.generate(["\n"], [config])
        else:
            self._pipe.generate("\n", config)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            raise EngineError("model not loaded")
        input_ids = self._tokenizer.encode(text).input_ids
        return self._count_in_pieces(text) if self._cut(text, input_ids) else int(input_ids.shape[1])

    def last_token(self, text: str) -> str:
        if self._tokenizer is None or self._byte_table is None or not text:
            return ""
        ids = self._tokenizer.encode(text).input_ids.data[0]
        if len(ids) == 0:
            return ""
        try:
            return self._byte_table[int(ids[-1])].decode("utf-8")
        except (UnicodeDecodeError, IndexError):
            return ""  # a byte piece of a character

    def _count_in_pieces(self, text: str) -> int:
        # High by a token now and then where BPE would have merged across a piece's edge.
        return sum(int(self._tokenizer.encode(piece).input_ids.shape[1]) for piece in _pieces(text))

    def _cut(self, text: str, input_ids) -> bool:
        """Whether the tokenizer kept only the end of `text` (LONG_TEXT_TOKENS): then its tokens
        do not begin as the text's beginning alone encodes (bar the last few, which may merge
        with what follows)."""
        import numpy as np

        ids = np.asarray(input_ids.data)[0]
        if len(ids) < LONG_TEXT_TOKENS:
            return False
        first = ids[:HEAD_CHECK_TOKENS]
        head = np.asarray(self._tokenizer.encode(text[:HEAD_CHECK_CHARS]).input_ids.data)[0]
        n = min(len(head) - 2, HEAD_CHECK_TOKENS)
        return n > 0 and not np.array_equal(first[:n], head[:n])

    def apply_chat_template(self, messages: list[dict]) -> str:
        """The tokenizer's own renderer: the fallback for templates jinja2 cannot render."""
        if self._tokenizer is None:
            raise EngineError("model not loaded")
        return self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def _generation_config(self, params: GenerationParams):
        config = self._pipe.get_config() if self._stepped else self._pipe.get_generation_config()
        config.apply_chat_template = False
        config.max_new_tokens = params.max_new_tokens
        # Plain sampling at the asked temperature, whatever the model's generation_config.json says.
        config.do_sample = params.temperature > 0
        if config.do_sample:
            config.temperature = params.temperature
            config.top_p = 1.0
        config.repetition_penalty = 1.0
        stop_ids = self._stop_token_ids(params.stop)
        if stop_ids:
            # Special tokens never reach the text (the detokenizer skips them): stop on their ids.
            config.stop_token_ids = set(config.stop_token_ids) | stop_ids
        if params.start:
            # Only tokens that agree with `start` until it is written (xgrammar's token mask):
            # "os.path" + ".jo..." instead of a prompt ending in ".jo", which the model rarely saw.
            import openvino_genai as og

            structured = og.StructuredOutputConfig
            config.structured_output_config = structured(
                compound_grammar=structured.Concat(structured.ConstString(params.start), structured.AnyText()))
        if self.prompt_lookup_tokens:
            # A prompt-lookup pipeline takes only prompt-lookup requests.
            config.num_assistant_tokens = self.prompt_lookup_tokens
            config.max_ngram_size = PROMPT_LOOKUP_NGRAM
        return config

    def _stop_token_ids(self, stop: tuple[str, ...]) -> set[int]:
        """The ids of the stop strings that are single special tokens (a FIM template's end markers)."""
        ids = set()
        for marker in stop:
            if marker not in self._special_ids:
                encoded = [int(t) for t in self._tokenizer.encode(marker).input_ids.data[0]]
                special = len(encoded) == 1 and (self._byte_table is None or self._byte_table[encoded[0]] == b"")
                self._special_ids[marker] = encoded[0] if special else None
            if self._special_ids[marker] is not None:
                ids.add(self._special_ids[marker])
        return ids

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        cancel: threading.Event,
        on_text: OnText | None = None,
    ) -> GenerationResult:
        if self._pipe is None:
            raise EngineError("model not loaded")
        if cancel.is_set():
            return GenerationResult(cancelled=True)
        if not prompt:
            return GenerationResult()  # the pipeline refuses an empty prompt ("prompt_len > 0")
        try:
            if self._stepped:
                return self._generate_stepped(prompt, params, cancel, on_text)
            return self._generate_streamed(prompt, params, cancel, on_text)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"OpenVINO generation failed: {exc}") from exc

    def _text_stream(self, params: GenerationParams, result: GenerationResult, on_text: OnText | None) -> TextStream:
        """Stop tokens are the pipeline's (`stop_token_ids`); the stream applies the other stop rules."""
        detok = (ByteDetokenizer(self._byte_table) if self._byte_table is not None
                 else WindowDetokenizer(self._tokenizer.decode))
        return TextStream(detok, params, result, on_text)

    def _generate_stepped(self, prompt, params, cancel, on_text) -> GenerationResult:
        """Our own decode loop over the pipeline's step(): no streamer thread, and the cancel
        flag is checked between steps, so a cancelled generation costs at most the step in
        flight (the library's streamer runs a step ahead of its callback)."""
        result = GenerationResult()
        started = time.perf_counter()
        # An older prompt's checkpoint cached after this answer would shadow this one's (settle()).
        self._checkpoint = None
        input_ids = self._tokenizer.encode(prompt).input_ids
        if self._cut(prompt, input_ids):
            # Its beginning (a chat's system prompt and question) would be lost without a word.
            raise RequestError(
                f"the prompt is about {self._count_in_pieces(prompt)} tokens, more than this model's tokenizer "
                f"takes ({int(input_ids.shape[1])}): lower the prompt budget (completion.context_tokens / "
                f"chat.context_tokens)")
        params = self._fit(int(input_ids.data.shape[-1]), params)
        stream = self._text_stream(params, result, on_text)
        handle = self._pipe.add_request(next(self._request_ids), input_ids, self._generation_config(params))
        ended = False
        decode_steps = 0
        while self._pipe.has_non_finished_requests():
            if cancel.is_set() and not ended:
                handle.cancel()
                result.cancelled = ended = True
            self._pipe.step()  # after cancel/stop this only releases the request's blocks
            decode_steps += result.first_token_s is not None and not ended  # not the step that frees
            if ended or not handle.can_read():
                continue
            for output in handle.read().values():
                if result.first_token_s is None and output.generated_ids:
                    result.first_token_s = time.perf_counter() - started
                if not stream.push(output.generated_ids):
                    handle.stop()  # keeps the KV blocks for the prefix cache
                    ended = True
                    break
        result.text = stream.text
        result.tokens = stream.count
        result.total_s = time.perf_counter() - started
        # Wider than one token: prompt-lookup decode steps (4), or a prompt's prefill with no decode
        # step after it (a warm-up, an answer of one piece).
        self._unsettled = bool(self.prompt_lookup_tokens) if decode_steps else True
        # A cancelled answer's next request is on its way. After a warm-up (one token) the checkpoint
        # also renews the prompt's blocks in the prefix cache: the pipeline evicts the least recently
        # taken block first, and a block taken from its pool of never-used ones keeps an old time
        # (SETTLE_FIRST_TOKEN's comment), so a warm-up's first block could be the next one evicted,
        # and its whole prompt lost, before the request it was computed for (the bench's cursor
        # warm-up: a prompt computed 1.1 s ahead, then asked as cold).
        if self.typing_checkpoint and not result.cancelled:
            self._checkpoint = self._checkpoint_ids(input_ids, self._stop_token_ids(params.stop))
        return result

    def settle(self, busy: Callable[[], bool] = lambda: False) -> None:
        """Idle time, nothing queued (the worker calls it after an answer), while the user reads
        the suggestion. `busy` says a request has come meanwhile: what is left is skipped.
        - **The typing checkpoint**: the last answer's prompt less its last token, cached by a
          one-token request: the next keystroke restores that partly filled KV block and prefills
          only the tokens it changed (1 for most keystrokes), not the block's tail (up to 31).
          Why after the answer and not beside it: a request that restores a partial block and
          fills it in one step leaves it filed under the length it restored, and the pipeline
          restores the shortest match. Beside the answer, the checkpoint shared the block the
          answer had restored, so the block stayed filed under the first checkpoint's length and
          each keystroke in it prefilled more (2-3 tokens after 16 keystrokes, a block's tail
          later). Once the answer is done nothing else holds that block: the checkpoint computes
          the tail afresh (one ~16-token pass, in idle time), filed under its own length. A
          keystroke that cancels a running answer finds no checkpoint of that answer's prompt.
        - **One-token shape**: after a pass of several tokens (a checkpoint's, a warm-up's
          prefill, or a prompt-lookup decode step's 4) the next request's first pass (1-2
          tokens) paid 10-18 ms more at 1.5k tokens of context than after one-token passes; one
          tiny request takes that cost off the next keystroke. Why: the CPU plugin re-prepares
          the whole graph for a pass whose token count differs from the pass before (10-14 ms).
        - **Memory**: the weights file's pages the generation read back (the embedding rows of its
          tokens) are given back again, as after loading (pages.py): they would otherwise pile up
          across answers into the peak RSS (the server bench's peak 399 -> 389 MB; ~1-2 ms). The
          file's address ranges are looked up again each time rather than kept: advising a range
          that no longer maps the file could drop another mapping's data."""
        if self._pipe is not None and self._stepped:
            checkpoint, self._checkpoint = self._checkpoint, None
            if checkpoint is not None and not busy():
                self._compute(checkpoint)
                self._unsettled = True  # its pass was the block's tail wide
            if self._unsettled and not busy():
                self._compute(self._settling_ids())
                self._unsettled = False  # its one token was the pass
        if self._weights is not None:
            release(self._weights)

    def _fit(self, prompt_tokens: int, params: GenerationParams) -> GenerationParams:
        """The request as the KV cache can hold it. Past its end the pipeline answers nothing, or
        stops mid-answer, without a word: a prompt that leaves no room is an error that says what
        to change, and an answer is cut to the room there is."""
        room = self._room(prompt_tokens)
        if room is None or params.max_new_tokens <= room:
            return params
        if room < 1:
            raise RequestError(
                f"the prompt is {prompt_tokens} tokens, more than the KV cache leaves room for "
                f"(openvino.kv_cache_tokens = {self.kv_cache_tokens}): lower the prompt budget "
                f"(completion.context_tokens / chat.context_tokens) or raise openvino.kv_cache_tokens")
        log.info("openvino: answer cut to %d tokens (asked %d): the KV cache holds %d tokens",
                 room, params.max_new_tokens, self.kv_capacity)
        return dataclasses.replace(params, max_new_tokens=room)

    @staticmethod
    def _checkpoint_ids(input_ids, markers: set[int] = frozenset()):
        """The prompt less its last tokens, or None for a short prompt. The checkpoint ends where the
        next keystroke changes the prompt, the cursor. A fill-in-the-middle prompt (`markers`: its
        template's marker ids) that ends in a marker has the cursor before its last marker but the
        final one (the suffix's, in prefix-suffix-middle order): it is cut there, since what comes
        after is prefilled anew anyway. One that ends in text (the code before the cursor, or the
        cursor line's start, after the middle marker: SPM, psm-line) has it at its end.

        Why: prefix caching restores whole KV blocks (32 tokens on the CPU), and the block
        holding the prompt's end is filled with generated tokens by the time the user types
        the next character, so every keystroke re-prefilled up to a block (16 tokens on
        average; at 1.5k tokens of context the first token took twice a decode step). The
        library also restores a partly filled block whose content is exactly a prefix of the
        new prompt: a second, one-token request for this prompt leaves such a block behind,
        and the next keystroke prefills only the tokens after it."""
        import numpy as np

        ids = np.asarray(input_ids.data)
        end = ids.shape[1]
        if markers and int(ids[0, -1]) in markers:
            found = np.flatnonzero(np.isin(ids[0, :-1], list(markers)))
            end = int(found[-1]) if len(found) else end
        cut = end - CHECKPOINT_HELD_TOKENS
        if cut < CHECKPOINT_MIN_TOKENS:
            return None
        return np.ascontiguousarray(ids[:, :cut])

    def _settling_ids(self):
        """One token, another than the last settlings' (SETTLE_TOKENS)."""
        import numpy as np

        vocabulary = len(self._byte_table) if self._byte_table is not None else SETTLE_FIRST_TOKEN + SETTLE_TOKENS
        first = min(SETTLE_FIRST_TOKEN, vocabulary // 2)
        token = first + next(self._settlings) % max(1, min(SETTLE_TOKENS, vocabulary - first))
        return np.array([[token]], dtype=np.int64)

    def _compute(self, ids) -> None:
        """The KV cache of the prompt `ids` (and its one generated token), in the prefix cache after."""
        import openvino as ov

        config = self._generation_config(GenerationParams(max_new_tokens=1))
        handle = self._pipe.add_request(next(self._request_ids), ov.Tensor(ids), config)
        while self._pipe.has_non_finished_requests():
            self._pipe.step()
        del handle  # held until it ran: a dropped handle drops its request

    def _generate_streamed(self, prompt, params, cancel, on_text) -> GenerationResult:
        """LLMPipeline with a token-level streamer (devices without paged attention, e.g. NPU)."""
        import openvino_genai as og

        result = GenerationResult()
        started = time.perf_counter()
        stream = self._text_stream(params, result, on_text)

        class _Streamer(og.StreamerBase):
            # Token-level: the library's text streamer holds tokens back until whole words
            # are printable, which delays the first piece.
            def write(self, token) -> og.StreamingStatus:
                if cancel.is_set():
                    result.cancelled = True
                    return og.StreamingStatus.CANCEL
                if result.first_token_s is None:
                    result.first_token_s = time.perf_counter() - started
                if not stream.push(token if isinstance(token, list) else [token]):
                    return og.StreamingStatus.STOP
                return og.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        self._pipe.generate(prompt, self._generation_config(params), _Streamer())
        result.text = stream.text
        result.tokens = stream.count
        result.total_s = time.perf_counter() - started
        return result

    def close(self) -> None:
        self._pipe = None
        self._tokenizer = None
        self._byte_table = None


def _pieces(text: str, size: int = PIECE_CHARS):
    """`text` in consecutive pieces of at most `size` characters, cut after a newline where one
    is near the end (BPE seldom merges across a line break)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            newline = text.rfind("\n", start + size // 2, end)
            end = newline + 1 if newline >= 0 else end
        yield text[start:end]
        start = end
