"""The editor's process (initialize's `processId`): when it exits, the server exits too, with its
worker processes, even if nothing closed its stdin (an editor killed while a child of it, or a
wrapper, keeps the pipe open).

LSP: "If the parent process is not alive then the server should exit (see exit notification) its
process." A pid this process cannot see (a client outside the server's container: another PID
namespace) is not watched, rather than taken for dead.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

import psutil

log = logging.getLogger(__name__)
EXIT_STATUS = 1  # as after `exit` without `shutdown`
CHILDREN_GRACE_S = 1.0


def watch(pid: int, on_exit: Callable[[], None]) -> bool:
    """Call `on_exit` from a thread of its own once process `pid` has exited. False when there is
    no such process to watch."""
    try:
        process = psutil.Process(pid)  # remembers its start time: a reused pid is not taken for it
    except (psutil.Error, ValueError, OverflowError) as exc:
        log.warning("not watching the client's process %s: %s", pid, exc)
        return False

    def wait() -> None:
        try:
            process.wait()  # pidfd / kqueue / polling, as the platform allows
        except psutil.Error:
            pass
        on_exit()

    threading.Thread(target=wait, name="aipc-parent-watch", daemon=True).start()
    return True


def kill_children(grace_s: float = CHILDREN_GRACE_S) -> None:
    """Kill every process this one started, and theirs (engine workers, an IR build, pip)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=grace_s)


def exit_now(reason: str) -> None:
    """End the process at once from any thread: the client is gone, so nothing is left to answer
    and no generation is worth finishing."""
    log.warning("%s; exiting", reason)
    kill_children()
    logging.shutdown()
    os._exit(EXIT_STATUS)
