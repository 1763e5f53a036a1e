"""Shared helpers for embedders."""

from __future__ import annotations

from typing import Sequence

from ..errors import AmberError, InvalidInput

__all__ = ["EmbedderUnavailable", "check_texts"]


class EmbedderUnavailable(AmberError, ConnectionError):
    """The embedding model or endpoint could not produce vectors (not loaded, unreachable, or
    answered with something that is not a vector per text). Nothing was stored."""

    status = 503
    code = "embedder_unavailable"


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InvalidInput("embed() takes a sequence of strings, not one string")
    out = list(texts)
    for t in out:
        if not isinstance(t, str):
            raise InvalidInput(f"embed() takes strings, got {type(t).__name__}")
    return out
