"""A GGUF that OpenVINO GenAI's GGUF reader can read, from one it cannot: tensors of the types the
reader lacks (e.g. Q5_0, which Qwen2.5-Coder-0.5B's GGUF is mostly made of: "gguf_tensor_to_f16
failed") are written again as Q8_0, everything else is copied as it is.

Q5_0 is transcoded exactly: a Q5_0 block is 32 five-bit integers in [-16, 15] times one f16 scale,
and a Q8_0 block 32 eight-bit integers times one f16 scale, so the same scale and the same integers
make a Q8_0 block with the very values llama.cpp computes with. (Dequantising and quantising again
moved every value by up to half a Q8_0 step; on the 0.5B that changed 12 of 31 eval answers and cost
3 points of exact match against the exact values: docs/QUALITY.md.) Other types are dequantised and
quantised again.

Only the gguf package (numpy) is needed, no torch. Q8_0 because it is near-lossless for weights
that held 5 bits or fewer, and because re-encoding as Q4_1 measured no faster here (18.5 against
21 tokens/s for the 0.5B through LLMPipeline) while it loses precision. The 0.5B: ~20 s, 491 MB in,
637 MB out. Tensors are converted a slice of rows at a time and written one by one, so memory stays
at about one tensor's output.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

# What OpenVINO GenAI 2026.4's GGUF reader decodes (its gguf_tensor_to_f16 and quantised paths).
READER_TYPES = frozenset({"F32", "F16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"})
TARGET = "Q8_0"
FLOAT_TARGET = "F16"  # for matrices whose rows are no whole number of Q8_0 blocks
ROWS_PER_SLICE = 4096  # rows dequantised at once: bounded float32 memory even for the embeddings
# Recorded with every IR the GGUF reader's route makes; an IR of an older format is made again.
# 1: Q5_0 re-quantised; 2: Q5_0 transcoded exactly; 3: weights of one zero point stored signed
# (ir_signed.py: the same values, faster products).
REQUANT_FORMAT = 3

Progress = Callable[[str, "int | None"], None]


class RequantError(RuntimeError):
    """A tensor can neither be read by the GGUF reader nor converted for it."""


@functools.lru_cache(maxsize=1)
def _reader(path: str, size: int, mtime_ns: int):
    from gguf import GGUFReader

    return GGUFReader(path)


def reader(path: Path):
    """The gguf package's reader of `path`, kept for the next question about the same file: it parses
    every metadata item into arrays of its own, ~10-20 s for a 150k-token vocabulary on a busy 2-core CPU."""
    st = Path(path).stat()
    return _reader(str(path), st.st_size, st.st_mtime_ns)


def forget() -> None:
    """Drop the kept reader (its parsed metadata), e.g. before loading the model."""
    _reader.cache_clear()


def type_counts(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type the file holds (e.g. {"Q4_1": 210, "F32": 61})."""
    counts: dict[str, int] = {}
    for tensor in reader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def _target(type_name: str, row_length: int) -> str:
    if type_name in READER_TYPES:
        return type_name
    return TARGET if row_length % 32 == 0 else FLOAT_TARGET


def readable_counts(counts: dict[str, int]) -> dict[str, int]:
    """The type counts after conversion (block-quantised rows are whole Q8_0 blocks: they all become Q8_0)."""
    out: dict[str, int] = {}
    for name, n in counts.items():
        key = name if name in READER_TYPES else TARGET
        out[key] = out.get(key, 0) + n
    return out


def unreadable(counts: dict[str, int]) -> dict[str, int]:
    return {name: n for name, n in counts.items() if name not in READER_TYPES}


def _copy_metadata(reader, writer) -> None:
    """Every key/value field with its own types; the writer sets the GGUF.* header fields and the
    architecture itself, and the data alignment must be the writer's own setting, not just a key."""
    from gguf import GGUFValueType

    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.alignment":
            writer.add_custom_alignment(int(field.contents()))
            continue
        value_type = field.types[0]
        if value_type == GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), value_type, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), value_type)


def _element_shape(tensor) -> tuple[int, ...]:
    """The tensor's shape in values (the reader gives a block-quantised tensor as rows of bytes)."""
    import numpy as np
    from gguf.quants import quant_shape_from_byte_shape

    data = tensor.data
    return tuple(quant_shape_from_byte_shape(data.shape, tensor.tensor_type) if data.dtype == np.uint8 else data.shape)


