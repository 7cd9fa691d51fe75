"""`aipc-lsp prepare`: option checks, source recognition, group sizes, and that a failed
conversion leaves nothing behind. The real conversions run in tests/e2e/test_engines.py."""

from __future__ import annotations

import json

import pytest

from aipc_lsp.models import convert
from aipc_lsp.models.catalogue import DEFAULT_MODEL, QWEN_CODER_15B, SMOLLM2_135M
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


# ---------------------------------------------------------------- OpenVINO through optimum-intel

def _gguf(path, embedding: int = 576, feed_forward: int | list[int] = 1536, q4: bool = True):
    """A GGUF with the metadata prepare reads and one tensor of the given type (no real weights)."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_embedding_length(embedding)
    writer.add_feed_forward_length(feed_forward)
    if q4:  # 32 weights in one Q4_1 block: 2 + 2 bytes of scale and minimum, 16 bytes of nibbles
        writer.add_tensor("blk.0.ffn_up.weight", np.zeros((1, 20), dtype=np.uint8), raw_dtype=GGMLQuantizationType.Q4_1)
    else:
        writer.add_tensor("blk.0.ffn_up.weight", np.zeros((1, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _llama_folder(tmp_path, hidden: int = 576, intermediate: int = 1536, name: str = "SmolLM2-135M"):
    hf = tmp_path / name
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                "hidden_size": hidden, "intermediate_size": intermediate}))
    return hf


def test_group_size_comes_from_the_gguf_metadata_and_the_hf_config(tmp_path):
    assert convert.gguf_channels(_gguf(tmp_path / "a.gguf")) == (576, 1536)
    assert convert.gguf_channels(_gguf(tmp_path / "b.gguf", 3072, [8192, 8192])) == (3072, 8192, 8192)
    assert convert.hf_channels(_llama_folder(tmp_path)) == (576, 1536)
    nested = tmp_path / "vlm"
    nested.mkdir()
    (nested / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 4096, "intermediate_size": 14336}}))
    assert convert.hf_channels(nested) == (4096, 14336)


@pytest.mark.parametrize("asked, channels, used", [
    (None, (576, 1536), 64),  # SmolLM2-135M: 128 would not divide 576
    (None, (3072, 8192), 128),  # Phi-3-mini
    (None, (4096, 14336), 128),  # Llama-3-8B
    (None, (), 128),  # sizes unknown: optimum-intel's own default
    (32, (576, 1536), 32),
    (-1, (576, 1536), -1),  # per channel
])
def test_int4_group_size_is_the_users_or_the_largest_that_divides(asked, channels, used):
    assert convert._int4_group(PrepareOptions("openvino", "int4", group_size=asked), channels) == used


def test_a_group_size_that_does_not_divide_the_model_is_refused_with_the_one_that_would():
    with pytest.raises(PrepareError, match=r"--group-size 128 does not divide .* 576; leave --group-size out to use 64"):
        convert._int4_group(PrepareOptions("openvino", "int4", group_size=128), (576, 1536))
    with pytest.raises(PrepareError, match=r"--group-size -1 \(per channel\) or --precision int8"):
        convert._int4_group(PrepareOptions("openvino", "int4", group_size=16), (577, 1536))
    with pytest.raises(PrepareError, match="--group-size must be a positive"):
        validate(PrepareOptions("openvino", "int4", group_size=0))


def test_routes_with_and_without_optimum(tmp_path, monkeypatch):
    gguf = resolve_source(str(_gguf(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")))
    hf = resolve_source(str(_llama_folder(tmp_path)))
    monkeypatch.setattr(convert, "_optimum_available", lambda: False)
    # Without optimum-intel: the GGUF at its own precision through OpenVINO GenAI's reader, nothing else.
    chosen = convert.plan(gguf, PrepareOptions("openvino", "int4"))
    assert chosen.route == convert.ROUTE_GGUF_READER and chosen.options.group_size is None
    assert convert.default_output(gguf, chosen).name == "smollm2-135m-instruct-openvino-int4"
    for options in (PrepareOptions("openvino", "int8"), PrepareOptions("openvino", "int4", sym=True)):
        with pytest.raises(PrepareError, match=r"holds int4 weights.*aipc-lsp\[prepare-openvino\]"):
            convert.plan(gguf, options)
    with pytest.raises(PrepareError, match=r"optimum-intel, which is not installed.*aipc-lsp\[prepare-openvino\]"):
        convert.plan(hf, PrepareOptions("openvino", "fp16"))
    # With it: everything through optimum-intel, the int4 parameters filled in and named in the folder.
    monkeypatch.setattr(convert, "_optimum_available", lambda: True)
    chosen = convert.plan(gguf, PrepareOptions("openvino", "int4"))
    assert chosen.route == convert.ROUTE_OPTIMUM
    assert (chosen.options.group_size, chosen.options.ratio, chosen.options.sym) == (64, 1.0, False)
    assert convert.default_output(gguf, chosen).name == "smollm2-135m-instruct-openvino-int4-g64"
    chosen = convert.plan(hf, PrepareOptions("openvino", "int4", group_size=32, ratio=0.8, sym=True))
    assert convert.default_output(hf, chosen).name == "smollm2-135m-openvino-int4-g32-sym-r0.8"
    chosen = convert.plan(hf, PrepareOptions("openvino", "int8"))
    assert (chosen.route, convert.default_output(hf, chosen).name) == (convert.ROUTE_OPTIMUM, "smollm2-135m-openvino-int8")
    with pytest.raises(PrepareError, match="does not divide"):
        convert.plan(hf, PrepareOptions("openvino", "int4", group_size=128))


def test_an_optimum_that_does_not_import_is_reported_with_the_fix(tmp_path, monkeypatch):
    """Installed but broken (a torchvision built for another torch fails like this): the reason and the extra."""
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.startswith("optimum"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(convert, "_optimum_available", lambda: True)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    hf = _llama_folder(tmp_path)
    with pytest.raises(PrepareError, match=r"does not import \(RuntimeError: operator torchvision::nms.*"
                                           r"aipc-lsp\[prepare-openvino\].*torch/torchvision pair"):
        prepare(str(hf), PrepareOptions("openvino", "int8"), tmp_path / "models" / "out")
    assert list((tmp_path / "models").iterdir()) == []


def test_a_hub_id_without_a_hub_fails_at_once_and_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach a hub from a test, even where one is reachable
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # in case it was imported before the variable was set
    monkeypatch.setattr(convert, "_optimum_available", lambda: True)
    with pytest.raises(PrepareError, match=r"could not download microsoft/Phi-3-mini-4k-instruct .*pass the folder"):
        prepare("microsoft/Phi-3-mini-4k-instruct", PrepareOptions("openvino", "int4"))
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no download folder left behind


def test_a_hub_id_without_optimum_is_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(convert, "_optimum_available", lambda: False)
    monkeypatch.setattr(convert, "_hub_snapshot", lambda *a: pytest.fail("downloaded anyway"))
    with pytest.raises(PrepareError, match=r"optimum-intel, which is not installed.*aipc-lsp\[prepare-openvino\]"):
        prepare("meta-llama/Meta-Llama-3-8B-Instruct", PrepareOptions("openvino", "int4", sym=True))


def test_manifests_from_before_routes_were_recorded_still_count(tmp_path, monkeypatch):
    gguf_path = _gguf(tmp_path / "Tiny.Q4_1.gguf")
    monkeypatch.setattr(convert, "_optimum_available", lambda: False)
    out = tmp_path / "out"
    out.mkdir()
    src = resolve_source(str(gguf_path))
    options = PrepareOptions("openvino", "int4")
    old = {"source": src.location, "source_checksum": src.checksum, "options": convert.asdict(options), "format": 1}
    (out / convert.MANIFEST).write_text(json.dumps(old))
    assert prepare(str(gguf_path), options, out) == out  # nothing rebuilt
    # The same source and options through another converter is not the same build.
    (out / convert.MANIFEST).write_text(json.dumps({**old, "route": convert.ROUTE_GGUF_READER}))
    assert prepare(str(gguf_path), options, out) == out
    monkeypatch.setattr(convert, "_optimum_available", lambda: True)
    with pytest.raises(PrepareError, match="another converter"):
        prepare(str(gguf_path), options, out)


def test_a_byte_level_gguf_tokenizer_gets_its_decoder_and_eos_back():
    """transformers 5.5 (the newest optimum-intel 2.2 allows) converts a GPT-2 style GGUF vocabulary
    with a decoder chain openvino-tokenizers cannot convert and BOS as EOS; prepare repairs both."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "a": 3, "Ġ": 4, "Ġa": 5}
    backend = Tokenizer(models.BPE(vocab, [("Ġ", "a")], unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " "),
                                         decoders.ByteLevel()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_start|>")

    class Config:
        eos_token_id, bos_token_id = 2, 1

    convert.repair_gguf_tokenizer(tokenizer, Config)
    assert json.loads(tokenizer.backend_tokenizer.to_str())["decoder"]["type"] == "ByteLevel"
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_start|>")
    assert tokenizer.decode(tokenizer("a a", add_special_tokens=False)["input_ids"]) == "a a"


@pytest.mark.parametrize("name, spec", [("default", DEFAULT_MODEL), ("qwen2.5-coder-1.5b", QWEN_CODER_15B),
                                        ("smollm2-135m-instruct", SMOLLM2_135M)])
def test_a_catalogue_name_is_fetched_and_prepared_under_its_name(tmp_path, monkeypatch, name, spec):
    from aipc_lsp.models import fetch as fetch_mod

    def fetch(asked, progress):
        progress("downloading", 0)
        progress("ready", 100)
        return tmp_path / asked.filename

    monkeypatch.setattr(fetch_mod, "fetch", fetch)
    said = []
    src = resolve_source(name, lambda message, percent: said.append(percent))
    assert (src.kind, src.location, src.name, src.checksum) == ("gguf", str(tmp_path / spec.filename), spec.name,
                                                                spec.sha256)
    assert said == [0, 5]  # fetching is the first 5% of preparing
    chosen = convert.Plan(convert.ROUTE_ORT, PrepareOptions("onnxruntime", "int4"))
    assert convert.default_output(src, chosen).name == f"{spec.name}-onnxruntime-int4"
