"""Worker process of the npu_library engine: intel-npu-acceleration-library in its own environment.

Run by path with the interpreter of the environment where the library is installed
(`npu_library.python`); that environment pins transformers 4.4x, so this file imports nothing
from aipc_lsp and nothing but the standard library until a model is loaded.

Protocol: one JSON object per line. Requests arrive on stdin, answers leave on stdout, and
stdout carries nothing else (whatever the library prints goes to stderr, which the server logs).

  worker -> {"hello": 1, "pid": ..., "python": "3.11.7"}                    once, at start
  server -> {"id": 1, "op": "load", "model": FOLDER, "precision": "int4|int8|fp16", "threads": 0}
  worker -> {"id": 1, "ok": true, "result": {"npu": false, "device": "CPU", "version": ..., "load_s": ...}}
  server -> {"id": 2, "op": "count_tokens", "text": "..."}      -> {"id": 2, "ok": true, "result": 12}
  server -> {"id": 3, "op": "chat_template"}                    -> {"id": 3, "ok": true, "result": "{% ... %}"}
             (these two are answered at once, also while a generation runs: the server counts
             tokens on every keystroke, from another thread than the one that generates)
  server -> {"id": 4, "op": "generate", "prompt": "...", "params": {"max_new_tokens": 64, "temperature": 0.0,
             "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "stop": ["\\n\\n"]}}
  worker -> {"id": 4, "token": 1, "text": "re"}      one line per generated token ("" while a character
  worker -> {"id": 4, "token": 2, "text": "turn"}     is incomplete), then the result:
  worker -> {"id": 4, "ok": true, "result": {"tokens": 2, "prompt_tokens": 9, "first_token_s": 0.41,
             "total_s": 0.9, "cancelled": false, "stopped": false, "reused_tokens": 0}}
  server -> {"cancel": 4}        stops generation 4 before its next forward pass (a decode step or a
                                 prefill chunk); read by a thread of its own, so it lands mid-generation
  server -> {"id": 5, "op": "close"}                            -> {"id": 5, "ok": true, "result": null}, exit
  A failed request answers {"id": N, "ok": false, "error": "..."}; the worker carries on.
  End of input (the server went away) stops any generation and exits.
"""

from __future__ import annotations

import io
import json
import os
import queue
import sys
import threading
import time
import traceback
import warnings

# Run by path, this file's folder would come first on sys.path, and its neighbours (transformers.py,
# openvino.py) would shadow the real packages. The engine also runs it with -I, which does this.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

PROTOCOL = 1
PRECISIONS = ("int4", "int8", "fp16")
# Answered by the stdin reader thread, so they never wait behind a generation.
QUICK_OPS = ("count_tokens", "chat_template")
# Prompt tokens per forward pass while prefilling: a cancel waits for at most one chunk. Chunks
# are powers of two, so the library (which compiles one kernel per input shape, statically shaped
# on the NPU) sees a handful of shapes that stay compiled, not one per prompt length.
PREFILL_CHUNK = 256
EXIT_GRACE_S = 5.0


