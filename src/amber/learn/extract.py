"""What an extractor returns, and the protocol every extractor follows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import AmberError
from ..records import Message

__all__ = ["Candidate", "Extractor", "ExtractionError", "slug"]


class ExtractionError(AmberError):
    """An extractor could not turn a message into facts (e.g. the model answered malformed JSON).
    The learner records it on the job (``last_error``) and retries, then parks the job as dead."""

    code = "extraction_error"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A fact an extractor proposes. ``attribute`` decides what it supersedes: a later candidate with
    the same attribute and another value replaces it (keeping both in history)."""

    attribute: str
    value: str
    text: str
    kind: str = "statement"
    confidence: float = 0.8
    metadata: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Extractor(Protocol):
    name: str

    async def extract(self, message: Message, context: Sequence[Message] = ()) -> list[Candidate]:
        """Facts stated in ``message`` (``context``: the turns just before it, oldest first)."""
        ...


_NON_WORD = re.compile(r"[^a-z0-9]+")
_SUFFIX = re.compile(r"(ing|ed|es|s)$")


def slug(text: str, *, words: int = 6) -> str:
    """A stable attribute fragment: lower-case words joined by ``_``, light suffix stripping so that
    "restarting the router" and "restart the router" land on one attribute."""
    parts = [p for p in _NON_WORD.split(text.lower()) if p and p not in _STOP]
    parts = [_SUFFIX.sub("", p) if len(p) > 4 else p for p in parts]
    return "_".join(parts[:words]) or "x"


_STOP = frozenset("a an the my our your to of for and or please is are was be".split())
