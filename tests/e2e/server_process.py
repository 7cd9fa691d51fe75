"""The real server process for the reliability and security tests: RawServer (framed JSON-RPC over
its pipes, every byte it writes checked) started with an environment of the test's, with answers
collected in any order, and the processes it runs seen through psutil."""

from __future__ import annotations

import os
import queue
import re
import time

import psutil
import pytest

import test_protocol_conformance as conformance
from test_protocol_conformance import RawServer

DEBUG_ENV = {"AIPC_LSP_DEBUG_REQUESTS": "1"}  # aipc/debugDocument (features/debug.py)
ENCODINGS = ("utf-8", "utf-16", "utf-32")


class ServerProcess(RawServer):
    def __init__(self, *args: str, env: dict | None = None, prefix: list[str] = ()):
        """`prefix`: a command the server runs under (e.g. `unshare -rn`, no network)."""
        with pytest.MonkeyPatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            patch.setattr(conformance, "SERVER", [*prefix, *conformance.SERVER])
            super().__init__(*args)

    def start(self, options: dict | None = None, *, encoding: str | None = None, process_id: int | None = None,
              initialized: bool = True) -> dict:
        """initialize (with `options` as initializationOptions) and initialized; the result."""
        capabilities = {"general": {"positionEncodings": [encoding]}} if encoding else {}
        reply = self.call("initialize", {"processId": process_id, "rootUri": None, "capabilities": capabilities,
                                         "initializationOptions": options or {}}, )
        assert "result" in reply, reply
        if initialized:
            self.notify("initialized", {})
        return reply["result"]

    def call(self, method: str, params=None, msg_id=None, timeout: float = conformance.TIMEOUT) -> dict:
        return self.response(self.request(method, params, msg_id), timeout)

    def wait_ready(self, timeout: float = 240) -> None:
        """Until the model is loaded (the first start may fetch it and make its IR)."""
        deadline = time.monotonic() + timeout
        while not (state := self.call("aipc/status", {})["result"])["ready"]:
            assert not state["error"] and time.monotonic() < deadline, state
            time.sleep(0.2)

    def responses(self, ids, timeout: float) -> dict:
        """The responses to `ids`, in whatever order they come; notifications seen meanwhile are kept."""
        wanted, found = set(ids), {}
        deadline = time.monotonic() + timeout
        while wanted - found.keys():
            try:
                message = self.inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                missing = sorted(wanted - found.keys(), key=str)
                raise AssertionError(f"no response to {missing} within {timeout}s; stderr:\n{self.stderr[-4000:]}") from None
            if "method" in message:
                self.notifications.append(message)
            elif message.get("id") in wanted:
                found[message["id"]] = message
            else:
                raise AssertionError(f"a response nobody asked for: {message}")
        return found

    def errors_reported(self) -> list[str]:
        """What pygls told the user of exceptions in the server's handlers ("Error in server: ...")."""
        return [m["params"]["message"] for m in self.notifications
                if m.get("method") == "window/showMessage" and "Error in server" in m["params"].get("message", "")]

    def unexpected_tracebacks(self) -> list[str]:
        """Tracebacks in the log but those of a request answered with the error it raised (pygls logs
        each JsonRpcException a handler raises, e.g. -32803 for a chat without a model)."""
        blocks = re.findall(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*.*", self.stderr)
        return [block for block in blocks if "pygls.exceptions.JsonRpc" not in block]

    def end_cleanly(self) -> None:
        """End the session as a client does: no handler error was shown, the exit status is 0 and
        stdout held nothing but protocol."""
        assert self.errors_reported() == []
        assert self.end() == 0, self.stderr[-4000:]
        self.check_output()

    def document(self, uri: str) -> dict | None:
        """The server's copy of an open document (aipc/debugDocument: needs DEBUG_ENV)."""
        reply = self.call("aipc/debugDocument", {"uri": uri})
        assert "result" in reply, reply
        return reply["result"]

    def process_tree(self) -> list[psutil.Process]:
        """The server and every process under it."""
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def inet_sockets(self) -> list[str]:
        """Internet sockets (TCP, UDP, raw; v4 and v6; any state) of the server and every process under
        it. Read from each process's own /proc/PID/net tables, so a server in a network namespace of its
        own is seen too (psutil reads the caller's); psutil's view where there is no /proc."""
        found = []
        for proc in self.process_tree():
            try:
                if not os.path.isdir(f"/proc/{proc.pid}/net"):
                    found += [f"{proc.pid}: {c}" for c in proc.net_connections(kind="inet")]
                    continue
                found += [f"{proc.pid} {' '.join(proc.cmdline())[:60]}: {s}" for s in _proc_inet_sockets(proc.pid)]
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                pass
        return found


def _proc_inet_sockets(pid: int) -> list[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        found += [f"{table} {row.split()[1]} -> {row.split()[2]}" for row in rows if row.split()[9] in inodes]
    return found
