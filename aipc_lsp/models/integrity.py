"""Is a model file whole? Found here, in milliseconds and before an engine reads it: a GGUF cut short
(an interrupted download or copy), a file with a model's name that holds something else, an
OpenVINO IR whose weights file is shorter than its graph says. Engines meet these deep in native
code, where the best case is an error about a tensor and the worst a crash of the worker.

A GGUF's header lists every tensor with its type, shape and offset: the file must hold the last
tensor's bytes. An IR's XML gives each constant's offset and size in the .bin.
"""

from __future__ import annotations

import mmap
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Scalar value types of GGUF metadata: their sizes (8 = string, 9 = array are read apart).
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_COUNT = 1 << 24  # more tensors or metadata entries than any model has: not a GGUF


class DamagedModel(ValueError):
    """The file is not the whole model it claims to be; the message says what is wrong."""


class _Reader:
    def __init__(self, data, name: str):
        self.data, self.pos, self.name = data, 0, name

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise DamagedModel(f"{self.name} is cut short inside its header ({len(self.data)} bytes)")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def count(self) -> int:
        n = self.take("<Q")
        if n > _MAX_COUNT:
            raise DamagedModel(f"{self.name} is not a valid GGUF file (a count of {n} in its header)")
        return n

    def skip(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise DamagedModel(f"{self.name} is cut short inside its header ({len(self.data)} bytes)")
        self.pos += size

    def string(self) -> bytes:
        n = self.take("<Q")
        self.skip(n)
        return bytes(self.data[self.pos - n:self.pos])

    def value(self, kind: int):
        if kind in _SCALAR:
            fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[_SCALAR[kind]]
            return self.take(fmt)
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.take("<I"), self.count()
            if item in _SCALAR:
                self.skip(_SCALAR[item] * n)
            else:
                for _ in range(n):
                    self.value(item)
            return None
        raise DamagedModel(f"{self.name} is not a valid GGUF file (metadata of unknown type {kind})")


def _tensor_bytes(kind: int, dims: list[int], name: str) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise DamagedModel(f"{name} is not a valid GGUF file (a tensor of unknown type {kind})") from None
    elements = 1
    for d in dims:
        elements *= d
    return elements // block * size


def check_gguf(path: str | Path) -> None:
    """Raise DamagedModel unless `path` is a GGUF file holding every tensor its header lists."""
    path = Path(path)
    name = path.name
    try:
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                f.seek(0)
                raise DamagedModel(f"{name} is not a GGUF model file (it starts with {f.read(8)!r})")
            size = path.stat().st_size
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _check_gguf_layout(_Reader(data, name), size)
    except OSError as exc:
        raise DamagedModel(f"cannot read {name}: {exc}") from exc


def _check_gguf_layout(reader: _Reader, size: int) -> None:
    name = reader.name
    reader.skip(4)
    version = reader.take("<I")
    if version < 2:
        return  # GGUF v1 (32-bit counts): too old for today's engines, which say so themselves
    tensors, entries = reader.count(), reader.count()
    alignment = DEFAULT_ALIGNMENT
    for _ in range(entries):
        key = reader.string()
        kind = reader.take("<I")
        value = reader.value(kind)
        if key == b"general.alignment" and isinstance(value, int) and value > 0:
            alignment = value
    end = 0
    for _ in range(tensors):
        tensor = reader.string().decode("utf-8", "replace")
        n_dims = reader.take("<I")
        if n_dims > 8:
            raise DamagedModel(f"{name} is not a valid GGUF file (tensor {tensor} has {n_dims} dimensions)")
        dims = [reader.take("<Q") for _ in range(n_dims)]
        kind, offset = reader.take("<I"), reader.take("<Q")
        end = max(end, offset + _tensor_bytes(kind, dims, name))
    data_start = -(-reader.pos // alignment) * alignment
    if tensors and data_start + end > size:
        raise DamagedModel(f"{name} is cut short: its tensors need {data_start + end:,} bytes, the file has {size:,} "
                           f"(an interrupted download or copy)")


def check_openvino_ir(folder: str | Path) -> None:
    """Raise DamagedModel unless the IR in `folder` has a weights file holding every constant its graph names."""
    folder = Path(folder)
    xml, weights = folder / "openvino_model.xml", folder / "openvino_model.bin"
    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise DamagedModel(f"the OpenVINO model {xml} cannot be read: {exc}") from exc
    end = 0
    for data in root.iter("data"):
        if "offset" in data.attrib and "size" in data.attrib:
            try:
                end = max(end, int(data.attrib["offset"]) + int(data.attrib["size"]))
            except ValueError:
                raise DamagedModel(f"the OpenVINO model {xml} is not valid (a constant at {data.attrib})") from None
    try:
        size = weights.stat().st_size if end else 0
    except OSError as exc:
        raise DamagedModel(f"the OpenVINO model's weights {weights} cannot be read: {exc}") from exc
    if end > size:
        raise DamagedModel(f"the OpenVINO model's weights {weights} are cut short: its graph needs {end:,} bytes, "
                           f"the file has {size:,}")
