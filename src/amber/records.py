"""The records Amber stores and returns. Plain frozen dataclasses: no ORM, no driver types.

Timestamps are timezone-aware UTC. Ids are opaque strings. ``payload`` holds the structured form of
a message (e.g. an AutoGen ``LLMMessage`` dump) and ``payload_format`` names its schema and version,
so stored messages stay readable across AutoGen upgrades.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

from .keys import SessionKey

__all__ = [
    "JSON",
    "NewMessage",
    "Message",
    "SessionInfo",
    "StateBlob",
    "NewFact",
    "Fact",
    "Hit",
    "VectorItem",
    "AuditEvent",
    "DeletionReceipt",
    "LearnJob",
    "utcnow",
    "ROLES",
    "is_person_name",
]

JSON = Any
ROLES = frozenset({"system", "user", "assistant", "tool", "event"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Words agents are named by ("Support", "Assistant", "Helper Bot").
_AGENT_WORDS = frozenset("""assistant support agent bot helper helpdesk service team system user admin operator
advisor adviser representative concierge desk proxy planner coder critic executor""".split())


def is_person_name(author: str | None) -> bool:
    """Whether a message's ``author`` is a person's name ("Nora", "Mateo Brennan", "Zoë"): one to
    three capitalised words, none of them a word agents are named by. Agent ids ("user_proxy",
    "support", "Support", "Helper Bot") are not: what an agent says of itself is nobody's fact, and
    a question saying "contact support" names no speaker. Learning and recall share this test."""
    words = (author or "").strip().split(" ")
    return 1 <= len(words) <= 3 and all(
        w[:1].isupper() and all(c.isalpha() or c in "'’-." for c in w) and (len(w) <= 2 or not w.isupper())
        and w.casefold() not in _AGENT_WORDS for w in words)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append.

    ``idempotency_key`` identifies the message, not the attempt: appending twice with the same key
    stores one message and returns it both times. Adapters derive it from the message itself.
    """

    role: str
    content: str
    payload: Mapping[str, JSON] | None = None
    payload_format: str = "text/1"
    author: str | None = None
    idempotency_key: str | None = None
    created_at: datetime | None = None
    metadata: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    key: SessionKey
    seq: int
    id: str
    role: str
    content: str
    payload: Mapping[str, JSON] | None
    payload_format: str
    author: str | None
    idempotency_key: str
    created_at: datetime
    metadata: Mapping[str, JSON]
    tokens: int
    content_hash: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    key: SessionKey
    message_count: int
    last_seq: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StateBlob:
    """Versioned state (agent or team ``save_state()`` output) for one session and name."""

    key: SessionKey
    name: str
    version: int
    data: Mapping[str, JSON]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewFact:
    """A fact to record. ``attribute`` groups facts that supersede each other (e.g. ``policy_number``)."""

    attribute: str
    value: str
    text: str
    kind: str = "statement"
    source_message_ids: tuple[str, ...] = ()
    thread: str | None = None
    confidence: float = 1.0
    valid_from: datetime | None = None
    metadata: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fact:
    id: str
    tenant: str
    user: str
    attribute: str
    value: str
    text: str
    kind: str
    source_message_ids: tuple[str, ...]
    thread: str | None
    confidence: float
    valid_from: datetime
    valid_to: datetime | None
    superseded_by: str | None
    created_at: datetime
    metadata: Mapping[str, JSON]

    @property
    def current(self) -> bool:
        return self.valid_to is None


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. ``score`` is a similarity in [0, 1], higher is better.

    ``role`` and ``author`` say who said a message hit (``Message.role`` and ``Message.author``);
    both are None for fact hits, and ``author`` is None when the message named no author."""

    kind: Literal["message", "fact"]
    id: str
    score: float
    text: str
    tenant: str
    user: str
    thread: str | None
    seq: int | None
    created_at: datetime
    source_message_ids: tuple[str, ...] = ()
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    paths: Mapping[str, float] = field(default_factory=dict)
    role: str | None = None
    author: str | None = None


@dataclass(frozen=True, slots=True)
class VectorItem:
    kind: Literal["message", "fact"]
    id: str
    vector: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who did what to which records: ids and content hashes, never content."""

    id: int
    tenant: str
    at: datetime
    actor: str
    operation: str
    user: str | None
    thread: str | None
    count: int
    record_ids: tuple[str, ...]
    digests: tuple[str, ...]
    # Position and link in the tenant's hash chain (amber.governance.audit); None until chained.
    chain_seq: int | None = None
    chain_hash: str | None = None


@dataclass(frozen=True, slots=True)
class DeletionReceipt:
    operation: str
    tenant: str
    user: str
    thread: str | None
    counts: Mapping[str, int]
    at: datetime


@dataclass(frozen=True, slots=True)
class LearnJob:
    """A learn job: one per appended message. ``attempts`` counts its claims; ``last_error`` is what
    its latest failure recorded. ``died_at`` is set only on jobs ``Store.list_dead_learn_jobs`` lists:
    when the job was parked as dead."""

    id: str
    key: SessionKey
    message_id: str
    seq: int
    attempts: int
    last_error: str | None = None
    died_at: datetime | None = None
