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
from collections import Counter

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from aipc_lsp.bench.corpus import DECODE_ROUNDS, DECODE_RUNS, LONG_DOC, decode_document
from aipc_lsp.bench.rss import peak_rss_mb
from aipc_lsp.bench.stats import percentile, summary  # noqa: F401  (percentile: for eval's report)
from aipc_lsp.lsp_client import drain, first_inline_text, plain


# After a suggestion shows, a typist takes a moment before the next key (reading it, or not):
# the server uses such moments (the scheduler lets the engine settle, engines/openvino.py `settle`).
# Typing on the instant the suggestion is complete measures a client no one is.
TYPIST_PAUSE_S = 0.2


# The --remote peer's typing and cold figures are taken on this context's document.
PEER_CONTEXT = 1536
# How long the user reads a suggestion before accepting it (the bench's accept: _accepts).
ACCEPT_PAUSE_S = 1.0


def position_of(text: str, offset: int) -> types.Position:
    """The LSP position (UTF-16 columns) of a character offset."""
    line_start = text.rfind("\n", 0, offset) + 1
    return types.Position(line=text.count("\n", 0, offset),
                          character=len(text[line_start:offset].encode("utf-16-le")) // 2)


def edit_between(old: str, new: str) -> types.TextDocumentContentChangePartial:
    """The one range edit that turns `old` into `new`: what differs between their common
    beginning and common end."""
    limit = min(len(old), len(new))
    start = 0
    while start < limit and old[start] == new[start]:
        start += 1
    tail = 0
    while tail < limit - start and old[len(old) - 1 - tail] == new[len(new) - 1 - tail]:
        tail += 1
    return types.TextDocumentContentChangePartial(
        range=types.Range(start=position_of(old, start), end=position_of(old, len(old) - tail)),
        text=new[start:len(new) - tail])


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

    def warm_at(self, uri: str, text: str, offset: int) -> None:
        """aipc/warm: the cursor rests at `offset` (what an editor client sends)."""
        position = position_of(text, offset)
        self.protocol.notify("aipc/warm", {"textDocument": {"uri": uri},
                                           "position": {"line": position.line, "character": position.character}})

    def open(self, uri: str, text: str) -> None:
        self.versions[uri] = 1
        self.texts[uri] = text
        self.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text=text)))

    def change(self, uri: str, text: str) -> None:
        """As editors send it (incremental sync): the span that differs from the last text is
        replaced (a typed character: an insertion at the cursor)."""
        self.versions[uri] += 1
        change = edit_between(self.texts.get(uri, ""), text)
        self.texts[uri] = text
        self.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[change]))

    def configure(self, completion: dict) -> None:
        self.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"aipc": {"completion": completion}}))

    def inline_params(self, uri: str, text: str, offset: int | None = None) -> types.InlineCompletionParams:
        """A request at `offset` (the end of `text` when None)."""
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=position_of(text, len(text) if offset is None else offset),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))

    async def suggest(self, uri: str, text: str, offset: int | None = None) -> dict:
        """One request at `offset` (the end of `text` when None); timings from both sides."""
        sent = time.perf_counter()
        answer = await self.text_document_inline_completion_async(self.inline_params(uri, text, offset))
        round_trip = (time.perf_counter() - sent) * 1000
        shown = first_inline_text(answer) or ""
        version = self.versions[uri]
        record = next((r for r in reversed((await self.status())["suggestions"])
                       if r["uri"] == uri and r["version"] == version), None)
        if record is None or record["firstTokenMs"] is None:
            return {"full_ms": round_trip, "first_ms": None, "source": None, "record": record, "text": shown}
        after_first = record["totalMs"] - record["firstTokenMs"]
        return {"full_ms": round_trip, "first_ms": max(0.0, round_trip - after_first),
                "source": record["source"], "record": record, "text": shown}