# Bytes per 32-value Q5_0 block: f16 scale, 4 bytes of high bits, 16 bytes of low nibbles (Q8_0: the scale, 32 int8).
Q5_0_BLOCK = 22


def q5_0_as_q8_0(blocks: "np.ndarray") -> "np.ndarray":  # noqa: F821
    """Q5_0 rows of bytes as Q8_0 rows holding the same values (ggml's dequantize_row_q5_0 layout:
    value j < 16 is low nibble j with high bit j; value 16 + j is high nibble j with high bit 16 + j)."""
    import numpy as np

    rows = blocks.shape[0]
    b = np.ascontiguousarray(blocks).reshape(-1, Q5_0_BLOCK)
    high_bits = b[:, 2:6].copy().view("<u4")  # (blocks, 1)
    nibbles = b[:, 6:]
    j = np.arange(16, dtype=np.uint32)
    low = (nibbles & 0x0F) | (((high_bits >> j) & 1).astype(np.uint8) << 4)
    high = (nibbles >> 4) | (((high_bits >> (j + 16)) & 1).astype(np.uint8) << 4)
    values = (np.concatenate([low, high], axis=1).astype(np.int16) - 16).astype(np.int8)
    return np.concatenate([b[:, :2], values.view(np.uint8)], axis=1).reshape(rows, -1)


def _converted(tensor, target) -> "np.ndarray":  # noqa: F821
    """The tensor's data re-encoded as `target`, a slice of rows at a time."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize

    source = GGMLQuantizationType[tensor.tensor_type.name]
    shape = _element_shape(tensor)
    rows = tensor.data.reshape(-1, tensor.data.shape[-1])
    if source == GGMLQuantizationType.Q5_0 and target == GGMLQuantizationType.Q8_0:
        out = q5_0_as_q8_0(rows)
        return out.reshape(*shape[:-1], out.shape[-1])
    if target == GGMLQuantizationType.F16:
        out = np.empty((rows.shape[0], shape[-1]), dtype=np.float16)
    else:
        out = np.empty((rows.shape[0], quant_shape_to_byte_shape((shape[-1],), target)[-1]), dtype=np.uint8)
    for start in range(0, rows.shape[0], ROWS_PER_SLICE):
        values = dequantize(rows[start:start + ROWS_PER_SLICE], source)
        out[start:start + ROWS_PER_SLICE] = (values.astype(np.float16) if target == GGMLQuantizationType.F16
                                             else quantize(values, target))
    return out.reshape(*shape[:-1], out.shape[-1])


def write_readable(src: Path, dest: Path, progress: Progress | None = None) -> dict[str, int]:
    """Write `dest`: `src` with every tensor the GGUF reader lacks re-encoded. Returns how many
    tensors of each source type were converted. Raises RequantError."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quant_shape_to_byte_shape

    source = reader(src)
    writer = GGUFWriter(str(dest), str(source.fields["general.architecture"].contents()))
    _copy_metadata(source, writer)
    plan = []
    for tensor in source.tensors:
        name = tensor.tensor_type.name
        data = tensor.data
        shape = _element_shape(tensor)
        target = GGMLQuantizationType[_target(name, int(shape[-1]))]
        if name in READER_TYPES:
            writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, raw_dtype=tensor.tensor_type)
        elif target == GGMLQuantizationType.F16:
            writer.add_tensor_info(tensor.name, shape, np.dtype(np.float16), int(np.prod(shape)) * 2,
                                   raw_dtype=target)
        else:
            byte_shape = quant_shape_to_byte_shape(shape, target)
            writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                   raw_dtype=target)
        plan.append((tensor, None if name in READER_TYPES else target))
    converted: dict[str, int] = {}
    todo = sum(1 for _, target in plan if target is not None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor, target in plan:
        if target is None:
            writer.write_tensor_data(tensor.data)
            continue
        try:
            writer.write_tensor_data(_converted(tensor, target))
        except (NotImplementedError, ValueError, KeyError) as exc:
            writer.close()
            raise RequantError(f"tensor {tensor.name} is {tensor.tensor_type.name}, which OpenVINO GenAI's GGUF "
                               f"reader cannot read and the gguf package cannot convert: {exc}") from exc
        converted[tensor.tensor_type.name] = converted.get(tensor.tensor_type.name, 0) + 1
        done = sum(converted.values())
        if progress is not None and (done == todo or done % max(1, todo // 10) == 0):
            progress(f"re-encoding {', '.join(sorted(converted))} tensors as {TARGET} ({done}/{todo})", 100 * done // todo)
    writer.close()
    return converted
