"""Keystroke -> first token for each FIM order, typing code in the middle of a line.

`aipc-lsp bench` types a new line of code at one place, through the server (token healing, typed-ahead
answers); this types the 6 characters after the first 4 of a code line (3 places in the bench's
corpus, about 1.5k tokens before the cursor and the suffix budget after it), through the server's
engine alone as its worker runs it (the typing checkpoint, settling after each answer), prompts
built as the server builds them without token healing:

    python scripts/keystroke_by_fim_order.py IR_FOLDER psm-line psm
"""

from __future__ import annotations

import statistics
import sys
import threading
import uuid

from aipc_lsp import fim
from aipc_lsp.bench.corpus import corpus_text
from aipc_lsp.bench.engine import _engine
from aipc_lsp.bench.prompts import PromptSettings
from aipc_lsp.engines.base import GenerationParams

TYPED, BEFORE, AFTER = 6, 5000, 3000


def cursors(text: str, starts=(20000, 30000, 40000)):
    """A cursor after the first 4 characters of the first code line (20+ characters) after each start."""
    for start in starts:
        cut = text.index("\n", start) + 1
        line = text[cut:text.index("\n", cut)]
        while len(line.strip()) < 20:
            cut += len(line) + 1
            line = text[cut:text.index("\n", cut)]
        yield cut + len(line) - len(line.lstrip()) + 4


def main(model: str, orders: list[str]) -> None:
    engine = _engine({"model": model, "device": "CPU", "prompt_lookup_tokens": 2})
    engine.load()
    text = corpus_text()
    for order in orders:
        builder = PromptSettings(fim_order=order).builder(fim.QWEN, engine.count_tokens)
        times = []
        for pos in cursors(text):
            head = f"# run {uuid.uuid4().hex}\n" + text[max(0, pos - BEFORE):pos]
            typed, rest = text[pos:pos + TYPED], text[pos + TYPED:pos + TYPED + AFTER]
            for k in range(TYPED + 1):  # k = 0: the cursor's first answer, cold for this order
                prompt = builder.prompt(head + typed[:k] + rest, len(head) + k)
                result = engine.generate(prompt, GenerationParams(max_new_tokens=4, stop=fim.QWEN.stop),
                                         threading.Event(), lambda piece: True)
                engine.settle()
                if k:
                    times.append(result.first_token_s * 1000)
        print(f"{order}: keystroke -> first token p50 {statistics.median(times):.0f} ms, "
              f"max {max(times):.0f} ms ({len(times)} keystrokes)", flush=True)
    engine.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["psm", "psm-line"])
