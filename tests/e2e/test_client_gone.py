"""A client that disappears mid-generation must not leave the server decoding for nobody."""

from __future__ import annotations

import re
import time

import pytest

from test_protocol_conformance import RawServer

pytestmark = pytest.mark.model
LONG = "PRIMES = [\n    2,\n    3,\n    5,\n    7,\n    11,\n    13,\n"  # extended for hundreds of tokens


def live_jobs(server: RawServer) -> list[dict]:
    return server.call("aipc/status", {})["result"]["liveJobs"]


def running(server: RawServer, kind: str) -> bool:
    return any(job["kind"] == kind and job["slot"] for job in live_jobs(server))


def start(server: RawServer) -> None:
    reply = server.call("initialize", {"processId": None, "rootUri": None, "capabilities": {},
                                       "initializationOptions": {"completion": {"max_tokens": 400, "max_lines": 200,
                                                                              "suggest_ahead": False}}})
    assert "result" in reply
    server.notify("initialized", {})


def ask_at_the_end(server: RawServer, uri: str) -> None:
    lines = LONG.split("\n")
    server.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": len(lines) - 1, "character": 0},
        "context": {"triggerKind": 1}})


def go_away_and_expect_the_end(server: RawServer) -> None:
    """The server ends, and every completion it ran was stopped (its log says how each job ended):
    none decoded to its end for nobody."""
    server.proc.stdin.close()
    server.wait(timeout=60)
    outcomes = re.findall(r"job \d+ \S*completion\S* .*outcome=(\w+)", server.stderr, flags=re.I)
    assert all(outcome == "cancelled" for outcome in outcomes), (outcomes, server.stderr)


def test_a_client_that_goes_away_stops_the_generation_and_the_server():
    """End of input without shutdown/exit (the editor crashed): the running generation is
    stopped and the process ends promptly instead of decoding hundreds of tokens first."""
    server = RawServer()
    try:
        start(server)
        uri = "file:///project/gone.py"
        server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": LONG}})
        deadline = time.monotonic() + 120
        while not server.call("aipc/status", {})["result"]["ready"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ask_at_the_end(server, uri)
        while not running(server, "completion"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        go_away_and_expect_the_end(server)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_a_client_that_goes_away_while_a_completion_waits_behind_a_warm_up_leaves_nothing_running():
    """The request task that would start the queued completion may step while the server shuts
    down: the job must not start then and decode for nobody."""
    server = RawServer()
    try:
        start(server)
        deadline = time.monotonic() + 120
        while not server.call("aipc/status", {})["result"]["ready"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        big = "".join(f"def f{i}(a, b):\n    return a * {i} + b\n\n" for i in range(120))
        server.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///project/big.py", "languageId": "python",
                                                                "version": 1, "text": big}})
        while not running(server, "warm"):
            assert time.monotonic() < deadline, "the warm-up never started"
            time.sleep(0.01)
        uri = "file:///project/gone.py"
        server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": LONG}})
        ask_at_the_end(server, uri)
        go_away_and_expect_the_end(server)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