def _later_part(code: str) -> str:
    """`code` from the first line start after its first quarter."""
    return code[code.index("\n", len(code) // 4) + 1:]


def _unique(text: str) -> str:
    # A new first line: neither the prefix cache nor the result cache has seen this prompt.
    return f"# bench {uuid.uuid4().hex}\n{text}"


async def initialized(client: BenchClient, options: dict) -> dict:
    """Initialize the server as an editor with inline completion does (`options`: its
    initializationOptions); its status once its model is ready or has failed."""
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities())),
        process_id=None, initialization_options=options))
    client.initialized(types.InitializedParams())
    while True:
        state = await client.status()
        if state["ready"] or state["error"]:
            return state
        await asyncio.sleep(0.1)


async def run(*, docs: dict[int, tuple[str, str, str]], quick: bool, options: dict, reference=None,
              peer=None, config: str | None = None) -> dict:
    """`docs`: per context size, (code before the cursor, the characters typed there, code after
    it). `options`: initializationOptions (the model, and the completion settings the bench's
    configurations start from: later ones change a few of them). `reference`: a
    bench.reference.ReferenceEngine (the bare engine in the server's configuration), whose decode
    takes turns with the server's and which types the 1.5k document alone. `peer`: a
    bench.remote.Peer, asked for the same work between the server's phases. `config`: the
    settings.toml the server reads (`--config`)."""
    command = [sys.executable, "-m", "aipc_lsp", "serve", *(["--config", config] if config else [])]
    client = BenchClient()
    started = time.perf_counter()
    await client.start_io(*command)
    draining = asyncio.ensure_future(drain(client._server.stderr))
    base_completion = options.get("completion", {})
    out: dict = {"contexts": {}}
    try:
        state = await initialized(client, options)
        if state["error"]:
            return {"error": state["error"]}
        out["ready_s"] = time.perf_counter() - started

        cold_reps, keystrokes = (2, 5) if quick else (5, 16)
        for n, (prefix, following, suffix) in docs.items():
            cold, uri, head = [], "", ""
            for i in range(cold_reps):
                uri, head = f"file:///bench/ctx{n}_{i}_{uuid.uuid4().hex[:6]}.py", _unique(prefix)
                client.open(uri, head + suffix)
                cold.append(await client.suggest(uri, head + suffix, len(head)))
            # The server's word for its prompt format (a FIM template's name, or "prefix").
            out.setdefault("completion_prompt", (await client.status()).get("completionPrompt"))
            # Typed in the middle of the file: each character inserted at the cursor, the code after it kept.
            typed = []
            for k in range(1, len(following[:keystrokes]) + 1):
                text = head + following[:k] + suffix
                client.change(uri, text)
                typed.append(await client.suggest(uri, text, len(head) + k))
                await asyncio.sleep(TYPIST_PAUSE_S)
            # A document opened some time before the first keystroke: the server computes its
            # window while idle (completion.warm_on_open); the user's first suggestion comes after.
            # The server cannot know where the cursor will be: it computes the document's first
            # window (what the budget leaves the code before a cursor after the code after it), so
            # the user asks inside it, here with a quarter of the code before the bench's cursor left out.
            opened = []
            for i in range(1 if quick else 3):
                uri, head = f"file:///bench/open{n}_{i}_{uuid.uuid4().hex[:6]}.py", _unique(_later_part(prefix))
                client.open(uri, head + suffix)
                if await client.warmed(uri) is not None:
                    opened.append(await client.suggest(uri, head + suffix, len(head)))
            # A document brought to the front whose window is not cached (opened before the server
            # could warm it, or evicted since): the client says where the cursor rests
            # (aipc/warm, completion.warm_at_cursor) and the user types a moment later.
            client.configure({**base_completion, "warm_on_open": False})
            await asyncio.sleep(0.2)
            at_cursor = []
            for i in range(1 if quick else 3):
                uri, head = f"file:///bench/cursor{n}_{i}_{uuid.uuid4().hex[:6]}.py", _unique(prefix)
                client.open(uri, head + suffix)
                client.warm_at(uri, head + suffix, len(head))
                if await client.warmed(uri, at="cursor") is not None:
                    at_cursor.append(await client.suggest(uri, head + suffix, len(head)))
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
                # How each keystroke was answered.
                "sources": _sources(typed),
            }
            if n == PEER_CONTEXT:
                out["contexts"][n]["accepted"] = await _accepts(client, base_completion, prefix, suffix,
                                                                1 if quick else 3)
            if peer is not None and n == PEER_CONTEXT:
                # The same document and keystrokes to the peer, now, while the server idles.
                await asyncio.to_thread(peer.typing, prefix, following[:keystrokes], suffix,
                                        cold_reps=cold_reps, pause_s=TYPIST_PAUSE_S)

        if reference is not None:
            # The engine alone on the same document and keystrokes, before and after the decode rounds.
            out["reference_typing"] = [await asyncio.to_thread(reference.typing)]
        # Decode rate through the server: a long generation on the bare engine's prompts, taking
        # turns with the bare engine (while one runs the other idles), so a drift of the shared
        # host shows in both sides of a round instead of passing for the server's overhead.
        decode_tokens = 48 if quick else 128
        client.configure({**base_completion, "max_tokens": decode_tokens, "max_lines": 200})
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
            if peer is not None:
                await asyncio.to_thread(peer.decode, round_, max_tokens=decode_tokens, runs=1 if quick else DECODE_RUNS)
        server_rates = [r["server_tokens_per_s"] for r in out["decode_rounds"] if r["server_tokens_per_s"]]
        out["server_tokens_per_s"] = statistics.median(server_rates) if server_rates else None
        if reference is not None:
            out["reference_typing"].append(await asyncio.to_thread(reference.typing))

        client_side, polled, server_side = await _cancel_latencies(client, 2 if quick else 5)
        out["cancel_ms"] = summary(client_side)
        out["cancel_polled_ms"] = summary(polled)
        out["cancel_server_ms"] = summary(server_side) if server_side else None
        out["peak_rss_mb"], out["peak_rss_parts_mb"] = peak_rss_mb(client._server.pid)
        await client.shutdown_async(None)
        client.exit(None)
        await asyncio.wait_for(client._server.wait(), 10)
        return out
    finally:
        draining.cancel()
        if client._server.returncode is None:
            client._server.kill()
        await client.stop()


