"""Pieces the engines share: text streaming with stop rules, prefixes, chat templates on
disk, which model an engine gets, and the npu_library probe up to the hardware line."""

from __future__ import annotations

import json
import sys
import threading
from types import SimpleNamespace

import pytest

from aipc_lsp.config import NpuLibrarySettings
from aipc_lsp.engines.base import EngineError, GenerationParams, GenerationResult
from aipc_lsp.engines.npu_library import NpuLibraryEngine, missing_message, probe
from aipc_lsp.engines.templates import chat_template_from_folder
from aipc_lsp.engines.detokenize import WindowDetokenizer
from aipc_lsp.engines.textstream import TextStream, common_prefix
from aipc_lsp.models import compat, resolve
from aipc_lsp.models.catalogue import QWEN_CODER_15B, SMOLLM2_135M
from aipc_lsp.models.registry import DEFAULT_MODEL, detect_kind, list_models

VOCAB = {1: "def", 2: " f", 3: "():", 4: "\n", 5: "\xe2", 6: "\x82\xac"}


def _decode(tokens):
    raw = "".join(VOCAB[t] for t in tokens).encode("latin-1")
    return raw.decode("utf-8", errors="replace")


def _stream(params: GenerationParams, result: GenerationResult, on_text=None, stop_ids=()) -> TextStream:
    return TextStream(WindowDetokenizer(_decode), params, result, on_text, stop_ids)


def test_pieces_are_streamed_and_incomplete_characters_held_back():
    seen = []
    result = GenerationResult()
    stream = _stream(GenerationParams(), result, lambda piece: seen.append(piece) is None)
    for token in (1, 2, 5, 6, 3):
        assert stream.push([token])
    assert seen == ["def", " f", "\u20ac", "():"]
    assert stream.text == "def f\u20ac():" and stream.count == 5


def test_stop_strings_and_on_text_false_end_the_stream():
    result = GenerationResult()
    stream = _stream(GenerationParams(stop=("\n",)), result)
    assert stream.push([1]) and not stream.push([4])
    assert result.stopped_by_caller
    result = GenerationResult()
    assert not _stream(GenerationParams(), result, lambda piece: False).push([1]) and result.stopped_by_caller


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_chat_template_is_read_from_the_model_folder(tmp_path):
    assert chat_template_from_folder(tmp_path) == ""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert chat_template_from_folder(tmp_path) == "{{ messages }}"
    (tmp_path / "chat_template.jinja").write_text("<|user|>{{ m }}")
    (tmp_path / "model.onnx").write_bytes(b"")
    assert chat_template_from_folder(tmp_path / "model.onnx") == "<|user|>{{ m }}"


@pytest.mark.parametrize("spec", [DEFAULT_MODEL, QWEN_CODER_15B, SMOLLM2_135M], ids=lambda spec: spec.name)
def test_engines_get_a_model_they_can_load(tmp_path, monkeypatch, spec):
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path))
    models = tmp_path / "models"
    models.mkdir()
    gguf = models / spec.filename
    gguf.write_bytes(b"GGUF")
    assert compat.model_for_engine(gguf, "openvino") == gguf
    assert compat.model_for_engine(gguf, "transformers") == gguf  # read directly, dequantised at load
    with pytest.raises(compat.ModelError, match=f"aipc-lsp prepare {spec.name} --engine onnxruntime --precision int4"):
        compat.model_for_engine(gguf, "onnxruntime")
    ort = models / f"{spec.name}-onnxruntime-int4"
    ort.mkdir()
    (ort / "genai_config.json").write_text("{}")
    assert compat.model_for_engine(gguf, "onnxruntime") == ort
    # Folders made under a model's old name still count.
    hf = models / f"{(spec.aliases or (spec.name,))[0]}-transformers-fp32"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert detect_kind(hf) == "transformers"
    assert compat.model_for_engine(gguf, "transformers") == hf
    assert {m.kind for m in list_models()} >= {"gguf", "onnxruntime-genai", "transformers"}
    with pytest.raises(compat.ModelError, match="prepare .*other.gguf --engine onnxruntime"):
        compat.model_for_engine(models / "other.gguf", "onnxruntime")
    # The same file outside the model cache is not the verified catalogue model: named by its path.
    elsewhere = tmp_path / spec.filename
    elsewhere.write_bytes(b"GGUF")
    with pytest.raises(compat.ModelError, match=f"prepare {elsewhere} --engine onnxruntime"):
        compat.model_for_engine(elsewhere, "onnxruntime")


