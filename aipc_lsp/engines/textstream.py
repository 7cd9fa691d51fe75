"""Turn a stream of token ids into text pieces, and apply the caller's stop rules.

Shared by the engines that decode token by token in Python (ONNX Runtime GenAI,
transformers): decoding the whole sequence and diffing keeps multi-byte characters and
word-piece spacing right, at a cost that is negligible for suggestion-sized outputs.
"""

from __future__ import annotations

from typing import Callable

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


class TextAccumulator:
    def __init__(self, decode: Callable[[list[int]], str], params: GenerationParams,
                 result: GenerationResult, on_text: OnText | None, stop_ids: set[int] = frozenset()):
        self._decode = decode
        self._params = params
        self._stop_ids = stop_ids
        self._result = result
        self._on_text = on_text
        self.tokens: list[int] = []
        self.text = ""

    def push(self, token: int) -> bool:
        """Add one token; False when the caller's stop rules say generation should end."""
        if int(token) in self._stop_ids:
            self._result.stopped_by_caller = True
            return False
        self.tokens.append(int(token))
        decoded = self._decode(self.tokens)
        if decoded.endswith("\ufffd"):
            return True  # a multi-byte character is still incomplete
        piece, self.text = decoded[len(self.text):], decoded
        if not piece:
            return True
        if self._params.stop and any(s in self.text for s in self._params.stop):
            self._result.stopped_by_caller = True
            return False
        if self._on_text is not None and self._on_text(piece) is False:
            self._result.stopped_by_caller = True
            return False
        return True


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
