"""`aipc-lsp prepare`: option checks, source recognition, group sizes, and that a failed
conversion leaves nothing behind. The real conversions run in tests/e2e/test_engines.py."""

from __future__ import annotations

import json

import pytest

from aipc_lsp.models import convert
from aipc_lsp.models.convert import PrepareError, PrepareOptions, pick_group_size, prepare, resolve_source, validate


def test_group_size_divides_the_channels():
    assert pick_group_size(576, 1536) == 64  # SmolLM2-135M: 128 would not divide 576
    assert pick_group_size(3072, 8192) == 128  # Phi-3-mini
    assert pick_group_size(4096, 14336) == 128  # Llama-3-8B
    assert pick_group_size(592, 1536) == 16
    with pytest.raises(PrepareError, match="int8"):
        pick_group_size(577)


@pytest.mark.parametrize("options, message", [
    (PrepareOptions("openvino", "bf16"), "not supported for openvino"),
    (PrepareOptions("transformers", "int4"), "not supported for transformers"),
    (PrepareOptions("llamacpp", "int4"), "unknown engine"),
    (PrepareOptions("onnxruntime", "int4", provider="npu"), "execution provider"),
    (PrepareOptions("openvino", "int4", provider="dml"), "--provider applies"),
    (PrepareOptions("onnxruntime", "int4", group_size=64), "--group-size"),
    (PrepareOptions("openvino", "int8", sym=True), "--sym"),
    (PrepareOptions("openvino", "int4", ratio=1.5), "--ratio"),
])
def test_bad_options_are_refused_with_a_reason(options, message):
    with pytest.raises(PrepareError, match=message):
        validate(options)


def test_valid_options_pass():
    validate(PrepareOptions("openvino", "int4", group_size=64, ratio=0.8, sym=True))
    validate(PrepareOptions("onnxruntime", "fp16", provider="dml"))
    validate(PrepareOptions("transformers", "bf16"))


def test_sources_are_recognised(tmp_path):
    gguf = tmp_path / "Tiny-Model.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    found = resolve_source(str(gguf))
    assert (found.kind, found.name) == ("gguf", "tiny-model")
    assert len(found.checksum) == 64
    hf = tmp_path / "Phi-3-mini"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_source(str(hf)).kind == "hf"
    assert resolve_source("microsoft/Phi-3-mini-4k-instruct").kind == "hub"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(PrepareError, match="not a GGUF"):
        resolve_source(str(text))
    with pytest.raises(PrepareError, match="no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(PrepareError, match="neither"):
        resolve_source("./no/such/thing")


def _hf_folder(tmp_path, architecture: str):
    hf = tmp_path / "src"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": [architecture], "hidden_size": 576}))
    return hf


def test_unsupported_architecture_is_named_and_nothing_is_left_behind(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("onnx_ir")
    hf = _hf_folder(tmp_path, "WhisperForConditionalGeneration")
    out = tmp_path / "models" / "whisper-ort"
    with pytest.raises(PrepareError, match="does not support the 'WhisperForConditionalGeneration' architecture"):
        prepare(str(hf), PrepareOptions("onnxruntime", "int4"), out)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no hidden temp folder either


def test_a_failing_converter_leaves_nothing_behind(tmp_path, monkeypatch):
    hf = _hf_folder(tmp_path, "LlamaForCausalLM")
    out = tmp_path / "models" / "broken"

    def half_write(src, options, built, work, progress):
        built.mkdir(parents=True)
        (built / "model.onnx").write_text("half")
        raise PrepareError("converter crashed")

    monkeypatch.setattr(convert, "_build", half_write)
    with pytest.raises(PrepareError, match="crashed"):
        prepare(str(hf), PrepareOptions("onnxruntime", "int4"), out)
    assert list((tmp_path / "models").iterdir()) == []


def test_existing_output_is_kept_unless_forced(tmp_path, monkeypatch):
    hf = _hf_folder(tmp_path, "LlamaForCausalLM")
    out = tmp_path / "out"
    calls = []

    def build(src, options, built, work, progress):
        built.mkdir(parents=True)
        (built / "genai_config.json").write_text("{}")
        calls.append(options)

    monkeypatch.setattr(convert, "_build", build)
    options = PrepareOptions("onnxruntime", "int4")
    assert prepare(str(hf), options, out) == out
    assert prepare(str(hf), options, out) == out  # same source and options: nothing to do
    assert len(calls) == 1
    with pytest.raises(PrepareError, match="--force"):
        prepare(str(hf), PrepareOptions("onnxruntime", "fp16"), out)
    prepare(str(hf), PrepareOptions("onnxruntime", "fp16"), out, force=True)
    assert len(calls) == 2
    assert json.loads((out / convert.MANIFEST).read_text())["options"]["precision"] == "fp16"


def test_openvino_from_a_hf_folder_without_optimum_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "_optimum_available", lambda: False)
    hf = _hf_folder(tmp_path, "LlamaForCausalLM")
    with pytest.raises(PrepareError, match=r"aipc-lsp\[prepare-openvino\]"):
        prepare(str(hf), PrepareOptions("openvino", "int4"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
