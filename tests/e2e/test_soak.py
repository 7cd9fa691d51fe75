"""Soak: one long session of mixed messages with the small model, as an editor sends them while the
user types: edits with a completion request after most of them, completion requests of both kinds,
cancels of requests in flight, chats, warm-ups, status. None may go unanswered; after a warm-up the
memory of the server and its worker may grow by at most 10 %, and its threads, open file handles
and child processes may not grow at all; no network socket is ever opened.

AIPC_SOAK_MESSAGES=N sets the length (the suite: 1,000; docs/RELIABILITY.md has a 10,000 run's figures).
"""

from __future__ import annotations

import itertools
import os
import random
import time

import pytest

from server_process import ServerProcess

pytestmark = pytest.mark.model
MESSAGES = int(os.environ.get("AIPC_SOAK_MESSAGES", "1000"))
# Until the KV cache's blocks are all in use (OpenVINO allocates them as prompts fill them) and every
# pool has its threads.
WARM_UP = max(300, MESSAGES // 10)
# OpenVINO's CPU plugin keeps native memory for each forward-pass width it has run, up to the
# pipeline's max_num_batched_tokens (256): a bounded cache, not a leak (docs/RELIABILITY.md). The
# warm-up ends with prompts of every length past that, so the soak measures growth, not that cache
# filling. Random text: ~1 token per 2-3 characters.
WIDTH_CHARS = range(1, 760, 3)
IN_FLIGHT = 6  # requests the client lets wait at once, like an editor typing ahead of the answers
RSS_GROWTH = 0.10
REQUEST_CANCELLED, REQUEST_FAILED, INVALID_PARAMS, CONTENT_MODIFIED = -32800, -32803, -32602, -32801
LINES = ["import math", "", "", "def area(radius):", "    return math.pi * radius ** 2", "", "",
         "class Stack:", "    def __init__(self):", "        self.items = []", "", "    def push(self, item):", "        "]


def footprint(server: ServerProcess) -> dict:
    """What must not grow: memory (server + worker), threads, open files, child processes."""
    tree = server.process_tree()
    root = tree[0]
    return {"rss": sum(p.memory_info().rss for p in tree), "server_rss": root.memory_info().rss,
            "threads": root.num_threads(), "fds": root.num_fds(), "children": len(tree) - 1,
            "worker_threads": sum(p.num_threads() for p in tree[1:])}


class Typist:
    """The client: a document it edits, its requests in flight and what each may be answered with."""

    def __init__(self, server: ServerProcess, seed: int):
        self.server = server
        self.random = random.Random(seed)
        self.lines = list(LINES)
        self.version = 1
        self.ids = itertools.count(1_000_000)
        self.pending: dict[int, set[int]] = {}  # id -> error codes allowed besides a result
        self.chats: set[int] = set()  # the chats' ids in flight
        self.sent = {"edits": 0, "completions": 0, "cancels": 0, "chats": 0, "warm-ups": 0, "status": 0}
        self.answered = {"result": 0, "cancelled": 0, "failed": 0, "content modified": 0}
        self.uri = "file:///soak/shapes.py"
        server.notify("textDocument/didOpen", {"textDocument": {"uri": self.uri, "languageId": "python", "version": 1,
                                                                "text": "\n".join(self.lines)}})

    @property
    def end(self) -> dict:
        return {"line": len(self.lines) - 1, "character": len(self.lines[-1])}

    def request(self, method: str, params: dict, allowed: set[int]) -> int:
        msg_id = next(self.ids)
        self.server.request(method, params, msg_id=msg_id)
        self.pending[msg_id] = allowed
        return msg_id

    def type_a_character(self) -> None:
        """A character typed at the end (or a line finished and a new one begun)."""
        start = self.end
        if len(self.lines[-1]) > 40 or self.random.random() < 0.05:
            text = "\n        "
            self.lines[-1:] = [self.lines[-1], "        "]
        else:
            text = self.random.choice("abcdefghijklmnopqrstuvwxyz_.( )=")
            self.lines[-1] += text
        if len(self.lines) > 60:  # keep the document a screenful: drop what was typed, as an undo would
            start, self.lines = {"line": len(LINES) - 1, "character": 0}, list(LINES)
            self.lines[-1] = ""
            text = ""
            end = {"line": 10**6, "character": 0}
        else:
            end = start
        self.version += 1
        for msg_id in self.chats & self.pending.keys():  # sent for the text before this edit
            self.pending[msg_id].add(CONTENT_MODIFIED)
        self.server.notify("textDocument/didChange", {"textDocument": {"uri": self.uri, "version": self.version},
                                                      "contentChanges": [{"range": {"start": start, "end": end},
                                                                          "text": text}]})
        self.sent["edits"] += 1

    def step(self) -> None:
        roll = self.random.random()
        if roll < 0.45:
            self.type_a_character()
            if self.random.random() < 0.8:
                self.request("textDocument/inlineCompletion", {"textDocument": {"uri": self.uri}, "position": self.end,
                                                               "context": {"triggerKind": 2}}, {REQUEST_CANCELLED})
                self.sent["completions"] += 1
        elif roll < 0.60:
            self.request("textDocument/completion", {"textDocument": {"uri": self.uri}, "position": self.end},
                         {REQUEST_CANCELLED})
            self.sent["completions"] += 1
        elif roll < 0.75 and self.pending:
            victim = self.random.choice(sorted(self.pending))
            self.server.notify("$/cancelRequest", {"id": victim})
            self.sent["cancels"] += 1
        elif roll < 0.80:
            line = self.random.randrange(len(self.lines))
            chat = self.request("aipc/inlineChat", {
                "textDocument": {"uri": self.uri}, "range": {"start": {"line": line, "character": 0}, "end": self.end},
                "instruction": self.random.choice(["what does this do?", "add a comment"])},
                {REQUEST_CANCELLED, REQUEST_FAILED})
            self.chats.add(chat)
            self.sent["chats"] += 1
        elif roll < 0.90:
            self.server.notify("aipc/warm", {"textDocument": {"uri": self.uri}, "position": self.end})
            self.sent["warm-ups"] += 1
        else:
            self.request("aipc/status", {}, set())
            self.sent["status"] += 1

    def collect(self, down_to: int, timeout: float = 120) -> None:
        """Wait for answers until at most `down_to` requests are in flight; check each."""
        deadline = time.monotonic() + timeout
        while len(self.pending) > down_to:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(self.pending)} requests unanswered after {timeout}s: {sorted(self.pending)[:10]}"
            message = self.server.inbox.get(timeout=remaining)
            if "method" in message:
                continue
            allowed = self.pending.pop(message["id"])
            self.chats.discard(message["id"])
            if "error" in message:
                code = message["error"]["code"]
                assert code in allowed, message
                self.answered[{REQUEST_CANCELLED: "cancelled", CONTENT_MODIFIED: "content modified"}.get(code,
                                                                                                      "failed")] += 1
            else:
                self.answered["result"] += 1

    @property
    def messages(self) -> int:
        return sum(self.sent.values())


