"""Each keystroke's first token through the server, typing a line of code at one place.

`aipc-lsp bench` reports medians over its rounds; this prints the keystrokes one by one, with how
each was answered (generated, or typed-ahead from the last suggestion), for one FIM order, the
typist pausing PAUSE seconds after each answer (the user reading the suggestion). The place is
where the bench's typing puts a new line (aipc_lsp/bench/corpus.py `typing_parts`) from the
corpus offset START; `warm off` turns `completion.warm_at_cursor` off:

    python scripts/keystroke_trace.py psm-line 5046 0.6 [on|off]
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from aipc_lsp.bench.corpus import corpus_text, typing_parts
from aipc_lsp.bench.server import BenchClient, _unique, initialized
from aipc_lsp.lsp_client import drain

KEYSTROKES = 8


async def trace(order: str, start: int, pause: float, warm: bool) -> None:
    client = BenchClient()
    await client.start_io(sys.executable, "-m", "aipc_lsp", "serve")
    asyncio.ensure_future(drain(client._server.stderr))
    options = {"completion": {"context_tokens": 3072, "max_tokens": 48, "other_files": False, "fim_order": order,
                              "warm_at_cursor": warm}}
    state = await initialized(client, options)
    if state["error"]:
        raise SystemExit(f"the server has no model: {state['error']}")
    prefix, typed, suffix = typing_parts(corpus_text(), start)
    uri, head = f"file:///bench/trace_{uuid.uuid4().hex[:6]}.py", _unique(prefix)
    client.open(uri, head + suffix)
    answer = await client.suggest(uri, head + suffix, len(head))
    print(f"{order}: the line's indentation (cold): {answer['first_ms'] or -1:.0f} ms, {answer['source']}")
    for k in range(1, KEYSTROKES + 1):
        await asyncio.sleep(pause)
        text = head + typed[:k] + suffix
        client.change(uri, text)
        answer = await client.suggest(uri, text, len(head) + k)
        print(f"{order}: {typed[:k]!r}: {answer['first_ms'] or -1:.0f} ms, {answer['source']}")
    await client.shutdown_async(None)
    client.exit(None)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 3:
        raise SystemExit(__doc__)
    asyncio.run(trace(args[0], int(args[1]), float(args[2]), len(args) < 4 or args[3] != "off"))
