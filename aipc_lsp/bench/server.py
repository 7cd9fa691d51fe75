"""Server-level benchmark: `aipc-lsp serve` over stdio, driven as an editor drives it.

Keystroke-to-full-suggestion is what the client sees (request sent -> answer received).
Keystroke-to-first-token needs the server's view, since an LSP answer carries the whole
suggestion: aipc/status lists for every answer when its first token was decoded
(`firstTokenMs`, from the request's arrival) and when it was answered (`totalMs`); the
client-side figure is round trip - (totalMs - firstTokenMs), i.e. the answer time minus
the time the server spent after the first token existed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from aipc_lsp.bench.corpus import DECODE_ROUNDS, DECODE_RUNS, LONG_DOC, decode_document
from aipc_lsp.lsp_client import drain, plain


# After a suggestion shows, a typist takes a moment before the next key (reading it, or not):
# the server uses such moments (the worker settles the engine, engines/openvino.py `settle`).
# Typing on the instant the suggestion is complete measures a client no one is.
TYPIST_PAUSE_S = 0.2


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "n": len(values)}


class BenchClient(LanguageClient):
    def __init__(self):
        super().__init__("aipc-lsp-bench", "1")
        self.versions: dict[str, int] = {}
        self.texts: dict[str, str] = {}
        for method in (types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE, types.PROGRESS):
            self.feature(method)(lambda params: None)
        self.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)(lambda params: None)

    async def status(self) -> dict:
        return plain(await self.protocol.send_request_async("aipc/status", {}))

    async def warmed(self, uri: str, timeout: float = 60.0, at: str = "open") -> dict | None:
        """The server's warm-up record of a document (`at`: "open", or "cursor" for aipc/warm),
        once it is done (None: none came)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            found = [w for w in (await self.status()).get("warmups", []) if w["uri"] == uri and w.get("at") == at]
            if found:
                return found[-1]
            await asyncio.sleep(0.05)
        return None

    def warm_at_end(self, uri: str, text: str) -> None:
        """aipc/warm: the cursor rests at the end of `text` (what an editor client sends)."""
        position = self.inline_params(uri, text).position
        self.protocol.notify("aipc/warm", {"textDocument": {"uri": uri},
                                           "position": {"line": position.line, "character": position.character}})

    def open(self, uri: str, text: str) -> None:
        self.versions[uri] = 1
        self.texts[uri] = text
        self.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text=text)))

    def change(self, uri: str, text: str) -> None:
        """As editors send it (incremental sync): text typed at the end is an insertion there;
        anything else replaces the whole document."""
        self.versions[uri] += 1
        old = self.texts.get(uri, "")
        self.texts[uri] = text
        if text.startswith(old) and old:
            end = self.inline_params(uri, old).position
            change = types.TextDocumentContentChangePartial(range=types.Range(start=end, end=end), text=text[len(old):])
        else:
            change = types.TextDocumentContentChangeWholeDocument(text=text)
        self.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[change]))

    def configure(self, completion: dict) -> None:
        self.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"aipc": {"completion": completion}}))

    def inline_params(self, uri: str, text: str) -> types.InlineCompletionParams:
        lines = text.split("\n")
        position = types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2)
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))

    async def suggest(self, uri: str, text: str) -> dict:
        """One request at the end of `text`; timings from both sides."""
        sent = time.perf_counter()
        await self.text_document_inline_completion_async(self.inline_params(uri, text))
        round_trip = (time.perf_counter() - sent) * 1000
        version = self.versions[uri]
        record = next((r for r in reversed((await self.status())["suggestions"])
                       if r["uri"] == uri and r["version"] == version), None)
        if record is None or record["firstTokenMs"] is None:
            return {"full_ms": round_trip, "first_ms": None, "source": None, "record": record}
        after_first = record["totalMs"] - record["firstTokenMs"]
        return {"full_ms": round_trip, "first_ms": max(0.0, round_trip - after_first),
                "source": record["source"], "record": record}


