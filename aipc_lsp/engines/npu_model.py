"""The npu_library engine's model side: intel-npu-acceleration-library's `NPUModelForCausalLM`,
decoded by the transformers engine's loop, in a worker process.

worker.py builds it (`python -m aipc_lsp.engines.worker`, see process.py) under the interpreter
of the library's own environment (`npu_library.python`); npu_library.py is the server's side.
That environment pins transformers 4.4x and has none of the server's packages, so this module
and what it imports (transformers.py, textstream.py, base.py) need only the standard library
until a model loads.

From the transformers engine: cancel looked at before every forward pass, the KV cache of the
prefix a new prompt shares with the last one reused, the text stream and stop rules. What
differs: the model comes from the library, compiled for the NPU (for OpenVINO's CPU device
without one); prefill goes in power-of-two chunks, since the library compiles a kernel per input
shape (statically shaped on the NPU) and this keeps the shapes to a few that stay compiled; and
folders saved by transformers 5 are read by transformers 4.4x.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings

from aipc_lsp.engines import check_precision
from aipc_lsp.engines.base import EngineError, EngineInfo
from aipc_lsp.engines.templates import chat_template_from_folder
from aipc_lsp.engines.transformers import PREFILL_CHUNK, TransformersEngine



def legacy_config_overrides(folder: str) -> dict:
    """Config values a transformers-5 folder keeps where transformers 4.4x does not look.

    transformers 5 saves RoPE settings as `rope_parameters`; 4.4x reads `rope_theta` and
    `rope_scaling` and would silently fall back to theta 10000 (wrong positions, worse text)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    rope = config.get("rope_parameters")
    overrides = {}
    if isinstance(rope, dict) and "rope_theta" not in config:
        if "rope_theta" in rope:
            overrides["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and "rope_scaling" not in config:
            overrides["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return overrides


def load_tokenizer(folder: str):
    """The folder's tokenizer. transformers 4.4x cannot read the tokenizer_config of folders saved
    by transformers 5 (class `TokenizersBackend`); tokenizer.json itself reads fine."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise
        print(f"npu_library: reading tokenizer.json directly (this transformers cannot read the folder's "
              f"tokenizer settings: {exc})", file=sys.stderr)
    special = {}
    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        special = {k: v for k, v in config.items()
                   if k in ("bos_token", "eos_token", "unk_token", "pad_token") and isinstance(v, str)}
    except (OSError, ValueError):
        pass
    return PreTrainedTokenizerFast(tokenizer_file=path, **special)


class NpuModelEngine(TransformersEngine):
    """`model_path` is a Hugging Face folder; `precision` int4, int8 or fp16 (the server's side
    chooses); `threads` for torch, which runs what the library does not (default 1)."""

    name = "npu_library"

    def load_model(self) -> EngineInfo:
        started = time.perf_counter()
        folder = self.model_path
        check_precision(self.name, self.precision)
        if not self.precision:  # the server's side chooses one before it starts this worker
            raise EngineError("npu_library: the model engine needs a precision: int4, int8 or fp16")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise EngineError(f"npu_library: {folder} is not a Hugging Face model folder (no config.json)")
        # Library and dependency chatter that says nothing about this run.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
        try:
            import torch
            import transformers

            import intel_npu_acceleration_library as npu_lib
            from intel_npu_acceleration_library import NPUModelForCausalLM
            from intel_npu_acceleration_library.backend import npu_available
            from intel_npu_acceleration_library.compiler import CompilerConfig
        except ImportError as exc:
            raise EngineError(f"npu_library: {type(exc).__name__}: {exc} (in {sys.executable})") from exc
        dtypes = {"int4": npu_lib.int4, "int8": npu_lib.int8, "fp16": torch.float16}
        # The library runs the linear layers (OpenVINO, on the NPU or its CPU fallback); torch
        # runs the rest. Two thread pools spinning on the same cores slow each other down.
        torch.set_num_threads(self.threads if self.threads > 0 else 1)
        transformers.utils.logging.disable_progress_bar()
        try:
            self._tokenizer = load_tokenizer(folder)
            # As in Intel's AI-PC guide: CompilerConfig(dtype=int4|int8|float16), use_cache, sdpa.
            # export=False: the library would otherwise pickle the compiled model into ./cache.
            self._model = NPUModelForCausalLM.from_pretrained(
                folder, config=CompilerConfig(dtype=dtypes[self.precision]), export=False, use_cache=True,
                attn_implementation="sdpa", **legacy_config_overrides(folder)).eval()
        except Exception as exc:
            raise EngineError(f"npu_library could not load {folder}: {type(exc).__name__}: {exc}") from exc
        self.device = "NPU" if npu_available() else "CPU"
        self._warm_up()  # compiles the one-token kernels now rather than on the first keystroke
        print(f"npu_library: loaded {os.path.basename(folder)} ({self.precision}) on {self.device} in "
              f"{time.perf_counter() - started:.1f}s: intel-npu-acceleration-library "
              f"{getattr(npu_lib, '__version__', '?')}, transformers {transformers.__version__}, "
              f"torch {torch.__version__}, Python {sys.version.split()[0]}", file=sys.stderr)
        info = self._info()
        # transformers 4.4x does not read a chat_template.jinja next to the tokenizer.
        return dataclasses.replace(info, chat_template=info.chat_template or chat_template_from_folder(folder))

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache()  # transformers 4.4x: no config argument

    def _chunk_size(self, remaining: int) -> int:
        return min(PREFILL_CHUNK, 1 << (remaining.bit_length() - 1))
