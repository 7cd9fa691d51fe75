"""Generated token ids to text, piece by piece (textstream.py runs every engine's through here).

Through OpenVINO GenAI's detokenizer a piece is two inferences of the detokenizer model: ~0.5 ms
together during a generation (the engine's pinned threads hold both cores), 4% of the decode
time on a 2-core CPU. For a byte-level BPE vocabulary (SmolLM2, Llama-3, Qwen: every
token is a run of bytes, and text is their concatenation) a table of each token's bytes and an
incremental UTF-8 decoder do the same in microseconds. The table is checked against the
detokenizer itself when it is built; any other vocabulary keeps the detokenizer.
"""

from __future__ import annotations

import codecs
import logging
from typing import Callable

log = logging.getLogger(__name__)

# Decoded both ways when the table is built: the table is used only if they agree (spaces,
# line breaks, tabs, multi-byte characters split across tokens).
SAMPLE = ('def greet(name: str) -> str:\n\t"""Grüße, 你好, ¿qué tal? €5 ✓ 😀"""\n'
          '    return f"hello {name}!"  # done\n\n\nclass Box:\n    items = [1, 2.5, None]\n')


# Tokens decoded per call while checking the table: the detokenizer keeps buffers sized for its
# largest batch (all 49k tokens at once: +17 MB of resident memory for good; 512: none to speak of).
CHECK_BATCH = 512


def byte_table(tokenizer) -> list[bytes] | None:
    """Each token id's bytes as the detokenizer shows them (b"" for special tokens, which it
    skips), or None when the vocabulary is not byte-level BPE or disagrees with the detokenizer."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # an older openvino-genai, or a tokenizer without a vocabulary
        return None
    if not vocab or not all(isinstance(piece, bytes) for piece in vocab):
        return None
    table = [b""] * (max(vocab.values()) + 1)
    for piece, token in vocab.items():
        table[token] = piece
    del vocab
    for start in range(0, len(table), CHECK_BATCH):
        batch = range(start, min(len(table), start + CHECK_BATCH))
        for token, text in zip(batch, tokenizer.decode([[token] for token in batch])):
            piece = table[token]
            try:
                whole = piece.decode("utf-8")
            except UnicodeDecodeError:
                continue  # part of a character: shown only with the rest of it
            if text == whole:
                continue
            if text == "":
                table[token] = b""  # a special token: skipped in text
                continue
            log.info("openvino: the detokenizer decodes pieces (%r shows as %r)", piece, text)
            return None  # e.g. SentencePiece's "▁" for a space
    ids = [int(i) for i in tokenizer.encode(SAMPLE).input_ids.data[0]]
    if b"".join(table[i] for i in ids).decode("utf-8", "ignore") != tokenizer.decode(ids):
        return None  # a tokenizer that cleans up text between tokens
    return table


class ByteDetokenizer:
    """Token ids to text through `byte_table`: a character split across tokens is held back
    until its last byte comes; bytes that can begin no character are dropped, as the
    detokenizer drops them (a small model does generate such runs now and then)."""

    def __init__(self, table: list[bytes]):
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")("ignore")
        self.count = 0
        self.text = ""

    def push(self, ids) -> str:
        """Add token ids; returns the newly printable text ("" while a character is incomplete)."""
        table, size = self._table, len(self._table)
        ids = [int(i) for i in ids]
        self.count += len(ids)
        piece = self._utf8.decode(b"".join(table[i] for i in ids if 0 <= i < size))
        self.text += piece
        return piece


class WindowDetokenizer:
    """Incremental detokenization through a tokenizer's own `decode(ids) -> str`: decodes only the
    tokens since the last printed piece (plus the ones before it, so a tokenizer that treats a
    leading space specially decodes both windows alike). Decoding all tokens every step is O(n^2)."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._tokens: list[int] = []
        self._prefix_at = self._read_at = 0
        self._prefix_text = ""
        self.text = ""

    @property
    def count(self) -> int:
        return len(self._tokens)

    def push(self, ids) -> str:
        """Add token ids; returns the newly printable text ("" while a character is incomplete)."""
        self._tokens.extend(int(i) for i in ids)
        window = self._decode(self._tokens[self._prefix_at:])
        if window.endswith("\ufffd") or len(window) <= len(self._prefix_text):
            return ""
        piece = window[len(self._prefix_text):]
        self.text += piece
        self._prefix_at, self._read_at = self._read_at, len(self._tokens)
        self._prefix_text = self._decode(self._tokens[self._prefix_at:self._read_at])
        return piece
