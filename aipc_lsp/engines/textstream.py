"""Turn a stream of token ids into text pieces, and apply the caller's stop rules.

Every engine that decodes in Python goes through `TextStream`: its detokenizer (detokenize.py:
a table of each token's bytes for byte-level BPE vocabularies, else the tokenizer's own decode
on a sliding window) and the same stop rules (a stop token's id, a stop string in the text, the
caller's `on_text` saying it has seen enough).
"""

from __future__ import annotations

from typing import Callable, Iterable

from aipc_lsp.engines.base import GenerationParams, GenerationResult, OnText


def special_stop_ids(encode: Callable[[str], list[int]], stop: tuple[str, ...]) -> set[int]:
    """The ids of the stop strings that are single tokens (a FIM template's end markers): special
    tokens never reach the decoded text, so they are stopped on by id."""
    ids = set()
    for marker in stop:
        encoded = [int(t) for t in encode(marker)]
        if len(encoded) == 1:
            ids.add(encoded[0])
    return ids


class TextStream:
    """Pushes ids through `detokenizer` (its `push(ids) -> new text`, `text`, `count`) and says
    when the caller's stop rules end generation (`result.stopped_by_caller` is then set)."""

    def __init__(self, detokenizer, params: GenerationParams, result: GenerationResult, on_text: OnText | None,
                 stop_ids: Iterable[int] = frozenset()):
        self._detokenizer = detokenizer
        self._params = params
        self._result = result
        self._on_text = on_text
        self._stop_ids = frozenset(stop_ids)

    @property
    def text(self) -> str:
        return self._detokenizer.text

    @property
    def count(self) -> int:
        """Tokens decoded so far (a stop token is not one)."""
        return self._detokenizer.count

    def push(self, ids: Iterable[int]) -> bool:
        """Add token ids; False when the caller's stop rules say generation should end."""
        ids = [int(t) for t in ids]
        if self._stop_ids and any(t in self._stop_ids for t in ids):
            self._result.stopped_by_caller = True
            return False
        piece = self._detokenizer.push(ids)
        if not piece:
            return True  # nothing printable yet (a multi-byte character still incomplete)
        if self._params.stop and any(s in self.text for s in self._params.stop):
            self._result.stopped_by_caller = True
        elif self._on_text is not None and self._on_text(piece) is False:
            self._result.stopped_by_caller = True
        return not self._result.stopped_by_caller


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
