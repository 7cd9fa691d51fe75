"""A file's sha256, the one way every part of models/ computes it."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of the file at `path`, read through one reused buffer (the server's process
    checksums a GGUF it loads: no megabyte of garbage per block)."""
    digest = hashlib.sha256()
    block = bytearray(BLOCK)
    view = memoryview(block)
    with Path(path).open("rb") as f:
        while n := f.readinto(block):
            digest.update(view[:n])
    return digest.hexdigest()
