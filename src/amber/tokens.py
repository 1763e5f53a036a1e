"""An offline token estimate, so windows and memory blocks can be budgeted without a tokenizer download.

It slightly over-counts relative to the BPE tokenizers of common chat models (cl100k, o200k) on
English prose, which is the safe side for a budget: a block that fits here fits there.
"""

from __future__ import annotations

import math
import re
from typing import Protocol

__all__ = ["TokenCounter", "estimate_tokens"]

_PIECE = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]|\S", re.UNICODE)


class TokenCounter(Protocol):
    def __call__(self, text: str) -> int: ...


def estimate_tokens(text: str) -> int:
    """Approximate BPE token count: long words split in ~4-character pieces, digits in threes."""
    if not text:
        return 0
    count = 0
    for piece in _PIECE.findall(text):
        count += math.ceil(len(piece) / 5) if piece.isalpha() else 1
    return count
