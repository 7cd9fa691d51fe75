"""ONNX Runtime GenAI engine: a folder made by its model builder (genai_config.json) on the
CPU, CUDA or DirectML execution provider.

DirectML comes from the `onnxruntime-genai-directml` wheel (Windows), CUDA from
`onnxruntime-genai-cuda`; the plain `onnxruntime-genai` wheel has the CPU provider only.
The generator is kept between requests: a new prompt that shares its beginning with the
previous sequence rewinds to that point and appends only the new tokens, so the KV cache
of the shared prefix is reused (the user typing on costs milliseconds, not a re-prefill).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from aipc_lsp.config import OnnxRuntimeSettings
from aipc_lsp.engines.base import (Engine, EngineError, EngineInfo, GenerationParams, GenerationResult, OnText,
                                   RequestError, prompt_limit_of)
from aipc_lsp.engines.templates import chat_template_from_folder
from aipc_lsp.engines.detokenize import WindowDetokenizer
from aipc_lsp.engines.textstream import TextStream, common_prefix, special_stop_ids

log = logging.getLogger(__name__)

# Prompt tokens appended per call: a cancel waits for at most one chunk's prefill.
PREFILL_CHUNK = 256
# Device setting -> execution provider name in genai_config.json.
PROVIDERS = {"CPU": "cpu", "CUDA": "cuda", "DML": "dml"}


def provider_for(device: str) -> str:
    """Map the device setting to an execution provider; GPU means the one this wheel has."""
    import onnxruntime_genai as og

    device = device.upper()
    if device in PROVIDERS:
        provider = PROVIDERS[device]
    elif device.startswith("GPU"):
        if og.is_dml_available():
            provider = "dml"
        elif og.is_cuda_available():
            provider = "cuda"
        else:
            raise EngineError("onnxruntime: no GPU execution provider in this onnxruntime-genai build; install "
                              "onnxruntime-genai-directml (Windows, any DirectX 12 GPU) or onnxruntime-genai-cuda "
                              "(NVIDIA), or use device = \"CPU\"")
    else:
        raise EngineError(f"onnxruntime: device {device!r} is not supported; use CPU, GPU, CUDA or DML")
    available = {"cpu": True, "cuda": og.is_cuda_available(), "dml": og.is_dml_available()}
    if not available[provider]:
        wheel = {"cuda": "onnxruntime-genai-cuda", "dml": "onnxruntime-genai-directml (Windows)"}[provider]
        raise EngineError(f"onnxruntime: the {provider} execution provider is not in this onnxruntime-genai "
                          f"build; install {wheel} instead of onnxruntime-genai")
    return provider


class OnnxRuntimeGenAIEngine(Engine):
    """`options`: the `onnxruntime` settings section (OnnxRuntimeSettings; its defaults when None)."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, device: str = "CPU", *, threads: int = 0, precision: str = "",
                 options: OnnxRuntimeSettings | None = None):
        options = options or OnnxRuntimeSettings()
        super().__init__(model_path, device.upper(), threads=threads, precision=precision, options=options)
        self.prefix_reuse = options.prefix_reuse
        self.max_length = options.max_length
        self.provider_options = dict(options.config)
        self._model = None
        self._tokenizer = None
        self._generator = None
        self._generator_key: tuple | None = None
        self._sequence: list[int] = []  # token ids whose KV the kept generator holds (plus its last token)

    def load_model(self) -> EngineInfo:
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise EngineError(f"onnxruntime: onnxruntime-genai is not installed ({exc}); "
                              "pip install \"aipc-lsp[onnxruntime]\"") from exc
        path = Path(self.model_path)
        if not (path / "genai_config.json").is_file():
            raise EngineError(f"onnxruntime: {path} is not an ONNX Runtime GenAI model folder (no genai_config.json); "
                              f"make one with `aipc-lsp prepare SOURCE --engine onnxruntime`")
        started = time.perf_counter()
        provider = provider_for(self.device)
        try:
            config = og.Config(str(path))
            config.clear_providers()
            if provider != "cpu":
                config.append_provider(provider)
                for key, value in self.provider_options.items():
                    config.set_provider_option(provider, str(key), str(value))
            if self.threads > 0:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))
            self._model = og.Model(config)
            self._tokenizer = og.Tokenizer(self._model)
        except Exception as exc:
            raise EngineError(f"onnxruntime could not load {path} with the {provider} provider: {exc}") from exc
        with open(path / "genai_config.json", encoding="utf-8") as f:
            context = json.load(f).get("model", {}).get("context_length") or self.max_length
        self.max_length = min(self.max_length, int(context))
        self.generate("\n", GenerationParams(max_new_tokens=2), threading.Event())
        log.info("onnxruntime: loaded %s with %s in %.2fs", path.name, provider, time.perf_counter() - started)
        # With prefix reuse the kept generator holds the last prompt's KV: the next one continues it.
        return EngineInfo(max_prompt_tokens=self.max_prompt_tokens, keeps_prompt_cache=self.prefix_reuse,
                          chat_template=chat_template_from_folder(self.model_path))

    @property
    def max_prompt_tokens(self) -> int:
        """A generator holds `max_length` tokens, prompt and answer: prompts get all but the answer's room."""
        return prompt_limit_of(self.max_length)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            raise EngineError("model not loaded")
        return len(self._tokenizer.encode(text))

    def _search_options(self, params: GenerationParams) -> dict:
        # Plain sampling at the asked temperature, whatever the model's genai_config.json says.
        options = {"max_length": self.max_length, "repetition_penalty": 1.0}
        if params.temperature > 0:
            options.update(do_sample=True, temperature=params.temperature, top_p=1.0)
        else:
            options.update(do_sample=False, top_k=1)
        return options

    def _prepare_generator(self, ids: list[int], params: GenerationParams):
        """A generator holding `ids`: the kept one rewound to the shared prefix when possible."""
        import onnxruntime_genai as og

        options = self._search_options(params)
        key = tuple(sorted(options.items()))
        reuse = 0
        if self.prefix_reuse and self._generator is not None and key == self._generator_key:
            # The last token of the kept sequence has no KV yet, and the new prompt needs at
            # least one fresh token to produce logits from.
            reuse = min(common_prefix(self._sequence, ids), len(self._sequence) - 1, len(ids) - 1)
        if reuse > 0:
            try:
                self._generator.rewind_to(reuse)
            except Exception as exc:  # an older build or a provider without rewind
                log.debug("onnxruntime: rewind failed (%s); starting afresh", exc)
                reuse = 0
        if reuse == 0:
            self._generator = None  # free the old KV cache before allocating a new one
            gen_params = og.GeneratorParams(self._model)
            gen_params.set_search_options(**options)
            self._generator = og.Generator(self._model, gen_params)
            self._generator_key = key
        return self._generator, reuse

    def _prefill(self, generator, ids: list[int], start: int, cancel: threading.Event) -> bool:
        """Append the prompt in chunks so a cancel during a long prefill lands between chunks.
        False when cancelled; what was appended stays in the KV cache for the next request."""
        for offset in range(start, len(ids), PREFILL_CHUNK):
            if cancel.is_set():
                return False
            generator.append_tokens(ids[offset:offset + PREFILL_CHUNK])
        return True

    def generate(self, prompt: str, params: GenerationParams, cancel: threading.Event,
                 on_text: OnText | None = None) -> GenerationResult:
        if self._model is None:
            raise EngineError("model not loaded")
        result = GenerationResult()
        started = time.perf_counter()
        if cancel.is_set():
            result.cancelled = True
            return result
        ids = [int(t) for t in self._tokenizer.encode(prompt)]
        if not ids:
            ids = [int(self._tokenizer.bos_token_id)]
        if len(ids) >= self.max_length:
            # The request, not the engine: the slot stays healthy for prompts that fit.
            raise RequestError(f"onnxruntime: the prompt is {len(ids)} tokens, more than a generator holds "
                               f"(onnxruntime.max_length = {self.max_length}): lower the prompt budget "
                               f"(completion.context_tokens / chat.context_tokens) or raise onnxruntime.max_length")
        pieces = TextStream(WindowDetokenizer(self._tokenizer.decode), params, result, on_text,
                            special_stop_ids(self._tokenizer.encode, params.stop))
        try:
            generator, reused = self._prepare_generator(ids, params)
            if not self._prefill(generator, ids, reused, cancel):
                result.cancelled = True
            while not result.cancelled and pieces.count < params.max_new_tokens and not generator.is_done():
                if cancel.is_set():
                    result.cancelled = True
                    break
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if result.first_token_s is None:
                    result.first_token_s = time.perf_counter() - started
                if generator.is_done() and token in self._eos_ids():
                    break
                if not pieces.push([token]):
                    break
            self._sequence = [int(t) for t in generator.get_sequence(0)]
        except EngineError:
            raise
        except Exception as exc:
            self._generator = None
            self._sequence = []
            raise EngineError(f"onnxruntime generation failed: {exc}") from exc
        result.text = pieces.text
        result.tokens = pieces.count
        result.total_s = time.perf_counter() - started
        return result

    def _eos_ids(self) -> set[int]:
        try:
            return {int(t) for t in self._tokenizer.eos_token_ids}
        except Exception:
            return set()

    def close(self) -> None:
        self._generator = None
        self._tokenizer = None
        self._model = None
