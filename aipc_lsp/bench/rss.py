"""Peak resident memory of another process (the server and its worker, a local --remote peer),
read from Linux's /proc; None elsewhere."""

from __future__ import annotations

import os
from pathlib import Path


def peak_rss_mb(pid: int) -> tuple[float | None, list[float]]:
    """Peak resident memory of `pid` and its descendants (VmHWM), summed (the sum of the peaks
    bounds the peak of the sum from above), and each one's, `pid`'s first."""
    parts = []
    for proc in process_tree(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    parts.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return (sum(parts) if parts else None), parts


def process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        proc = todo.pop()
        found.append(proc)
        for task in Path(f"/proc/{proc}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except (OSError, ValueError):
                pass
    return found


LISTEN = "0A"  # the TCP state in /proc/net/tcp


def listening_pid(port: int) -> int | None:
    """The process listening on TCP `port` of this machine, when /proc shows it (Linux, and a
    process whose descriptors this user may read); else None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(fd_dir.parent.name)
        except OSError:
            continue
    return None