def _proc_peak_rss_mb(pid: int) -> tuple[float | None, list[float]]:
    """Peak resident memory of the server and its engine worker processes (Linux VmHWM),
    summed (the sum of the peaks bounds the peak of the sum from above), and each one's, the
    server's first."""
    parts = []
    for proc in _process_tree(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    parts.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return (sum(parts) if parts else None), parts


def _process_tree(pid: int) -> list[int]:
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


def _unique(text: str) -> str:
    # A new first line: neither the prefix cache nor the result cache has seen this prompt.
    return f"# bench {uuid.uuid4().hex}\n{text}"


async def run(*, docs: dict[int, str], continuations: dict[int, str], quick: bool, model: str | None,
              context_tokens: int, reference=None) -> dict:
    """`reference`: a bench.reference.ReferenceEngine (the bare engine in the server's configuration),
    whose decode takes turns with the server's and which types the 1.5k document alone."""
    command = [sys.executable, "-m", "aipc_lsp", "serve"]
    client = BenchClient()
    started = time.perf_counter()
    await client.start_io(*command)
    draining = asyncio.ensure_future(drain(client._server.stderr))
    base_completion = {"context_tokens": context_tokens, "max_tokens": 48}
    out: dict = {"contexts": {}}
    try:
        options = {"completion": base_completion}
        if model:
            options["model"] = model
        await client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
                inline_completion=types.InlineCompletionClientCapabilities())),
            process_id=None, initialization_options=options))
        client.initialized(types.InitializedParams())
        while True:
            state = await client.status()
            if state["ready"] or state["error"]:
                break
            await asyncio.sleep(0.1)
        if state["error"]:
            return {"error": state["error"]}
        out["ready_s"] = time.perf_counter() - started

        cold_reps, keystrokes = (2, 5) if quick else (5, 16)
        for n, doc in docs.items():
            cold, uri, text = [], "", ""
            for i in range(cold_reps):
                uri, text = f"file:///bench/ctx{n}_{i}_{uuid.uuid4().hex[:6]}.py", _unique(doc)
                client.open(uri, text)
                cold.append(await client.suggest(uri, text))
            typed = []
            for ch in continuations[n][:keystrokes]:
                text += ch
                client.change(uri, text)
                typed.append(await client.suggest(uri, text))
                await asyncio.sleep(TYPIST_PAUSE_S)
            # A document opened some time before the first keystroke: the server computes its
            # window while idle (completion.warm_on_open); the user's first suggestion comes after.
            opened = []
            for i in range(1 if quick else 3):
                uri, text = f"file:///bench/open{n}_{i}_{uuid.uuid4().hex[:6]}.py", _unique(doc)
                client.open(uri, text)
                if await client.warmed(uri) is not None:
                    opened.append(await client.suggest(uri, text))
            # A document brought to the front whose window is not cached (opened before the server
            # could warm it, or evicted since): the client says where the cursor rests
            # (aipc/warm, completion.warm_at_cursor) and the user types a moment later.
            client.configure({**base_completion, "warm_on_open": False})
            await asyncio.sleep(0.2)
            at_cursor = []
            for i in range(1 if quick else 3):
                uri, text = f"file:///bench/cursor{n}_{i}_{uuid.uuid4().hex[:6]}.py", _unique(doc)
                client.open(uri, text)
                client.warm_at_end(uri, text)
                if await client.warmed(uri, at="cursor") is not None:
                    at_cursor.append(await client.suggest(uri, text))
            client.configure(base_completion)
            generated = [r for r in typed if r["source"] == "generated"]
            cold = [r for r in cold if r["source"] == "generated"]
            out["contexts"][n] = {
                "cold_first_ms": summary([r["first_ms"] for r in cold if r["first_ms"] is not None]),
                "cold_full_ms": summary([r["full_ms"] for r in cold]),
                "opened_first_ms": summary([r["first_ms"] for r in opened
                                            if r["source"] == "generated" and r["first_ms"] is not None]),
                "cursor_first_ms": summary([r["first_ms"] for r in at_cursor
                                            if r["source"] == "generated" and r["first_ms"] is not None]),
                # New generations while typing: the prefix cache at work.
                "incremental_first_ms": summary([r["first_ms"] for r in generated if r["first_ms"] is not None]),
                "incremental_full_ms": summary([r["full_ms"] for r in generated]),
                # Every keystroke, reused answers included (typed-ahead, cache).
                "keystroke_first_ms": summary([r["first_ms"] for r in typed if r["first_ms"] is not None]),
                "keystroke_full_ms": summary([r["full_ms"] for r in typed]),
                "sources": {s: sum(1 for r in typed if r["source"] == s) for s in {r["source"] for r in typed}},
            }

        if reference is not None:
            # The engine alone on the same document and keystrokes, before and after the decode rounds.
            out["reference_typing"] = [await asyncio.to_thread(reference.typing)]
        # Decode rate through the server: a long generation on the bare engine's prompts, taking
        # turns with the bare engine (while one runs the other idles), so a drift of the shared
        # host shows in both sides of a round instead of passing for the server's overhead.
        client.configure({**base_completion, "max_tokens": 48 if quick else 128, "max_lines": 200})
        await asyncio.sleep(0.2)
        out["decode_rounds"] = []
        for round_ in range(DECODE_ROUNDS if reference is not None else 1):
            bare = await asyncio.to_thread(reference.decode, round_) if reference is not None else {}
            rates = []
            for run in range(1 if quick else DECODE_RUNS):
                uri = f"file:///bench/long_{uuid.uuid4().hex[:6]}.py"
                text = decode_document(run, round_)
                client.open(uri, text)
                record = (await client.suggest(uri, text))["record"]
                if record and record["tokens"] > 1 and record["totalMs"] > record["firstTokenMs"]:
                    rates.append((record["tokens"] - 1) * 1000 / (record["totalMs"] - record["firstTokenMs"]))
            out["decode_rounds"].append({"server_tokens_per_s": statistics.median(rates) if rates else None,
                                         "bare_tokens_per_s": bare.get("long_tokens_per_s"),
                                         "bare_step_ms": bare.get("step_ms"), "bare_error": bare.get("error")})
        server_rates = [r["server_tokens_per_s"] for r in out["decode_rounds"] if r["server_tokens_per_s"]]
        out["server_tokens_per_s"] = statistics.median(server_rates) if server_rates else None
        if reference is not None:
            out["reference_typing"].append(await asyncio.to_thread(reference.typing))

        client_side, polled, server_side = await _cancel_latencies(client, 2 if quick else 5)
        out["cancel_ms"] = summary(client_side)
        out["cancel_polled_ms"] = summary(polled)
        out["cancel_server_ms"] = summary(server_side) if server_side else None
        out["peak_rss_mb"], out["peak_rss_parts_mb"] = _proc_peak_rss_mb(client._server.pid)
        await client.shutdown_async(None)
        client.exit(None)
        await asyncio.wait_for(client._server.wait(), 10)
        return out
    finally:
        draining.cancel()
        if client._server.returncode is None:
            client._server.kill()
        await client.stop()


