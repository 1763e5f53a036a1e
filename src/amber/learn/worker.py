"""The learner: turns new messages into facts and vectors, off the hot path.

Every appended message enqueues one learn job in the same transaction (store contract), so
appending never waits for learning. A :class:`Learner` claims a batch of jobs with a lease, extracts
candidates per message, consolidates them into facts, embeds the batch's messages and new facts in
ONE embedder call, stores the vectors and completes the jobs. A crash anywhere leaves the jobs
leased; when the lease expires another learner re-claims them, and consolidation recognises what
was already recorded from a message, so a re-run creates no duplicate facts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Sequence

from ..errors import AmberError, InvalidInput
from ..keys import SessionKey
from ..records import Fact, LearnJob, Message, VectorItem
from ..store.base import Store
from .consolidate import ConsolidationStats, consolidate
from .extract import Extractor
from .rules import RuleExtractor

__all__ = ["Learner", "LearnerStats", "EMBED_ROLES"]

log = logging.getLogger("amber.learn")

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)
EMBED_ROLES = frozenset({"user", "assistant"})  # tool/event/system turns are not recalled by meaning


@dataclass
class LearnerStats:
    batches: int = 0
    jobs_done: int = 0
    jobs_retried: int = 0
    jobs_dead: int = 0
    texts_embedded: int = 0
    facts: ConsolidationStats = field(default_factory=ConsolidationStats)
    last_error: str | None = None


class Learner:
    """Process learn jobs from ``store``.

    ``extractor``: a :class:`RuleExtractor` by default; ``embedder``: vectors for recall (None: lexical
    only). ``tenant`` limits the learner to one tenant. Failed jobs retry after ``backoff`` *
    2**(attempt-1) seconds (at most ``max_backoff``) and are parked as dead after ``max_attempts``.

    Lifecycle is explicit: call :meth:`run_once` / :meth:`drain` yourself, run :meth:`run_forever`,
    or use ``async with Learner(...)`` to run it as a background task for the block's duration.
    """

    def __init__(
        self,
        store: Store,
        *,
        extractor: Extractor | None = None,
        embedder: Any | None = None,
        tenant: str | None = None,
        batch_size: int = 64,
        lease_seconds: float = 60.0,
        max_attempts: int = 5,
        backoff: float = 2.0,
        max_backoff: float = 600.0,
        poll_interval: float = 0.5,
        context_turns: int = 2,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size must be a positive integer")
        if max_attempts < 1:
            raise InvalidInput("max_attempts must be at least 1")
        self.store = store
        self.extractor: Extractor = extractor if extractor is not None else RuleExtractor()
        self.embedder = embedder
        self.tenant = tenant
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        self.context_turns = context_turns
        self.stats = LearnerStats()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- one batch -----------------------------------------------------------------------------
    async def run_once(self, limit: int | None = None) -> int:
        """Claim and process one batch. Returns how many jobs it finished (completed or parked)."""
        jobs = await self.store.claim_learn_jobs(
            limit=limit or self.batch_size, lease_seconds=self.lease_seconds, tenant=self.tenant
        )
        if not jobs:
            return 0
        self.stats.batches += 1
        messages, context = await self._load(jobs)
        done: list[str] = []
        finished = 0
        to_embed: list[tuple[Message | Fact, str]] = []
        ok_jobs: list[LearnJob] = []
        # Oldest statement first, so a later value supersedes an earlier one within a batch too.
        ordered = sorted(
            jobs, key=lambda j: (messages[j.id].created_at if j.id in messages else _EPOCH, str(j.key), j.seq)
        )
        for job in ordered:
            message = messages.get(job.id)
            if message is None:  # its session was deleted meanwhile: nothing to learn
                done.append(job.id)
                continue
            try:
                candidates = await self.extractor.extract(message, context.get(job.id, ()))
                facts = await consolidate(self.store, message, candidates, self.stats.facts)
            except AmberError as exc:
                finished += await self._fail(job, exc)
                continue
            except Exception as exc:  # an extractor bug must not kill the worker or lose the job
                log.exception("learning from message %s failed", job.message_id)
                finished += await self._fail(job, exc)
                continue
            ok_jobs.append(job)
            if message.role in EMBED_ROLES and message.content.strip():
                to_embed.append((message, message.content))
            to_embed.extend((f, f.text) for f in facts)
        if self.embedder is not None and to_embed:
            try:
                await self._embed(to_embed)
            except Exception as exc:  # the model or endpoint failed: retry the whole batch later
                for job in ok_jobs:
                    finished += await self._fail(job, exc)
                ok_jobs = []
        done.extend(j.id for j in ok_jobs)
        if done:
            await self.store.complete_learn_jobs(done)
        self.stats.jobs_done += len(done)
        return finished + len(done)

    async def _load(
        self, jobs: Sequence[LearnJob]
    ) -> tuple[dict[str, Message], dict[str, list[Message]]]:
        """The job's messages (and a few turns before each, for model extractors): one ranged read
        per session rather than one read per job."""
        by_key: dict[SessionKey, list[LearnJob]] = defaultdict(list)
        for job in jobs:
            by_key[job.key].append(job)
        messages: dict[str, Message] = {}
        context: dict[str, list[Message]] = {}
        for key, group in by_key.items():
            lo = max(0, min(j.seq for j in group) - 1 - self.context_turns)
            hi = max(j.seq for j in group)
            rows = await self.store.read_since(key, lo, limit=hi - lo)
            by_seq = {m.seq: m for m in rows}
            for job in group:
                m = by_seq.get(job.seq)
                if m is not None and m.id == job.message_id:
                    messages[job.id] = m
                    context[job.id] = [by_seq[s] for s in range(job.seq - self.context_turns, job.seq) if s in by_seq]
        return messages, context

    async def _embed(self, items: list[tuple[Message | Fact, str]]) -> None:
        vectors = await self.embedder.embed([text for _, text in items])
        if len(vectors) != len(items):
            raise AmberError(f"embedder returned {len(vectors)} vectors for {len(items)} texts")
        by_owner: dict[tuple[str, str], list[VectorItem]] = defaultdict(list)
        for (record, _), vector in zip(items, vectors):
            if isinstance(record, Message):
                owner, kind = (record.key.tenant, record.key.user), "message"
            else:
                owner, kind = (record.tenant, record.user), "fact"
            by_owner[owner].append(VectorItem(kind, record.id, tuple(vector)))  # type: ignore[arg-type]
        for (tenant, user), vitems in by_owner.items():
            await self.store.put_vectors(tenant, user, self.embedder.name, vitems)
        self.stats.texts_embedded += len(items)

    async def _fail(self, job: LearnJob, exc: BaseException) -> int:
        """Record the failure on the job; 1 if the job is now parked as dead, else 0."""
        error = f"{type(exc).__name__}: {exc}"
        self.stats.last_error = error
        if job.attempts >= self.max_attempts:
            await self.store.fail_learn_job(job.id, error, retry_in=None)
            self.stats.jobs_dead += 1
            log.warning("learn job %s is dead after %d attempts: %s", job.id, job.attempts, error)
            return 1
        retry_in = min(self.max_backoff, self.backoff * (2 ** (job.attempts - 1)))
        await self.store.fail_learn_job(job.id, error, retry_in=retry_in)
        self.stats.jobs_retried += 1
        return 0

    # -- loops ---------------------------------------------------------------------------------
    async def drain(self, *, max_batches: int | None = None) -> int:
        """Run batches until none is claimable now (retries scheduled later are left). Returns jobs finished."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            n = await self.run_once()
            batches += 1
            if n == 0:
                break
            total += n
        return total

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Process batches until ``stop`` is set. Store outages are logged and retried, never fatal."""
        stop = stop or asyncio.Event()
        delay = self.poll_interval
        while not stop.is_set():
            try:
                n = await self.run_once()
                delay = self.poll_interval
            except AmberError as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("learner batch failed, retrying in %.1fs: %s", delay, exc)
                n = 0
                delay = min(self.max_backoff, max(delay * 2, self.poll_interval))
            if n == 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.run_forever(self._stop), name="amber-learner")

    async def stop(self) -> None:
        """Stop after the current batch (a batch cut short would only be re-run, never lost)."""
        if self._task is None:
            return
        assert self._stop is not None
        self._stop.set()
        try:
            await self._task
        finally:
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> "Learner":
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
