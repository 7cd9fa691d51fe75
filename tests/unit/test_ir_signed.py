"""Symmetric u8 weights with one zero point rewritten as i8 (models/ir_signed.py): a small real IR
with the GGUF reader's decompression pattern, compiled on the CPU before and after."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
import openvino.opset13 as ops  # noqa: E402

from aipc_lsp.models.ir_signed import MODEL_XML, signed_weights  # noqa: E402

ROWS, GROUPS, GROUP = 8, 2, 32


def _decompressed(rng, zero_points: np.ndarray, low: int = 0, high: int = 256):
    """The reader's pattern: (Convert(u8 weights) - Convert(u8 zero points)) * scale -> f32 rows."""
    weights = ops.constant(rng.integers(low, high, (ROWS, GROUPS, GROUP)).astype(np.uint8), dtype=ov.Type.u8)
    zero = ops.constant(zero_points.astype(np.uint8), dtype=ov.Type.u8)
    scale = ops.constant(rng.uniform(0.01, 0.02, (ROWS, GROUPS, 1)).astype(np.float16), dtype=ov.Type.f16)
    values = ops.multiply(ops.subtract(ops.convert(weights, "f16"), ops.convert(zero, "f16")), scale)
    rows = ops.reshape(values, ops.constant(np.array([ROWS, GROUPS * GROUP], np.int64)), False)
    return ops.convert(rows, "f32")


def _model(folder):
    rng = np.random.default_rng(0)
    x = ops.parameter([1, GROUPS * GROUP], ov.Type.f32, name="x")
    symmetric = _decompressed(rng, np.full((ROWS, GROUPS, 1), 128))           # Q8_0 as the reader writes it
    six_bit = _decompressed(rng, np.full((ROWS, GROUPS, 1), 32), high=64)     # Q6_K
    minimums = _decompressed(rng, rng.integers(0, 16, (ROWS, GROUPS, 1)))     # zero points that differ
    out = ops.concat([ops.matmul(x, w, False, True) for w in (symmetric, six_bit, minimums)], -1)
    model = ov.Model([out], [x], "tiny")
    folder.mkdir()
    ov.save_model(model, str(folder / MODEL_XML), compress_to_fp16=False)


def _infer(folder, x):
    compiled = ov.Core().compile_model(str(folder / MODEL_XML), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled({"x": x})[0]


def _types(folder):
    model = ov.Core().read_model(str(folder / MODEL_XML))
    return sorted(op.get_output_element_type(0).get_type_name() for op in model.get_ops()
                  if op.get_type_name() == "Constant" and op.get_output_size() and op.get_output_shape(0) == [ROWS, GROUPS, GROUP])


def test_one_zero_point_becomes_signed_bytes_with_the_same_products(tmp_path):
    folder = tmp_path / "ir"
    _model(folder)
    x = np.random.default_rng(1).standard_normal((1, GROUPS * GROUP)).astype(np.float32)
    before = _infer(folder, x)
    assert _types(folder) == ["u8", "u8", "u8"]

    assert signed_weights(folder) == 2
    assert _types(folder) == ["i8", "i8", "u8"]  # differing zero points are left as they were
    np.testing.assert_allclose(_infer(folder, x), before, rtol=1e-6, atol=1e-6)
    assert not list(folder.glob(".signed-*"))  # staged files replaced the model's own

    assert signed_weights(folder) == 0  # nothing left to rewrite: the files are not written again


def test_a_failed_rewrite_leaves_the_ir_as_it_was(tmp_path, monkeypatch):
    folder = tmp_path / "ir"
    _model(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk(*args, **kwargs):
        (folder / ".signed-openvino_model.bin").write_bytes(b"half")  # what a full disk leaves
        raise OSError("No space left on device")

    monkeypatch.setattr(ov, "save_model", full_disk)
    with pytest.raises(OSError):
        signed_weights(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