def test_models_fetch_makes_what_the_configured_engines_load(tmp_path, monkeypatch):
    from aipc_lsp.config import Settings, SlotSettings
    from aipc_lsp.models import gguf_ir

    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path))
    (tmp_path / "models").mkdir()
    gguf = tmp_path / "models" / DEFAULT_MODEL.filename
    gguf.write_bytes(b"GGUF")
    made = []
    monkeypatch.setattr(gguf_ir, "ir_for", lambda path, progress=None: made.append(path) or tmp_path / "ir")
    settings = Settings(slots=[SlotSettings(engine="openvino"), SlotSettings(engine="onnxruntime"),
                               SlotSettings(engine="openvino", device="GPU")])
    lines = resolve.ready_for_engines(gguf, settings)
    assert made == [gguf]  # once, for both openvino slots
    assert lines[0] == f"openvino loads {tmp_path / 'ir'}"
    assert lines[1].startswith("onnxruntime: ") and f"prepare {DEFAULT_MODEL.name} --engine onnxruntime" in lines[1]
    # Without openvino.gguf_as_ir a GGUF is loaded as it is, unless the GGUF reader cannot read it (Q5_0).
    settings.openvino.gguf_as_ir = False
    assert resolve.ready_for_engines(gguf, settings)[0] == f"openvino loads {tmp_path / 'ir'}" and len(made) == 2
    small = tmp_path / "models" / SMOLLM2_135M.filename
    small.write_bytes(b"GGUF")
    assert resolve.ready_for_engines(small, settings)[0] == f"openvino loads {small}" and len(made) == 2
    # A GGUF of the user's own is taken as readable (its types take seconds to read): OpenVINO says if not.
    assert not compat.openvino_loads_ir_of(tmp_path / "models" / "mine.Q5_0.gguf", settings)


def test_npu_library_probe_reports_what_is_missing(tmp_path):
    found = probe(str(tmp_path / "no-python"))
    assert not found.importable and "does not exist" in found.error
    found = probe(sys.executable)
    try:
        import intel_npu_acceleration_library  # noqa: F401
    except ImportError:
        assert not found.importable and "intel_npu_acceleration_library" in found.error
        message = missing_message(found)
        assert "npu_library.python" in message and "device = \"NPU\"" in message
        engine = NpuLibraryEngine("model", precision="int4", options=NpuLibrarySettings(python=sys.executable))
        with pytest.raises(EngineError, match="not importable"):
            engine.load()
        pytest.skip("intel-npu-acceleration-library is not installed here (source-only, own environment): "
                    "tested up to the probe and the message")
    assert found.importable  # pragma: no cover - only where the library is installed
    if not found.npu:  # pragma: no cover
        assert "sees no NPU" in missing_message(found)
        pytest.skip("no Intel NPU here: NPUModelForCausalLM needs one; tested up to the probe")


def test_npu_library_refuses_unknown_precisions():
    with pytest.raises(EngineError, match="int4, int8 or fp16"):
        NpuLibraryEngine("model", precision="fp32").load()


def test_onnxruntime_cpu_and_unknown_devices():
    pytest.importorskip("onnxruntime_genai")
    from aipc_lsp.engines.onnxruntime import provider_for

    assert provider_for("CPU") == "cpu"
    with pytest.raises(EngineError, match="not supported"):
        provider_for("NPU")


@pytest.mark.parametrize("device, provider, wheel", [("DML", "dml", "onnxruntime-genai-directml"),
                                                     ("CUDA", "cuda", "onnxruntime-genai-cuda")])