class Channel:
    """The protocol stream: the real stdout, kept apart from everything else the process prints."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict) -> None:
        line = json.dumps(message, ensure_ascii=False) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


def take_stdout() -> Channel:
    """Keep fd 1 for the protocol and point fd 1 (C++ and Python prints alike) at stderr."""
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return Channel(protocol)


class Cancels:
    """Generation ids the server cancelled; everything is cancelled once its input ends."""

    def __init__(self):
        self._ids: set = set()
        self._lock = threading.Lock()
        self.closed = threading.Event()

    def add(self, request_id) -> None:
        with self._lock:
            self._ids.add(request_id)

    def is_set(self, request_id) -> bool:
        return self.closed.is_set() or request_id in self._ids

    def forget(self, request_id) -> None:
        with self._lock:
            self._ids.discard(request_id)


def read_requests(stream, inbox: "queue.Queue", cancels: Cancels, quick=None) -> None:
    """Read requests: cancels and the quick ops are dealt with here at once, even while the main
    thread is generating (the server counts tokens on every keystroke); the rest queue up."""
    for raw in stream:
        line = raw.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            print(f"npu_worker: ignoring a line that is not JSON: {line[:200]!r}", file=sys.stderr)
            continue
        if isinstance(message, dict) and "cancel" in message:
            cancels.add(message["cancel"])
        elif quick is not None and isinstance(message, dict) and message.get("op") in QUICK_OPS:
            quick(message)
        else:
            inbox.put(message)
    cancels.closed.set()
    inbox.put(None)
    # The server is gone: whatever the main thread is doing (a long compile), do not outlive it.
    timer = threading.Timer(EXIT_GRACE_S, lambda: os._exit(0))
    timer.daemon = True
    timer.start()


def chat_template_from_folder(folder: str) -> str:
    """The Jinja chat template saved next to the model, or ""."""
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, str):
            return template
        if isinstance(template, list):
            for entry in template:
                if isinstance(entry, dict) and entry.get("name") == "default":
                    return str(entry.get("template", ""))
    return ""


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
        print(f"npu_worker: reading tokenizer.json directly (this transformers cannot read the folder's "
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


class Runner:
    def __init__(self, channel: Channel, cancels: Cancels):
        self.channel = channel
        self.cancels = cancels
        self.model = None
        self.tokenizer = None
        self.folder = ""
        self.eos: set = set()
        self.cache = None
        self.sequence: list = []  # token ids whose KV `cache` holds

    # -- requests ---------------------------------------------------------------------------------
    def load(self, model: str, precision: str = "int4", threads: int = 0, **_):
        started = time.perf_counter()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; use int4, int8 or fp16")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ValueError(f"{model} is not a Hugging Face model folder (no config.json)")
        import torch

        import intel_npu_acceleration_library as npu_lib
        from intel_npu_acceleration_library import NPUModelForCausalLM
        from intel_npu_acceleration_library.backend import npu_available
        from intel_npu_acceleration_library.compiler import CompilerConfig

        dtypes = {"int4": npu_lib.int4, "int8": npu_lib.int8, "fp16": torch.float16}
        # The library runs the linear layers (OpenVINO, on the NPU or its CPU fallback); torch
        # runs the rest. Two thread pools spinning on the same cores slow each other down.
        torch.set_num_threads(threads if threads > 0 else 1)
        import transformers

        transformers.utils.logging.disable_progress_bar()
        self.tokenizer = load_tokenizer(model)
        # As in Intel's AI-PC guide: CompilerConfig(dtype=int4|int8|float16), use_cache, sdpa.
        # export=False: the library would otherwise pickle the compiled model into ./cache.
        self.model = NPUModelForCausalLM.from_pretrained(
            model, config=CompilerConfig(dtype=dtypes[precision]), export=False, use_cache=True,
            attn_implementation="sdpa", **legacy_config_overrides(model)).eval()
        self.folder = model
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.cache, self.sequence = None, []
        npu = bool(npu_available())
        # Compile the one-token kernels now rather than on the first keystroke.
        self.generate(None, "\n", {"max_new_tokens": 2})
        return {"npu": npu, "device": "NPU" if npu else "CPU", "version": getattr(npu_lib, "__version__", ""),
                "precision": precision, "load_s": round(time.perf_counter() - started, 3),
                "transformers": transformers.__version__, "torch": torch.__version__,
                "python": sys.version.split()[0]}

    def count_tokens(self, text: str, **_):
        self._need_model()
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def chat_template(self, **_):
        self._need_model()
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) and template else chat_template_from_folder(self.folder)

    def _need_model(self):
        if self.model is None:
            raise RuntimeError("no model loaded")

    def _processors(self, params: dict):
        from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                            TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)

        processors = LogitsProcessorList()
        if float(params.get("repetition_penalty", 1.0)) != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(params["repetition_penalty"])))
        if float(params.get("temperature", 0.0)) > 0:
            processors.append(TemperatureLogitsWarper(float(params["temperature"])))
            if int(params.get("top_k", 0)):
                processors.append(TopKLogitsWarper(int(params["top_k"])))
            if float(params.get("top_p", 1.0)) < 1.0:
                processors.append(TopPLogitsWarper(float(params["top_p"])))
        return processors

    def _start(self, ids: list):
        """The KV cache to continue from and how many of `ids` it already holds."""
        from transformers import DynamicCache

        reuse = 0
        if self.cache is not None:
            n = min(len(self.sequence), len(ids) - 1)
            while reuse < n and self.sequence[reuse] == ids[reuse]:
                reuse += 1
        if reuse > 0:
            surplus = self.cache.get_seq_length() - reuse
            if surplus > 0:
                self.cache.crop(-surplus)
            return self.cache, reuse
        self.cache, self.sequence = None, []
        return DynamicCache(), 0

    def generate(self, request_id, prompt: str, params: dict, **_):
        import torch

        self._need_model()
        started = time.perf_counter()
        result = {"tokens": 0, "prompt_tokens": 0, "first_token_s": None, "total_s": 0.0,
                  "cancelled": False, "stopped": False, "reused_tokens": 0}
        cancelled = (lambda: self.cancels.is_set(request_id)) if request_id is not None else (lambda: False)
        tokenizer = self.tokenizer
        ids = tokenizer.encode(prompt, add_special_tokens=False) or [tokenizer.bos_token_id or 0]
        result["prompt_tokens"] = len(ids)
        max_new = int(params.get("max_new_tokens", 64))
        stop = [s for s in params.get("stop", ()) if s]
        greedy = float(params.get("temperature", 0.0)) <= 0
        processors = self._processors(params)
        generated: list = []
        text = ""
        try:
            with torch.inference_mode():
                cache, reused = self._start(ids)
                result["reused_tokens"] = reused
                # Prefill all but the last prompt token; the loop below feeds that one.
                offset, end = reused, len(ids) - 1
                while offset < end:
                    if cancelled():
                        result["cancelled"] = True
                        break
                    size = min(PREFILL_CHUNK, 1 << ((end - offset).bit_length() - 1))
                    chunk = ids[offset:offset + size]
                    cache = self.model(input_ids=torch.tensor([chunk]), past_key_values=cache,
                                       use_cache=True).past_key_values
                    offset += size
                    self.cache, self.sequence = cache, ids[:offset]
                sequence = list(ids)
                feed = torch.tensor([ids[-1:]])
                while not result["cancelled"] and len(generated) < max_new:
                    if cancelled():
                        result["cancelled"] = True
                        break
                    out = self.model(input_ids=feed, past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    self.cache, self.sequence = cache, list(sequence)
                    logits = out.logits[:, -1, :].float()
                    if processors:
                        logits = processors(torch.tensor([sequence]), logits)
                    if greedy:
                        token = int(torch.argmax(logits, dim=-1)[0])
                    else:
                        token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1)[0, 0])
                    if result["first_token_s"] is None:
                        result["first_token_s"] = time.perf_counter() - started
                    if token in self.eos:
                        break
                    sequence.append(token)
                    generated.append(token)
                    decoded = tokenizer.decode(generated, skip_special_tokens=True)
                    piece = ""
                    if not decoded.endswith("\ufffd"):  # else a multi-byte character is incomplete
                        piece, text = decoded[len(text):], decoded
                    if request_id is not None:
                        self.channel.send({"id": request_id, "token": len(generated), "text": piece})
                    if piece and stop and any(s in text for s in stop):
                        result["stopped"] = True
                        break
                    feed = torch.tensor([[token]])
        except Exception:
            self.cache, self.sequence = None, []
            raise
        result["tokens"] = len(generated)
        result["total_s"] = time.perf_counter() - started
        return result


def answer(channel: Channel, request_id, work) -> None:
    try:
        result = work()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        channel.send({"id": request_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    else:
        channel.send({"id": request_id, "ok": True, "result": result})


def quick_op(runner: "Runner", channel: Channel, message: dict) -> None:
    if message.get("op") == "count_tokens":
        answer(channel, message.get("id"), lambda: runner.count_tokens(str(message.get("text", ""))))
    else:
        answer(channel, message.get("id"), runner.chat_template)


def serve(runner: "Runner", channel: Channel, inbox: "queue.Queue", cancels: Cancels) -> int:
    while True:
        message = inbox.get()
        if message is None:
            return 0
        request_id = message.get("id") if isinstance(message, dict) else None
        op = message.get("op") if isinstance(message, dict) else None
        try:
            if op == "close":
                channel.send({"id": request_id, "ok": True, "result": None})
                return 0
            if op == "generate":
                result = runner.generate(request_id, str(message.get("prompt", "")), dict(message.get("params") or {}))
            elif op == "load":
                result = runner.load(str(message["model"]), str(message.get("precision", "int4")),
                                     int(message.get("threads", 0)))
            elif op in QUICK_OPS:  # when not read by the reader thread
                quick_op(runner, channel, message)
                continue
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            channel.send({"id": request_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        else:
            channel.send({"id": request_id, "ok": True, "result": result})
        finally:
            if op == "generate":
                cancels.forget(request_id)


def main() -> int:
    channel = take_stdout()
    # Library and dependency chatter that says nothing about this run.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    inbox: queue.Queue = queue.Queue()
    cancels = Cancels()
    runner = Runner(channel, cancels)
    requests = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    reader = threading.Thread(target=read_requests, daemon=True, name="npu-worker-stdin",
                              args=(requests, inbox, cancels, lambda message: quick_op(runner, channel, message)))
    reader.start()
    channel.send({"hello": PROTOCOL, "pid": os.getpid(), "python": sys.version.split()[0]})
    return serve(runner, channel, inbox, cancels)


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Not sys.exit: the stdin reader thread is blocked in a read, which would abort finalization.
    os._exit(code)
