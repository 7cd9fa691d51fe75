"""An inter-process lock for work on the model cache (fetching a model, its parts).

A plain O_EXCL lock file works the same on Windows and POSIX filesystems. The holder refreshes
its mtime so waiters can tell a dead holder from a slow one. Even if two processes ever both
held it, each works in its own temp dir and every final step is an atomic os.replace, so the
worst case is a duplicate download.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

# Module-level so tests can shrink them.
LOCK_TIMEOUT = 3900.0  # must outlast a slow but healthy pip run by another process
LOCK_STALE_AFTER = 120.0  # no heartbeat for this long => holder died
LOCK_HEARTBEAT = 10.0


class LockError(Exception):
    """The lock could not be taken; the message says why."""


class FileLock:
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
                raise LockError(f"cannot create lock file {self.path}: {exc}") from exc
            age = self._age()
            if age is not None and age > LOCK_STALE_AFTER:
                logger.warning("removing stale lock %s (%.0f s old)", self.path, age)
                try:
                    self.path.unlink()
                except OSError:
                    pass
                continue
            if time.monotonic() > deadline:
                raise LockError(f"timed out waiting for another aipc-lsp model fetch (lock file {self.path})")
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

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