def test_onnxruntime_gpu_providers_up_to_the_hardware(device, provider, wheel):
    og = pytest.importorskip("onnxruntime_genai")
    from aipc_lsp.engines.onnxruntime import provider_for

    present = og.is_dml_available() if provider == "dml" else og.is_cuda_available()
    if present:  # pragma: no cover - GPU machines only
        assert provider_for(device) == provider
        return
    with pytest.raises(EngineError, match=wheel):
        provider_for(device)
    pytest.skip(f"no {provider} execution provider in this onnxruntime-genai build: tested up to device selection")


@pytest.mark.parametrize("device", ["XPU", "CUDA"])
def test_transformers_gpu_devices_up_to_the_hardware(device):
    torch = pytest.importorskip("torch")
    from aipc_lsp.engines.transformers import torch_device

    assert torch_device("CPU") == "cpu"
    with pytest.raises(EngineError, match="not supported"):
        torch_device("NPU")
    present = (hasattr(torch, "xpu") and torch.xpu.is_available()) if device == "XPU" else torch.cuda.is_available()
    if present:  # pragma: no cover - GPU machines only
        assert torch_device(device) == device.lower()
        return
    with pytest.raises(EngineError, match="no XPU" if device == "XPU" else "no GPU"):
        torch_device(device)
    pytest.skip(f"torch sees no {device} here: tested up to device selection")


def test_generate_before_load_is_an_engine_error():
    from aipc_lsp.engines.onnxruntime import OnnxRuntimeGenAIEngine

    engine = OnnxRuntimeGenAIEngine("nowhere")
    with pytest.raises(EngineError, match="not loaded"):
        engine.generate("x", GenerationParams(), threading.Event())


def test_openvino_npu_gets_its_static_shape_limits_and_cpu_does_not():
    from aipc_lsp.config import OpenVINOSettings
    from aipc_lsp.engines.openvino import OpenVINOEngine

    npu = OpenVINOEngine("m", "NPU", options=OpenVINOSettings(npu_max_prompt_len=512, npu_min_response_len=32,
                                                              config={"CACHE_DIR": "cache"}))._compile_properties()
    assert npu["MAX_PROMPT_LEN"] == 512 and npu["MIN_RESPONSE_LEN"] == 32 and npu["CACHE_DIR"] == "cache"
    assert npu["PERFORMANCE_HINT"] == "LATENCY"
    cpu = OpenVINOEngine("m", "CPU")._compile_properties()
    assert "MAX_PROMPT_LEN" not in cpu and cpu["ENABLE_CPU_PINNING"] is True


def test_npu_library_built_offline_is_found_in_its_own_environment():
    """scripts/build-npu-library.sh ENV builds it here; AIPC_NPU_PYTHON=ENV/bin/python runs this."""
    import os

    python = os.environ.get("AIPC_NPU_PYTHON")
    if not python:
        pytest.skip("AIPC_NPU_PYTHON is not set: no environment built by scripts/build-npu-library.sh")
    found = probe(python)
    assert found.importable and found.version, found
    if not found.npu:
        # It loads anyway, on OpenVINO's CPU device (tests/e2e/test_npu_library_engine.py), and says so.
        assert "sees no NPU" in missing_message(found) and "CPU" in missing_message(found)


def test_long_texts_are_counted_in_pieces_that_join_back_into_the_text():
    from aipc_lsp.engines.openvino import _pieces

    code = "".join(f"line {i}: {'x' * (i % 90)}\n" for i in range(400)) + "y" * 5000
    pieces = list(_pieces(code, 1024))
    assert "".join(pieces) == code
    assert all(0 < len(p) <= 1024 for p in pieces)
    # Cut after a line break where there is one in the piece's second half; the 5000-character
    # line at the end is cut where it must be.
    assert all(p.endswith("\n") for p in pieces if "y" not in p)
    assert list(_pieces("", 1024)) == []


