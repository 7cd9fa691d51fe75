"""The OpenVINO IR loaded in place of a GGUF (models/gguf_ir.py): found in the cache by the GGUF's
checksum, made once in a child process whose progress comes back line by line, and, for a GGUF with
tensor types OpenVINO GenAI's reader lacks, made from a copy with those re-encoded as Q8_0
(models/gguf_requant.py, a real small GGUF written with the gguf package)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aipc_lsp.models import convert, gguf_ir, gguf_requant, hashing
from aipc_lsp.models.catalogue import SMOLLM2_135M
from aipc_lsp.models.convert import PrepareError, PrepareOptions

gguf = pytest.importorskip("gguf")
REAL_POPEN = subprocess.Popen  # the tests below replace subprocess.Popen itself
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402


def _cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    return models


def _gguf(folder: Path, name: str = "Tiny-Coder.Q4_K_M.gguf") -> Path:
    path = folder / name
    path.write_bytes(b"GGUF" + b"\0" * 64)
    return path


def _fake_ir(gguf_path: Path, precision: str = "int4", source: str | None = None) -> Path:
    """The folder the GGUF reader's route leaves, with its manifest."""
    src = convert.resolve_source(source or str(gguf_path))
    chosen = convert.Plan(convert.ROUTE_GGUF_READER, PrepareOptions("openvino", precision))
    out = convert.default_output(src, chosen)
    out.mkdir()
    (out / "openvino_model.xml").write_text("<net/>")
    (out / convert.MANIFEST).write_text(json.dumps(convert._manifest(src, chosen.options, chosen)))
    return out


# -- finding it --------------------------------------------------------------------------------

