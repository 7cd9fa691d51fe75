"""Hugging Face transformers engine (PyTorch): cpu here; `xpu` (Intel GPUs, the IPEX-LLM
route of the AI-PC guides) and `cuda` where torch has them; fp32, bf16 or fp16.

It reads a Hugging Face model folder, or a GGUF file (dequantised at every load, which is
slow: `aipc-lsp prepare FILE.gguf --engine transformers` saves a folder once).
Decoding is a plain loop over forward passes rather than `model.generate`, so that the
cancel flag is looked at before every step and the KV cache (`past_key_values`) of the
previous request can be cropped to the prefix the new prompt shares with it and reused.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aipc_lsp.engines.base import (Engine, EngineError, EngineInfo, GenerationParams, GenerationResult, OnText,
                                   RequestError, prompt_limit_of)
from aipc_lsp.engines.detokenize import WindowDetokenizer
from aipc_lsp.engines.textstream import TextStream, common_prefix, special_stop_ids

if TYPE_CHECKING:
    from aipc_lsp.config import TransformersSettings

log = logging.getLogger(__name__)

# The precisions of the engines table's row, as torch names their dtypes.
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Prompt tokens per forward pass while prefilling: a cancel waits for at most one chunk.
PREFILL_CHUNK = 256


def torch_device(device: str) -> str:
    """The device setting as torch spells it; GPU means whichever GPU torch has."""
    import torch

    device = device.upper()
    if device == "CPU":
        return "cpu"
    xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    cuda = torch.cuda.is_available()
    if device.startswith("XPU") or (device.startswith("GPU") and xpu):
        if not xpu:
            raise EngineError("transformers: torch sees no XPU (Intel GPU); install a torch build with XPU "
                              "support and the Intel GPU driver, or use device = \"CPU\"")
        return device.lower().replace("gpu", "xpu")
    if device.startswith("CUDA") or device.startswith("GPU"):
        if not cuda:
            raise EngineError(f"transformers: torch sees no GPU for device {device!r} (torch "
                              f"{torch.__version__}); use device = \"CPU\"")
        return device.lower().replace("gpu", "cuda")
    raise EngineError(f"transformers: device {device!r} is not supported; use CPU, XPU, CUDA or GPU")


class TransformersEngine(Engine):
    """`options`: the `transformers` settings section (TransformersSettings; its defaults when None)."""

    name = "transformers"

    def __init__(self, model_path: str | Path, device: str = "CPU", *, threads: int = 0, precision: str = "",
                 options: "TransformersSettings | None" = None):
        super().__init__(model_path, device.upper(), threads=threads, precision=precision.lower(), options=options)
        # Not config's defaults imported: npu_model.py runs this under an interpreter without the server's packages.
        self.prefix_reuse = options.prefix_reuse if options is not None else True
        # Code shipped in a model folder runs only when the user's settings file says so (docs/SECURITY.md).
        self.trust_remote_code = bool(getattr(options, "trust_remote_code", False))
        self._context: int | None = None  # the model's context length, once loaded
        self.max_prompt_tokens: int | None = None
        self._model = None
        self._tokenizer = None
        self._torch_device = "cpu"
        self._cache = None
        self._sequence: list[int] = []  # token ids whose KV `_cache` holds
        self._eos: set[int] = set()

    def load_model(self) -> EngineInfo:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise EngineError(f"transformers: torch and transformers are needed ({exc}); "
                              "pip install \"aipc-lsp[transformers]\" torch") from exc
        path = Path(self.model_path)
        precision = self.precision or "fp32"
        if precision not in TORCH_DTYPES:
            raise EngineError(f"transformers: precision {self.precision!r} is not supported; use fp32, bf16 or fp16 "
                              "(int4/int8 belong to the openvino and onnxruntime engines)")
        self._torch_device = torch_device(self.device)
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        if path.is_file():
            folder, kwargs = str(path.parent), {"gguf_file": path.name}
            log.warning("transformers: dequantising %s at load; `aipc-lsp prepare %s --engine transformers` "
                        "saves a folder that loads faster", path.name, path)
        elif (path / "config.json").is_file():
            folder, kwargs = str(path), {}
        else:
            raise EngineError(f"transformers: {path} is neither a Hugging Face model folder (config.json) nor a GGUF file")
        kwargs["trust_remote_code"] = self.trust_remote_code  # never transformers' own default or prompt
        if self.trust_remote_code:
            log.warning("transformers: trust_remote_code is on: the Python code in %s runs in this process "
                        "with your rights", folder)
        started = time.perf_counter()
        import transformers

        transformers.utils.logging.disable_progress_bar()  # its bars would only clutter the server log
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, TORCH_DTYPES[precision]), **kwargs)
        except Exception as exc:
            raise EngineError(f"transformers could not load {path}: {exc}") from exc
        self._model = model.to(self._torch_device).eval()
        self._warm_up()
        log.info("transformers: loaded %s (%s) on %s in %.2fs", path.name, precision, self._torch_device,
                 time.perf_counter() - started)
        return self._info()

    def _info(self) -> EngineInfo:
        """With the model and tokenizer loaded: the KV cache it keeps past a request (prefix reuse),
        its context length, its chat template."""
        template = getattr(self._tokenizer, "chat_template", None)
        eos = getattr(self._tokenizer, "eos_token", None)
        return EngineInfo(device=self.device, max_prompt_tokens=self.max_prompt_tokens,
                          keeps_prompt_cache=self.prefix_reuse, chat_template=template if isinstance(template, str) else "",
                          eos_token=eos if isinstance(eos, str) else "")

    def _warm_up(self) -> None:
        """With the model and tokenizer in place: its end-of-sequence ids, and a first short
        generation (the first keystroke then finds the kernels ready)."""
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        context = getattr(self._model.config, "max_position_embeddings", None)
        self._context = context if isinstance(context, int) and context > 0 else None
        self.max_prompt_tokens = prompt_limit_of(self._context) if self._context else None
        self._cache, self._sequence = None, []
        self.generate("\n", GenerationParams(max_new_tokens=2), threading.Event())

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            raise EngineError("model not loaded")
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def _start(self, ids: list[int]):
        """The KV cache to continue from and how many of `ids` it already holds."""
        reuse = 0
        if self.prefix_reuse and self._cache is not None:
            reuse = min(common_prefix(self._sequence, ids), len(ids) - 1)
        if reuse > 0:
            # transformers 5 crops by a negative count: drop what follows the shared prefix.
            surplus = self._cache.get_seq_length() - reuse
            if surplus > 0:
                self._cache.crop(-surplus)
            return self._cache, reuse
        self._cache = None
        return self._new_cache(), 0

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self._model.config)

    def _chunk_size(self, remaining: int) -> int:
        """Prompt tokens in the next prefill forward pass, of `remaining`."""
        return min(PREFILL_CHUNK, remaining)

    def generate(self, prompt: str, params: GenerationParams, cancel: threading.Event,
                 on_text: OnText | None = None) -> GenerationResult:
        import torch

        if self._model is None:
            raise EngineError("model not loaded")
        result = GenerationResult()
        started = time.perf_counter()
        if cancel.is_set():
            result.cancelled = True
            return result
        ids = self._tokenizer.encode(prompt, add_special_tokens=False) or [self._tokenizer.bos_token_id or 0]
        if self._context and len(ids) >= self._context:
            # The request, not the engine: the slot stays healthy for prompts that fit.
            raise RequestError(f"{self.name}: the prompt is {len(ids)} tokens, more than the model's context "
                               f"({self._context}): lower the prompt budget (completion.context_tokens / "
                               f"chat.context_tokens)")
        stop_ids = special_stop_ids(lambda text: self._tokenizer.encode(text, add_special_tokens=False), params.stop)
        pieces = TextStream(WindowDetokenizer(lambda toks: self._tokenizer.decode(toks, skip_special_tokens=True)),
                            params, result, on_text, stop_ids)
        try:
            with torch.inference_mode():
                cache, reused = self._start(ids)
                # Prefill all but the last prompt token in chunks, so a cancel lands between them;
                # the loop below feeds the last one and gets the first logits from it.
                offset, end = reused, len(ids) - 1
                while offset < end:
                    if cancel.is_set():
                        result.cancelled = True
                        break
                    chunk = ids[offset:offset + self._chunk_size(end - offset)]
                    cache = self._model(input_ids=torch.tensor([chunk], device=self._torch_device),
                                        past_key_values=cache, use_cache=True).past_key_values
                    offset += len(chunk)
                    self._cache, self._sequence = cache, ids[:offset]
                sequence = list(ids)
                feed = torch.tensor([ids[-1:]], device=self._torch_device)
                while not result.cancelled and pieces.count < params.max_new_tokens:
                    if cancel.is_set():
                        result.cancelled = True
                        break
                    out = self._model(input_ids=feed, past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    # The cache now holds `sequence`; keep it for the next prompt.
                    self._cache, self._sequence = cache, list(sequence)
                    logits = out.logits[:, -1, :].float()
                    if params.temperature > 0:
                        token = int(torch.multinomial(torch.softmax(logits / params.temperature, dim=-1), 1)[0, 0])
                    else:
                        token = int(torch.argmax(logits, dim=-1)[0])
                    if result.first_token_s is None:
                        result.first_token_s = time.perf_counter() - started
                    if token in self._eos:
                        break
                    sequence.append(token)
                    if not pieces.push([token]):
                        break
                    feed = torch.tensor([[token]], device=self._torch_device)
        except Exception as exc:
            self._cache, self._sequence = None, []
            raise EngineError(f"{self.name} generation failed: {exc}") from exc
        result.text = pieces.text
        result.tokens = pieces.count
        result.total_s = time.perf_counter() - started
        return result

    def close(self) -> None:
        self._cache = None
        self._model = None
        self._tokenizer = None