class _Tokenizer:
    """A tokenizer as OpenVINO GenAI's answers: get_vocab() gives each token's bytes."""

    def __init__(self, vocab: dict[bytes, int], shown: dict[int, str]):
        self._vocab, self._shown = vocab, shown

    def get_vocab(self):
        return self._vocab

    def decode(self, ids):
        if ids and isinstance(ids[0], list):
            return [self.decode(one) for one in ids]
        return "".join(self._shown[i] for i in ids)

    def encode(self, text):
        class Ids:  # what the sample check reads: input_ids.data[0]
            data = [[0, 1]]
        return type("Encoded", (), {"input_ids": Ids})()


def test_byte_table_is_used_only_where_the_detokenizer_agrees():
    from aipc_lsp.engines.detokenize import ByteDetokenizer, byte_table

    euro = "€".encode()
    byte_level = _Tokenizer({b"def": 0, b" f": 1, b"<|im_end|>": 2, euro[:2]: 3, euro[2:]: 4},
                            {0: "def", 1: " f", 2: "", 3: "", 4: ""})
    table = byte_table(byte_level)
    assert table == [b"def", b" f", b"", euro[:2], euro[2:]]  # the special token shows as nothing
    detok = ByteDetokenizer(table)
    assert [detok.push([0, 1]), detok.push([2]), detok.push([3]), detok.push([4])] == ["def f", "", "", "€"]
    assert detok.text == "def f€" and detok.count == 5
    # SentencePiece shows "▁the" as " the": not byte-level, the detokenizer model decodes.
    assert byte_table(_Tokenizer({"▁the".encode(): 0, b"x": 1}, {0: " the", 1: "x"})) is None
    # A tokenizer that cleans up text between tokens disagrees on the sample.
    cleaning = _Tokenizer({b"def": 0, b" f": 1}, {0: "def", 1: " f"})
    cleaning.decode = lambda ids: ["def", " f"] if ids and isinstance(ids[0], list) else "deff"
    assert byte_table(cleaning) is None
    assert byte_table(object()) is None  # no get_vocab (an older openvino-genai)


def test_a_special_stop_token_ends_the_text_by_its_id():
    """FIM end markers are special tokens that decoders skip: the stop is found by id."""
    from aipc_lsp.engines.base import GenerationParams, GenerationResult
    from aipc_lsp.engines.textstream import special_stop_ids

    vocab = {"<|endoftext|>": [7], "<|fim_pad|>": [8], "```": [9, 9, 9]}
    ids = special_stop_ids(lambda text: vocab[text], ("<|endoftext|>", "<|fim_pad|>", "```"))
    assert ids == {7, 8}
    result = GenerationResult()
    words = {1: "a", 2: " b", 7: ""}
    stream = TextStream(WindowDetokenizer(lambda toks: "".join(words[t] for t in toks)), GenerationParams(), result,
                        None, ids)
    assert stream.push([1]) and stream.push([2])
    assert stream.push([7]) is False and result.stopped_by_caller and stream.text == "a b" and stream.count == 2


def test_onnxruntime_declares_its_prompt_limit_and_refuses_a_longer_prompt_as_a_request():
    from aipc_lsp.config import OnnxRuntimeSettings
    from aipc_lsp.engines.base import RequestError, prompt_limit_of
    from aipc_lsp.engines.onnxruntime import OnnxRuntimeGenAIEngine

    engine = OnnxRuntimeGenAIEngine("m", options=OnnxRuntimeSettings(max_length=1024))
    assert engine.max_prompt_tokens == prompt_limit_of(1024) == 512  # the rest is the answer's room
    engine._model = object()  # loaded, as far as generate can tell; no generator may be made
    engine._tokenizer = SimpleNamespace(encode=lambda text: list(range(len(text.split()))))
    with pytest.raises(RequestError, match=r"the prompt is 1024 tokens.*onnxruntime.max_length = 1024"):
        engine.generate("w " * 1024, GenerationParams(), threading.Event())
    assert engine._generator is None  # the engine is untouched: its slot stays healthy