def test_the_cached_ir_is_found_only_for_the_same_gguf(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    path = _gguf(models)
    assert gguf_ir.cached(path) is None
    out = _fake_ir(path, "int8")  # found by its manifest, whatever precision its name says
    assert out.name == "tiny-coder-openvino-int8"
    assert gguf_ir.cached(path) == out
    path.write_bytes(b"GGUF" + b"\1" * 64)  # another file under the same name: not its IR
    assert gguf_ir.cached(path) is None
    assert gguf_ir.cached(_gguf(models, "unknown.gguf")) is None


def test_an_ir_made_with_an_older_re_encoding_is_made_again(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    path = _gguf(models)
    out = _fake_ir(path, "int8")
    assert gguf_ir.cached(path) == out
    manifest = json.loads((out / convert.MANIFEST).read_text())
    del manifest["requant_format"]  # written before Q5_0 was transcoded exactly
    (out / convert.MANIFEST).write_text(json.dumps(manifest))
    assert gguf_ir.cached(path) is None


def test_a_catalogue_models_ir_is_found_without_hashing_it(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    fetched = models / SMOLLM2_135M.filename
    fetched.write_bytes(b"GGUF")
    src = convert.Source("gguf", str(fetched), SMOLLM2_135M.name, SMOLLM2_135M.sha256)
    chosen = convert.Plan(convert.ROUTE_GGUF_READER, PrepareOptions("openvino", "int4"))
    out = convert.default_output(src, chosen)
    out.mkdir()
    (out / "openvino_model.xml").write_text("<net/>")
    (out / convert.MANIFEST).write_text(json.dumps(convert._manifest(src, chosen.options, chosen)))
    monkeypatch.setattr(hashing, "sha256_of", lambda path: pytest.fail("hashed a catalogue model"))
    assert gguf_ir.cached(fetched) == out == models / "smollm2-135m-openvino-int4"


# -- making it in a child process ------------------------------------------------------------------

def _child_printing(lines: list[str], code: int = 0):
    """A stand-in for the build's child process: a real process that prints `lines` and exits."""
    script = "import sys\nfor line in sys.argv[2:]:\n    print(line)\nsys.exit(int(sys.argv[1]))"
    commands = []

    def popen(command, **kwargs):
        commands.append(command)
        return REAL_POPEN([sys.executable, "-c", script, str(code), *lines], **kwargs)

    return popen, commands


def test_a_missing_ir_is_made_in_a_child_process_with_its_progress(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    path = _gguf(models)
    out = _fake_ir(path)
    made = gguf_ir.cached(path)
    (out / convert.MANIFEST).unlink()  # not there yet, as far as cached() can tell
    lines = [gguf_ir.PROGRESS_MARK + json.dumps(["re-encoding Q5_0 tensors as Q8_0 (13/133)", 12]),
             "noise a native library printed", gguf_ir.PROGRESS_MARK + json.dumps(["OpenVINO IR saved", 95]),
             gguf_ir.RESULT_MARK + str(out)]
    popen, commands = _child_printing(lines)
    monkeypatch.setattr(gguf_ir.subprocess, "Popen", popen)
    said = []
    assert gguf_ir.ir_for(path, lambda message, percent: said.append((message, percent))) == out == made
    assert commands == [[sys.executable, "-m", "aipc_lsp.models.gguf_ir", str(path)]]
    assert said == [(f"making an OpenVINO IR of {path.name} (once)", 0),
                    ("re-encoding Q5_0 tensors as Q8_0 (13/133)", 12), ("OpenVINO IR saved", 95)]


def test_a_failed_conversion_loads_the_gguf_itself_with_a_warning(tmp_path, monkeypatch):
    from aipc_lsp.config import Settings
    from aipc_lsp.models.resolve import engine_model

    models = _cache(tmp_path, monkeypatch)
    path = _gguf(models)
    popen, _ = _child_printing(["Traceback ...", gguf_ir.ERROR_MARK + json.dumps("no room\nleft on the device"),
                                "after"], code=1)
    monkeypatch.setattr(gguf_ir.subprocess, "Popen", popen)
    with pytest.raises(PrepareError, match="no room\nleft on the device"):
        gguf_ir.ir_for(path)
    warnings = []
    assert engine_model(path, "openvino", Settings(), warn=warnings.append) == path
    assert "itself" in warnings[0] and "no room" in warnings[0]
    with pytest.raises(PrepareError, match="no room"):  # `models fetch`: no GGUF to fall back on silently
        engine_model(path, "openvino", Settings())
    popen, _ = _child_printing(["Segmentation fault"], code=139)
    monkeypatch.setattr(gguf_ir.subprocess, "Popen", popen)
    with pytest.raises(PrepareError, match="Segmentation fault"):
        gguf_ir.ir_for(path)


def test_a_child_that_hangs_is_stopped(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    path = _gguf(models)
    monkeypatch.setattr(gguf_ir.subprocess, "Popen", lambda command, **kwargs: REAL_POPEN(
        [sys.executable, "-c", "import time; time.sleep(60)"], **kwargs))
    monkeypatch.setattr(gguf_ir, "BUILD_TIMEOUT_S", 0.5)
    with pytest.raises(PrepareError, match="timed out after 0 s|timed out after 1 s"):
        gguf_ir.ir_for(path)


def _fake_builds(monkeypatch) -> list[str]:
    """Converters that only leave an openvino_model.xml; the routes they were asked for."""
    routes = []

    def build(src, chosen, built, work, progress):
        routes.append(chosen.route)
        built.mkdir(parents=True)
        (built / "openvino_model.xml").write_text("<net/>")

    monkeypatch.setattr(convert, "_build", build)
    return routes


def test_the_gguf_readers_route_can_be_forced(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    path = _gguf(models)
    monkeypatch.setattr(convert, "_optimum_available", lambda: True)  # plan() would choose optimum-intel
    routes = _fake_builds(monkeypatch)
    out = convert.prepare(str(path), PrepareOptions("openvino", "int4"), route=convert.ROUTE_GGUF_READER)
    assert routes == [convert.ROUTE_GGUF_READER] and out.name == "tiny-coder-openvino-int4"
    assert gguf_ir.cached(path) == out
    with pytest.raises(PrepareError, match="GGUF files for openvino only"):
        convert.prepare(str(path), PrepareOptions("onnxruntime", "int4"), route=convert.ROUTE_GGUF_READER)


def test_the_build_keeps_clear_of_another_converters_folder_and_replaces_its_own_stale_one(tmp_path, monkeypatch):
    models = _cache(tmp_path, monkeypatch)
    path = _gguf(models)
    monkeypatch.setattr(convert, "gguf_precision", lambda p: "int8")
    monkeypatch.setattr(gguf_ir, "gguf_precision", lambda p: "int8")
    built = _fake_builds(monkeypatch)
    optimum = models / "tiny-coder-openvino-int8"  # what `prepare --precision int8` made through optimum-intel
    optimum.mkdir()
    (optimum / convert.MANIFEST).write_text(json.dumps({"route": convert.ROUTE_OPTIMUM}))
    out = gguf_ir.build(path)
    assert out == models / "tiny-coder-openvino-int8-gguf" and gguf_ir.cached(path) == out
    assert json.loads((optimum / convert.MANIFEST).read_text())["route"] == convert.ROUTE_OPTIMUM  # untouched
    path.write_bytes(b"GGUF" + b"\2" * 64)  # the file changed: its old IR is replaced, not refused
    assert gguf_ir.build(path) == out and gguf_ir.cached(path) == out and len(built) == 2


# -- a GGUF the reader cannot read -------------------------------------------------------------------

ROWS, COLUMNS = 64, 96


def _tiny_gguf(path: Path, extra: tuple = ()) -> dict[str, np.ndarray]:
    """A real GGUF: a Q5_0 matrix (which the reader lacks), a Q4_K-free Q8_0 one, an F32 vector,
    and metadata of several types. Returns the float values each tensor decodes to."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(64)
    writer.add_block_count(1)
    writer.add_string("general.name", "tiny")
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_token_list(["<s>", "a", "b"])
    weights = rng.standard_normal((ROWS, COLUMNS)).astype(np.float32)
    q5 = quantize(weights, T.Q5_0)
    q8 = quantize(weights * 2, T.Q8_0)
    norm = rng.standard_normal(COLUMNS).astype(np.float32)
    writer.add_tensor("blk.0.attn_q.weight", q5, raw_shape=q5.shape, raw_dtype=T.Q5_0)
    writer.add_tensor("blk.0.attn_k.weight", q8, raw_shape=q8.shape, raw_dtype=T.Q8_0)
    writer.add_tensor("blk.0.attn_norm.weight", norm)
    for name, data, qtype in extra:
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"blk.0.attn_q.weight": dequantize(q5, T.Q5_0), "blk.0.attn_k.weight": dequantize(q8, T.Q8_0),
            "blk.0.attn_norm.weight": norm}


def test_tensors_the_reader_lacks_are_re_encoded_as_q8_0_and_the_rest_copied(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_requant, "ROWS_PER_SLICE", 5)  # several slices per matrix
    src, dest = tmp_path / "tiny.Q5_0.gguf", tmp_path / "readable.gguf"
    values = _tiny_gguf(src)
    assert gguf_requant.unreadable(gguf_requant.type_counts(src)) == {"Q5_0": 1}
    assert convert.gguf_precision(src) == "int8"  # what the reader will get
    said = []
    assert gguf_requant.write_readable(src, dest, lambda message, percent: said.append(percent)) == {"Q5_0": 1}
    assert said == [100]
    assert gguf_requant.type_counts(dest) == {"Q8_0": 2, "F32": 1}
    out = gguf.GGUFReader(str(dest))
    old = gguf.GGUFReader(str(src))
    for tensor in out.tensors:
        decoded = dequantize(tensor.data, tensor.tensor_type).reshape(values[tensor.name].shape)
        before = next(t for t in old.tensors if t.name == tensor.name)
        if tensor.name == "blk.0.attn_q.weight":  # transcoded: Q8_0 holds Q5_0's values exactly
            assert np.array_equal(decoded, values[tensor.name])
        else:  # copied byte for byte
            assert bytes(tensor.data) == bytes(before.data)
    for name in ("general.name", "llama.rope.freq_base", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.tokens",
                 "llama.block_count", "general.architecture", "general.alignment"):
        assert out.fields[name].contents() == old.fields[name].contents(), name
    assert out.alignment == 64 and out.tensors[0].data_offset % 64 == 0


def test_a_tensor_that_can_be_neither_read_nor_converted_is_named(tmp_path):
    src = tmp_path / "odd.gguf"
    _tiny_gguf(src, extra=(("blk.0.ids", np.arange(32, dtype=np.int32), T.I32),))
    with pytest.raises(gguf_requant.RequantError, match="blk.0.ids is I32"):
        gguf_requant.write_readable(src, tmp_path / "out.gguf")


def test_the_ir_build_re_encodes_first_and_removes_the_copy(tmp_path, monkeypatch):
    import openvino_genai

    src = tmp_path / "tiny.Q5_0.gguf"
    _tiny_gguf(src)
    seen = {}

    class Reader:
        def __init__(self, path, device, enable_save_ov_model):
            seen["types"] = gguf_requant.type_counts(Path(path))
            _reader_ir(Path(path).parent / "openvino_model.xml")

    monkeypatch.setattr(openvino_genai, "LLMPipeline", Reader)
    steps = []
    out = tmp_path / "ir"
    convert._openvino_from_gguf(src, out, lambda message, percent: steps.append((message, percent)))
    assert seen["types"] == {"Q8_0": 2, "F32": 1}  # the reader got the re-encoded copy
    assert sorted(p.name for p in out.iterdir()) == ["openvino_model.bin", "openvino_model.xml"]  # the copy is gone
    assert "cannot read (1 Q5_0)" in steps[0][0] and [p for _, p in steps] == sorted(p for _, p in steps)
    import openvino

    weights = [op.get_output_element_type(0).get_type_name() for op in openvino.Core().read_model(
        str(out / "openvino_model.xml")).get_ops() if op.get_type_name() == "Constant" and op.get_output_shape(0) == [4, 32]]
    assert weights == ["i8"]  # the reader's Q8_0 (u8 minus 128) stored signed (models/ir_signed.py)


def _reader_ir(xml: Path) -> None:
    """A one-matrix IR as OpenVINO GenAI's GGUF reader writes a Q8_0 matrix: u8 minus a zero point of 128."""
    import openvino
    import openvino.opset13 as ops

    x = ops.parameter([1, 32], openvino.Type.f32, name="x")
    weights = ops.constant(np.arange(128, dtype=np.uint8).reshape(4, 32), dtype=openvino.Type.u8)
    zero = ops.constant(np.full((4, 1), 128, np.uint8), dtype=openvino.Type.u8)
    scale = ops.constant(np.full((4, 1), 0.5, np.float16), dtype=openvino.Type.f16)
    rows = ops.multiply(ops.subtract(ops.convert(weights, "f16"), ops.convert(zero, "f16")), scale)
    out = ops.matmul(x, ops.convert(rows, "f32"), False, True)
    openvino.save_model(openvino.Model([out], [x], "reader"), str(xml), compress_to_fp16=False)


def test_an_ir_whose_weights_cannot_be_rewritten_is_kept_as_the_reader_wrote_it(tmp_path, monkeypatch):
    import openvino_genai

    from aipc_lsp.models import ir_signed

    src = tmp_path / "tiny.Q5_0.gguf"
    _tiny_gguf(src)
    monkeypatch.setattr(openvino_genai, "LLMPipeline",
                        lambda path, device, enable_save_ov_model: _reader_ir(Path(path).parent / "openvino_model.xml"))

    def fails(folder):
        raise OSError("No space left on device")

    monkeypatch.setattr(ir_signed, "signed_weights", fails)
    steps = []
    out = tmp_path / "ir"
    convert._openvino_from_gguf(src, out, lambda message, percent: steps.append((message, percent)))
    assert (out / "openvino_model.xml").is_file()
    assert "stay as the GGUF reader wrote them (OSError: No space left on device)" in steps[-1][0]
