"""Consolidation: turn extracted candidates into facts without duplicates or silent overwrites.

For each candidate, against the user's facts with the same attribute:

* already learned from this very message, with this value (a job re-run after a crash) -> nothing
  is written, counted as ``replayed``;
* same value as a current fact (exact, or near: case, spacing, punctuation, small typos) -> merge:
  a new version with the union of source message ids supersedes it (valid_from kept), so provenance
  grows and nothing is mutated in place;
* another value, stated after the current one -> the new fact supersedes it (the old one gets
  valid_to and stays in history);
* another value, stated *before* the current one (a job that was retried late) -> recorded as
  history only, counted as ``stale``: an older statement never replaces a newer one, but it was
  true for a while, so it enters the history already superseded (``valid_from`` its message's
  time, ``valid_to`` and ``superseded_by`` from the statement that came next) and the current
  facts are untouched. Facts are never rewritten, so the fact before it keeps its own
  ``valid_to``: the two periods overlap.

One message stating several values of one attribute ("order 12345 and order 67890") states them
all: they are all current afterwards. A value never supersedes one learned from the same message,
nor a current value that the message restates (that one is merged instead); what the message does
not restate is superseded as usual. A later message with one value supersedes them all, as it
would supersede one: an attribute's current facts are replaced as a set.

Every write is a compare-and-set on what was read (``record_fact(expect_current=...)``): two learners
(``amber worker`` and an in-process one, or two processes) that read the same attribute at once
cannot both add a value. The loser gets VersionConflict, reads the attribute again and decides anew
(usually: merge into what the winner recorded), up to ``ATTEMPTS`` times; after that the conflict
goes to the learner, which retries the job later.
"""

from __future__ import annotations

import asyncio
import difflib
import random
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import VersionConflict
from ..records import Fact, Message, NewFact
from ..store.base import Store
from .extract import Candidate

__all__ = ["ConsolidationStats", "consolidate", "same_value", "ATTEMPTS"]

# Reads and writes per candidate before a conflict is left to the job's retry. Each conflict means
# another learner's write to the attribute committed, so a few attempts suffice even when contended.
ATTEMPTS = 5

_NORM = re.compile(r"[\W_]+", re.UNICODE)


def _norm(value: str) -> str:
    return _NORM.sub("", value.casefold())


def same_value(a: str, b: str, *, near: float = 0.92) -> bool:
    """Exact after normalisation, or a near-duplicate (similarity ratio >= ``near``)."""
    na, nb = _norm(a), _norm(b)
    if na == nb:
        return True
    if not na or not nb or min(len(na), len(nb)) < 8:
        return False  # short values (ids, numbers) must match exactly: P-1234 vs P-1243 is an update
    return difflib.SequenceMatcher(None, na, nb).ratio() >= near


@dataclass
class ConsolidationStats:
    created: int = 0
    merged: int = 0
    superseded: int = 0
    replayed: int = 0
    stale: int = 0
    conflicts: int = 0  # writes that lost a compare-and-set to another learner and were decided again


async def consolidate(
    store: Store, message: Message, candidates: Sequence[Candidate], stats: ConsolidationStats
) -> list[Fact]:
    """Record ``candidates`` learned from ``message``; returns the facts that now hold them (new
    versions and, for a re-run, the ones recorded the first time) so the caller can embed them."""
    out: list[Fact] = []
    for cand in candidates:
        # The other values this message states for the attribute: the current facts holding them
        # are merged by those candidates, not superseded by this one.
        siblings = [c.value for c in candidates if c is not cand and c.attribute == cand.attribute]
        for attempt in range(1, ATTEMPTS + 1):
            try:
                fact = await _one(store, message, cand, siblings, stats)
                break
            except VersionConflict:
                # Another learner changed the attribute's current facts since we read them.
                stats.conflicts += 1
                if attempt == ATTEMPTS:
                    raise
                # A short random pause, so learners that keep colliding on one attribute fall apart.
                await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))
        if fact is not None:
            out.append(fact)
    return out


async def _one(
    store: Store, message: Message, cand: Candidate, siblings: Sequence[str], stats: ConsolidationStats
) -> Fact | None:
    tenant, user = message.key.tenant, message.key.user
    history = await store.list_facts(tenant, user, attribute=cand.attribute, include_superseded=True)
    # A replay is this candidate again (same message AND same value), not any earlier candidate of
    # the message: a second value of the attribute in the same message is new.
    done = [f for f in history if message.id in f.source_message_ids and same_value(f.value, cand.value)]
    if done:
        stats.replayed += 1
        current = [f for f in done if f.current]
        return current[0] if current else None
    current = [f for f in history if f.current]
    same = [f for f in current if same_value(f.value, cand.value)]
    if same:
        old = same[0]
        merged = await store.record_fact(
            tenant, user,
            NewFact(
                attribute=old.attribute, value=old.value, text=old.text, kind=old.kind,
                source_message_ids=(*old.source_message_ids, message.id), thread=old.thread,
                confidence=max(old.confidence, cand.confidence), valid_from=old.valid_from,
                metadata={**old.metadata, "merged": int(old.metadata.get("merged", 0)) + 1},
            ),
            supersedes=[old.id], expect_current=[f.id for f in current],
        )
        stats.merged += 1
        return merged
    if current and message.created_at < max(f.valid_from for f in current):
        later = [f for f in history if f.valid_from > message.created_at]
        await store.record_fact(
            tenant, user, _new_fact(message, cand),
            superseded_by=_next_statement(later).id, expect_current=[f.id for f in current],
        )
        stats.stale += 1
        return None  # history: not embedded, recall finds what is current
    # Values of this message stay current beside this one (it lists them together).
    replaced = [f for f in current if message.id not in f.source_message_ids
                and not any(same_value(f.value, v) for v in siblings)]
    fact = await store.record_fact(
        tenant, user, _new_fact(message, cand),
        supersedes=[f.id for f in replaced], expect_current=[f.id for f in current],
    )
    stats.created += 1
    stats.superseded += len(replaced)
    return fact


def _new_fact(message: Message, cand: Candidate) -> NewFact:
    return NewFact(
        attribute=cand.attribute, value=cand.value, text=cand.text, kind=cand.kind,
        source_message_ids=(message.id,), thread=message.key.thread, confidence=cand.confidence,
        valid_from=message.created_at, metadata=dict(cand.metadata),
    )


def _next_statement(later: Sequence[Fact]) -> Fact:
    """The fact that ended a late statement's period: the earliest later statement, in its newest
    version (a merge keeps valid_from, so versions of one statement share it)."""
    start = min(f.valid_from for f in later)
    return max((f for f in later if f.valid_from == start), key=lambda f: (f.current, f.created_at, f.id))