def run_every_prefill_width(server: ServerProcess) -> None:
    """Completions in a document of its own whose text before the cursor grows from nothing past
    256 tokens, each text unlike the one before (so no prefix is reused: the new tokens are the width)."""
    rng = random.Random(256)
    uri = "file:///soak/widths.py"
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": ""}})
    for version, chars in enumerate(WIDTH_CHARS, start=2):
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ,.=()") for _ in range(chars))
        server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                 "contentChanges": [{"text": text}]})
        reply = server.call("textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                                                              "position": {"line": 0, "character": len(text)},
                                                              "context": {"triggerKind": 1}})
        assert "result" in reply, reply
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


def idle(server: ServerProcess, timeout: float = 120) -> None:
    """No job left running or queued (what the footprint is compared at)."""
    deadline = time.monotonic() + timeout
    while (state := server.call("aipc/status", {})["result"])["liveJobs"] or any(s["busy"] for s in state["slots"]):
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def test_a_long_session_answers_everything_and_does_not_grow():
    server = ServerProcess()
    try:
        server.start({"completion": {"max_tokens": 8, "max_lines": 2}, "chat": {"max_tokens": 12}}, encoding="utf-16")
        server.wait_ready()
        typist = Typist(server, seed=MESSAGES)
        started = time.monotonic()
        warm = None
        timeline: dict[int, int] = {}  # messages -> MB of RSS (server + worker), sampled while busy
        while typist.messages < MESSAGES:
            typist.step()
            typist.collect(IN_FLIGHT - 1)
            if warm is None and typist.messages >= WARM_UP:
                typist.collect(0)
                run_every_prefill_width(server)
                idle(server)
                warm = footprint(server)
            if typist.messages % 100 == 0:
                assert server.inet_sockets() == []
            if typist.messages % 1000 == 0 and typist.messages not in timeline:  # printed: does it level off?
                timeline[typist.messages] = round(footprint(server)["rss"] / 2**20)
        typist.collect(0)
        idle(server)
        final = footprint(server)
        elapsed = time.monotonic() - started
        print(f"\nsoak: {typist.messages} messages in {elapsed:.0f} s: {typist.sent}; answers {typist.answered}; "
              f"after warm-up {warm}; at the end {final}; RSS (MB) every 1,000 messages {timeline}")
        assert final["rss"] <= warm["rss"] * (1 + RSS_GROWTH), (warm, final)
        for what in ("threads", "fds", "children"):
            assert final[what] <= warm[what], (what, warm, final)
        assert typist.answered["result"] > typist.answered["cancelled"]  # it served, not only cancelled
        assert server.errors_reported() == []
        assert server.end() == 0
    finally:
        server.kill()
