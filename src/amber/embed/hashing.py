"""A model-free embedder: signed feature hashing of words and character trigrams.

It captures lexical and sub-word overlap only (no synonyms), but it is deterministic, needs no
download, and embeds thousands of texts per second: good for tests and for smoke runs.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Sequence

from ..errors import InvalidInput
from ._base import check_texts

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    def __init__(self, dim: int = 256) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 8 <= dim <= 4096:
            raise InvalidInput("hash embedder dim must be an integer in [8, 4096]")
        self.dim = dim
        self.name = f"hash-{dim}"
        self.spec = f"hash:{dim}"

    def _vector(self, text: str) -> list[float]:
        vec = [0.0] * self.dim
        words = [w.lower() for w in _WORD.findall(text)]
        features = list(words)
        for w in words:
            padded = f"#{w}#"
            features.extend(padded[i:i + 3] for i in range(max(1, len(padded) - 2)))
        for f in features:
            h = hashlib.blake2b(f.encode("utf-8"), digest_size=8).digest()
            index = int.from_bytes(h[:4], "little") % self.dim
            vec[index] += 1.0 if h[4] & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in vec)) or 1.0
        return [x / norm for x in vec]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._vector(t) for t in check_texts(texts)]