async def _cancel_latencies(client: BenchClient, reps: int) -> tuple[list[float], list[float], list[float]]:
    """$/cancelRequest while decoding -> the slot free, three ways: sent -> the moment the
    server freed the slot (`slots[].freed_at`, on the machine's monotonic clock both processes
    read); sent -> aipc/status seen to say so; and the server's own clock (the job told to stop
    -> free). Nothing is asked of the server until the cancelled request has its answer: on
    2 cores a status request while the step in flight runs takes CPU from that step, and polling
    every 2 ms lengthened the very cancel it timed (51 ms on the server's clock against a 32 ms
    step in the sixth session's run), so afterwards status is asked every 10 ms, and `polled`
    is only as fine as that."""
    client.configure({"max_tokens": 400, "max_lines": 200})
    await asyncio.sleep(0.2)
    latencies, polled, server_side = [], [], []
    for _ in range(reps):
        uri = f"file:///bench/cancel_{uuid.uuid4().hex[:6]}.py"
        text = _unique(LONG_DOC)
        client.open(uri, text)
        request = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, client.inline_params(uri, text))
        msg_id = next(reversed(client.protocol._request_futures))
        deadline = time.perf_counter() + 30
        while not (await client.status())["slots"][0]["busy"] and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        # Well into decoding: past the prefill and the first decode step (which costs about two
        # later ones), so the step in flight is the kind the target is sized by. At 0.15 s the
        # cancel fell in those (60-130 ms steps) and measured them instead of the way back.
        await asyncio.sleep(0.5 + random.random() * 0.05)
        cancelled, sent_at = time.perf_counter(), time.monotonic()
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
        try:
            await asyncio.wait_for(asyncio.wrap_future(request), 10)
        except Exception:
            pass  # -32800 RequestCancelled is the expected answer
        while (slot := (await client.status())["slots"][0])["busy"]:
            if time.perf_counter() - cancelled > 10:
                break
            await asyncio.sleep(0.01)
        polled.append((time.perf_counter() - cancelled) * 1000)
        freed_at = slot.get("freed_at")
        latencies.append((freed_at - sent_at) * 1000 if freed_at and freed_at >= sent_at else polled[-1])
        if slot.get("cancel_to_free_ms"):
            server_side.append(slot["cancel_to_free_ms"][-1])
    return latencies, polled, server_side