async def _accepts(client: BenchClient, base_completion: dict, prefix: str, suffix: str, reps: int) -> dict:
    """A suggestion read for ACCEPT_PAUSE_S, then accepted (inserted, the cursor after it) and the
    editor's request there: its round trip with completion.suggest_ahead (the suggestion after it
    computed while the user read) and without (the bench runs without it elsewhere), and how it
    was answered."""
    out = {}
    for ahead in (True, False):
        client.configure({**base_completion, "suggest_ahead": ahead})
        await asyncio.sleep(0.2)
        answers = []
        for _ in range(reps):
            uri, head = f"file:///bench/accept_{uuid.uuid4().hex[:6]}.py", _unique(prefix)
            client.open(uri, head + suffix)
            shown = (await client.suggest(uri, head + suffix, len(head)))["text"]
            if not shown:
                continue
            await asyncio.sleep(ACCEPT_PAUSE_S)
            text = head + shown + suffix
            client.change(uri, text)
            answers.append(await client.suggest(uri, text, len(head) + len(shown)))
        out["ahead" if ahead else "asked"] = {
            "full_ms": summary([r["full_ms"] for r in answers]),
            "sources": _sources(answers)}
    client.configure(base_completion)
    await asyncio.sleep(0.2)
    return out


def _sources(answers: list[dict]) -> dict[str, int]:
    """How many answers each way was obtained ("none": an empty answer, which the server does not time)."""
    return dict(Counter(r["source"] or "none" for r in answers))


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
