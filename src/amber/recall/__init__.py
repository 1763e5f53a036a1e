"""Recall: hybrid (lexical + vector) search over a user's turns and facts, and rendering of the
results as one quoted-data block for a model's context.

* :class:`Recall` -- ``await Recall(store, embedder=...).search(tenant, user, query, limit=10)``
* :func:`render_block` -- ``render_block(hits, max_tokens=600) -> MemoryBlock(text, tokens, hits)``
* :func:`parse_time_range` -- the interval a query's time expression refers to
"""

from __future__ import annotations

from .render import BLOCK_CLOSE, BLOCK_OPEN, MemoryBlock, escape_quoted, render_block
from .search import KINDS, MODES, STOP_WORDS, Recall, lexical_query
from .timeexpr import TimeRange, parse_time_range

__all__ = [
    "Recall",
    "lexical_query",
    "STOP_WORDS",
    "render_block",
    "MemoryBlock",
    "BLOCK_OPEN",
    "BLOCK_CLOSE",
    "escape_quoted",
    "parse_time_range",
    "TimeRange",
    "MODES",
    "KINDS",
]
