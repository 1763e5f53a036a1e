"""``AmberMemory``: an AutoGen ``Memory`` that recalls a user's learned facts and past turns.

Each turn, :meth:`AmberMemory.update_context` searches the user's memory for the last user message
and injects ONE block of quoted data (provenance and dates, never instructions) within a token budget.
The block replaces the previous turn's block:

* with :class:`amber.autogen.DurableChatCompletionContext` through its seam ``set_memory_block`` --
  merged into the leading system message and never written to the durable transcript;
* with any other ``ChatCompletionContext``, as a system message placed first in what the model sees
  (so clients that accept a single, leading system message work); the previous turn's block is
  found and removed first, so there is never a second one.

If recall fails (the store is down), ``update_context`` degrades: the previous block is removed, the
turn goes on without one, a warning names the session key and :attr:`AmberMemory.recall_failures`
counts it. ``query`` is an explicit call and raises.

``query`` results are ``MemoryContent(content=text, mime_type="text/plain", metadata=...)`` with this
metadata schema (see docs/memory.md)::

    id                  str         message or fact id
    kind                "turn" | "fact"
    score               float       in [0, 1], higher is better
    source_message_ids  list[str]   the turns a fact was learned from (a turn: itself)
    valid_from          str | None  ISO 8601, facts only
    valid_to            str | None  ISO 8601 when superseded, else None
    superseded          bool        a fact with valid_to, or a turn whose fact was superseded
    thread              str | None
    seq                 int | None  turns only
    created_at          str         ISO 8601
    paths               dict        per-path scores (lexical, vector, fused, time, neighbour...)

``add`` stores an explicit memory (a fact of kind ``explicit``; metadata ``attribute`` makes a later
``add`` with the same attribute supersede it). Single records: ``correct``/``forget`` a fact,
``correct_message``/``forget_message`` a transcript message. ``clear`` erases everything recall can return
for the user -- all transcripts and facts, with pending learn jobs and session state -- in one audited
``store.delete_user``. ``close`` never deletes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

from autogen_core import CancellationToken, Component, ComponentModel
from autogen_core.memory import Memory, MemoryContent, MemoryMimeType, MemoryQueryResult, UpdateContextResult
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import FunctionExecutionResultMessage, SystemMessage, UserMessage
from pydantic import BaseModel, Field, SecretStr
from typing_extensions import Self

from ..embed import embedder_spec, open_embedder
from ..errors import AmberError, InvalidInput, NotFound
from ..keys import SessionKey
from ..records import Fact, Hit, Message, NewFact, VectorItem
from ..recall import BLOCK_OPEN, Recall, render_block
from ..store.base import Store
from .context import store_url_from_config

if TYPE_CHECKING:
    from ..learn import Learner

__all__ = ["AmberMemory", "AmberMemoryConfig", "hit_metadata"]

log = logging.getLogger("amber.autogen.memory")


class AmberMemoryConfig(BaseModel):
    """Component config of :class:`AmberMemory`. The store URL is a secret (it may hold a password)."""

    store_url: SecretStr
    tenant: str
    user: str
    thread: str
    name: str | None = None
    limit: int = Field(default=8, ge=1, le=200)
    max_tokens: int = Field(default=600, ge=50)
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    modes: list[str] = Field(default_factory=lambda: ["lexical", "vector"])
    kinds: list[str] = Field(default_factory=lambda: ["message", "fact"])
    neighbours: int = Field(default=0, ge=0, le=5)
    embedder: str | None = None
    learn: bool = False
    extractor_model_client: ComponentModel | None = None


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def hit_metadata(hit: Hit) -> dict[str, Any]:
    """The documented metadata of one recalled hit (JSON-serialisable)."""
    return {
        "id": hit.id,
        "kind": "fact" if hit.kind == "fact" else "turn",
        "score": float(hit.score),
        "source_message_ids": list(hit.source_message_ids),
        "valid_from": _iso(hit.valid_from),
        "valid_to": _iso(hit.valid_to),
        "superseded": hit.valid_to is not None or "superseded" in hit.paths,
        "thread": hit.thread,
        "seq": hit.seq,
        "created_at": _iso(hit.created_at),
        "role": hit.role,
        "author": hit.author,
        "paths": {k: float(v) for k, v in hit.paths.items()},
    }


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part for part in content if isinstance(part, str))
    return ""


class AmberMemory(Memory, Component[AmberMemoryConfig]):
    """Long-term memory for one user (``key.tenant``/``key.user``), used from thread ``key.thread``.

    ``store``: an open :class:`amber.Store` (not closed by this memory) or a store URL (opened on
    first use, closed by :meth:`close`). ``embedder``: an embedder or spec (``"minilm"``); use the
    same one the learner uses. ``extractor``: for the in-process learner (rules by default).

    ``learn=True`` runs an in-process :class:`amber.learn.Learner` (for the key's tenant), owned by
    this memory: started on first use -- AssistantAgent and teams loaded from config never call
    :meth:`start` -- or by :meth:`start` / ``async with``, and stopped by :meth:`close`. If it crashed,
    the next use logs the crash (naming the session key) and starts a new one. Nothing in AutoGen
    calls ``Memory.close()``: call it when you are done (or the task is cancelled with the event
    loop; a batch cut short is re-run, never lost). Without ``learn``, run ``amber worker``.
    """

    component_type = "memory"
    component_config_schema = AmberMemoryConfig
    component_provider_override = "amber.autogen.AmberMemory"

    def __init__(
        self,
        store: Store | str | SecretStr,
        key: SessionKey,
        *,
        name: str | None = None,
        limit: int = 8,
        max_tokens: int = 600,
        min_score: float = 0.0,
        modes: Sequence[str] = ("lexical", "vector"),
        kinds: Sequence[str] = ("message", "fact"),
        neighbours: int = 0,
        embedder: Any | None = None,
        learn: bool = False,
        extractor: Any | None = None,
        store_url: str | SecretStr | None = None,
    ) -> None:
        if not isinstance(key, SessionKey):
            raise InvalidInput(f"key must be an amber.SessionKey, got {type(key).__name__}")
        if isinstance(store, (str, SecretStr)):
            self._url = store if isinstance(store, SecretStr) else SecretStr(store)
            self._store: Store | None = None
        elif isinstance(store, Store):
            self._store = store
            url = store_url if store_url is not None else getattr(store, "url", "")
            self._url = url if isinstance(url, SecretStr) else SecretStr(url)
        else:
            raise InvalidInput(f"store must be an amber.Store or a store URL, got {type(store).__name__}")
        self._owns_store = self._store is None
        self._key = key
        self._name = name or f"amber:{key.tenant}/{key.user}"
        self._limit = limit
        self._max_tokens = max_tokens
        self._min_score = min_score
        self._modes = tuple(modes)
        self._kinds = tuple(kinds)
        self._neighbours = neighbours
        self._embedder = open_embedder(embedder) if isinstance(embedder, str) else embedder
        self._learn = learn
        self._extractor = extractor
        self._learner: Learner | None = None
        self._open_lock = asyncio.Lock()
        self._learner_lock = asyncio.Lock()
        self._last_block: str | None = None
        self._recall_failures = 0

    # -- identity and lifecycle ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def key(self) -> SessionKey:
        return self._key

    @property
    def recall_failures(self) -> int:
        """How many :meth:`update_context` calls went on without a block because recall failed
        (each is logged as a warning naming the session key)."""
        return self._recall_failures

    @property
    def last_block(self) -> str | None:
        """The block injected by the latest :meth:`update_context` (None if nothing was recalled)."""
        return self._last_block

    @property
    def learning(self) -> bool:
        """True while this memory's in-process learner (``learn=True``) runs."""
        return self._learner is not None and self._learner.running

    async def store(self) -> Store:
        """The store; one given as a URL is opened on first use."""
        if self._store is None:
            async with self._open_lock:  # two first uses at once open one store
                if self._store is None:
                    from ..store import open_store

                    self._store = await open_store(self._url.get_secret_value())
        return self._store

    async def start(self) -> None:
        """Open the store and, with ``learn=True``, start the in-process learner (else first use does)."""
        await self._ready()

    async def _ready(self) -> Store:
        """The store, with the learner running if ``learn=True``: every use of the memory goes
        through here, so the learner starts on first use and a crashed one is noticed at the next."""
        store = await self.store()
        if self._learn and not self.learning:
            async with self._learner_lock:
                if not self.learning:
                    await self._start_learner(store)
        return store

    async def _start_learner(self, store: Store) -> None:
        from ..learn import Learner

        if self._learner is not None:  # started and not stopped by close(): its task ended on its own
            dead, self._learner = self._learner, None
            try:
                await dead.stop()  # re-raises what ended it
            except (Exception, asyncio.CancelledError) as exc:
                log.error("the in-process learner of %s crashed (%s: %s); starting a new one",
                          self._key, type(exc).__name__, exc, exc_info=exc)
            else:
                log.warning("the in-process learner of %s had stopped; starting a new one", self._key)
        else:
            log.info("starting the in-process learner of %s (learn=True); close() stops it", self._key)
        self._learner = Learner(store, extractor=self._extractor, embedder=self._embedder,
                                tenant=self._key.tenant)
        await self._learner.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the in-process learner and close a store this memory opened -- the store also when
        stopping the learner raised (what it crashed of is raised after). Never deletes. A later
        use opens and starts them again."""
        learner, self._learner = self._learner, None
        try:
            if learner is not None:
                await learner.stop()
        finally:
            if self._owns_store and self._store is not None:
                store, self._store = self._store, None
                await store.close()

    # -- recall ------------------------------------------------------------------------------------
    def _recall(self, store: Store) -> Recall:
        return Recall(store, embedder=self._embedder)

    async def _search(self, query: str, *, exclude_texts: Sequence[str] = (), limit: int | None = None,
                      modes: Sequence[str] | None = None, kinds: Sequence[str] | None = None) -> list[Hit]:
        store = await self._ready()
        hits = await self._recall(store).search(
            self._key.tenant, self._key.user, query, limit=limit or self._limit,
            modes=modes or self._modes, kinds=kinds or self._kinds, neighbours=self._neighbours,
            exclude_texts=exclude_texts,
        )
        return [h for h in hits if h.score >= self._min_score]

    @staticmethod
    def _content(hit: Hit) -> MemoryContent:
        return MemoryContent(content=hit.text, mime_type=MemoryMimeType.TEXT, metadata=hit_metadata(hit))

    async def update_context(self, model_context: ChatCompletionContext) -> UpdateContextResult:
        messages = await model_context.get_messages()
        query = ""
        for m in reversed(messages):
            if isinstance(m, UserMessage):
                query = _text_of(m.content)
                break
        hits: list[Hit] = []
        if query.strip():
            # Turns already in the context are not worth a second copy in the block.
            in_context = [c for m in messages if not isinstance(m, SystemMessage)
                          if (c := _text_of(getattr(m, "content", None)))]
            try:
                hits = await self._search(query, exclude_texts=in_context)
            except Exception as exc:  # recall is an aid: a store outage must not fail the agent's turn
                self._recall_failures += 1
                log.warning("memory recall for %s failed, the turn goes on without a memory block "
                            "(%d failures so far): %s: %s", self._key, self._recall_failures,
                            type(exc).__name__, exc, exc_info=not isinstance(exc, AmberError))
        block = render_block(hits, max_tokens=self._max_tokens)
        await self._inject(model_context, block.text or None)
        return UpdateContextResult(memories=MemoryQueryResult(results=[self._content(h) for h in block.hits]))

    async def _inject(self, model_context: ChatCompletionContext, text: str | None) -> None:
        self._last_block = text
        seam = getattr(model_context, "set_memory_block", None)
        if callable(seam):
            seam(text)
            return
        # Any other context: remove our previous block, then place the new one where the model
        # sees it first. AutoGen's contexts keep their messages in ``_messages``.
        msgs: list[Any] = model_context._messages  # noqa: SLF001 - the base class's own storage
        msgs[:] = [m for m in msgs if not _is_block(m)]
        if text is None:
            return
        block = SystemMessage(content=text)
        lead = 0
        while lead < len(msgs) and isinstance(msgs[lead], SystemMessage):
            lead += 1
        # First choice: right after the leading system messages. A sliding window (e.g.
        # BufferedChatCompletionContext) may cut that off; then try each place from the window's
        # start on. A place counts only if the model sees the block first AND no tool result right
        # after it: the block would hide that orphaned result from the context's own check on
        # messages[0], and OpenAI-style APIs reject a tool result without its call.
        window = await model_context.get_messages()
        start = next((i for i, m in enumerate(msgs) if window and m is window[0]), len(msgs))
        for position in dict.fromkeys((lead, *range(max(start, lead), len(msgs) + 1))):
            msgs.insert(position, block)
            if _leads_a_valid_window(await model_context.get_messages(), block):
                return
            del msgs[position]
        msgs.append(block)  # last resort: visible, though not leading, and nothing after it

    async def query(
        self, query: str | MemoryContent, cancellation_token: CancellationToken | None = None, **kwargs: Any
    ) -> MemoryQueryResult:
        """Recall for ``query``. kwargs: ``limit``, ``modes``, ``kinds``."""
        text = query if isinstance(query, str) else _text_of(query.content)
        if not isinstance(text, str):
            raise InvalidInput("query must be text")
        hits = await self._search(text, limit=kwargs.get("limit"), modes=kwargs.get("modes"),
                                  kinds=kwargs.get("kinds"))
        return MemoryQueryResult(results=[self._content(h) for h in hits])

    # -- writes ------------------------------------------------------------------------------------
    async def add(self, content: MemoryContent, cancellation_token: CancellationToken | None = None) -> None:
        """Store an explicit memory as a fact of kind ``explicit``. ``metadata["attribute"]`` names
        what it is about: a later ``add`` with the same attribute and another value supersedes it."""
        await self.add_fact(content)

    async def add_fact(self, content: MemoryContent | str) -> Fact:
        if isinstance(content, str):
            content = MemoryContent(content=content, mime_type=MemoryMimeType.TEXT)
        raw = content.content
        if isinstance(raw, dict):
            text = json.dumps(raw, ensure_ascii=False, sort_keys=True)
        elif isinstance(raw, str):
            text = raw
        else:
            raise InvalidInput("AmberMemory stores text or JSON memories, not images or bytes")
        if not text.strip():
            raise InvalidInput("memory content is empty")
        meta = dict(content.metadata or {})
        attribute = meta.pop("attribute", None) or "explicit:" + hashlib.sha256(text.encode()).hexdigest()[:16]
        value = str(meta.pop("value", text))
        store = await self._ready()
        tenant, user = self._key.tenant, self._key.user
        current = [f for f in await store.list_facts(tenant, user, attribute=attribute) if f.current]
        for f in current:
            if f.value == value and f.text == text:
                return f  # the same explicit memory twice is one fact
        safe_meta = json.loads(json.dumps(meta, default=str))
        fact = await store.record_fact(
            tenant, user,
            NewFact(attribute=attribute, value=value, text=text, kind="explicit", thread=self._key.thread,
                    metadata={**safe_meta, "added_by": "AmberMemory.add"}),
            supersedes=[f.id for f in current],
        )
        await self._embed_fact(store, fact)
        return fact

    async def _embed_fact(self, store: Store, fact: Fact) -> None:
        if self._embedder is None:
            return
        try:
            [vector] = await self._embedder.embed([fact.text])
        except Exception as exc:  # the fact is stored and found lexically; `amber reindex` repairs
            log.warning("could not embed fact %s: %s", fact.id, exc)
            return
        await store.put_vectors(fact.tenant, fact.user, self._embedder.name,
                                [VectorItem("fact", fact.id, tuple(vector))])

    async def correct(self, fact_id: str, value: str, *, text: str | None = None) -> Fact:
        """Record a correction: a new fact with ``value`` replaces the value ``fact_id`` holds now --
        ``fact_id`` itself if current; if it was already superseded (a value recalled earlier), the
        current fact that replaced it (followed through ``superseded_by``), or, when that trail is
        gone, the attribute's current facts. Other current values of the attribute (one message can
        state several) stay. Every earlier version stays in history."""
        store = await self._ready()
        tenant, user = self._key.tenant, self._key.user
        old = await store.get_fact(tenant, user, fact_id)
        if old is None:
            raise NotFound(f"no fact {fact_id!r} for this user")
        if text is None:
            text = old.text.replace(old.value, value) if old.value and old.value in old.text else value
        replaced = await self._current_successor(store, old)
        if replaced is not None:
            current = [replaced.id]
        else:  # superseded and its successor deleted: what the attribute holds now is what is corrected
            current = [f.id for f in await store.list_facts(tenant, user, attribute=old.attribute)
                       if f.current]
        fact = await store.record_fact(
            tenant, user,
            NewFact(attribute=old.attribute, value=value, text=text, kind=old.kind,
                    source_message_ids=old.source_message_ids, thread=old.thread,
                    metadata={**old.metadata, "corrects": old.id}),
            supersedes=current,
        )
        await self._embed_fact(store, fact)
        return fact

    async def _current_successor(self, store: Store, fact: Fact) -> Fact | None:
        """``fact`` if current, else the current fact its ``superseded_by`` trail leads to."""
        seen: set[str] = set()
        while not fact.current:
            if fact.superseded_by is None or fact.superseded_by in seen:
                return None
            seen.add(fact.id)
            successor = await store.get_fact(self._key.tenant, self._key.user, fact.superseded_by)
            if successor is None:
                return None
            fact = successor
        return fact

    async def forget(self, fact_id: str) -> bool:
        """Delete one fact (audited by the store). False if this user has no such fact."""
        store = await self._ready()
        return await store.delete_fact(self._key.tenant, self._key.user, fact_id)

    async def forget_message(self, message_id: str, *, thread: str | None = None) -> bool:
        """Delete one message of this user's transcript -- of this memory's thread, or of ``thread``
        (a recalled turn names its thread) -- with its index entries and vectors, and the facts
        learned from it alone. False if that session has no such message. The other messages keep
        their seqs. Audited by the store as ``message.delete``."""
        store = await self._ready()
        self._last_block = None  # a cached block may quote it
        return await store.delete_message(self._session(thread), message_id)

    async def correct_message(
        self, message_id: str, content: str, *, reason: str | None = None, thread: str | None = None
    ) -> Message:
        """Replace one message's text (same id and seq), e.g. a mistyped policy number; facts
        learned from the old text alone are dropped and the message is learned again. Raises
        :class:`~amber.errors.NotFound` if that session has no such message."""
        store = await self._ready()
        self._last_block = None
        return await store.correct_message(self._session(thread), message_id, content, reason=reason)

    def _session(self, thread: str | None) -> SessionKey:
        return self._key if thread is None else SessionKey(self._key.tenant, self._key.user, thread)

    async def clear(self) -> None:
        """Erase this user's memory: everything recall can return for ``key.tenant``/``key.user``
        -- every thread's transcript (turns are recalled) and every fact, current or superseded --
        with their vectors, pending learn jobs (or they would learn the facts again) and the
        sessions' state blobs (a window start or a team's state refers to the erased turns). One
        audited erasure, ``store.delete_user`` (receipt ``user.delete``); a late learn job cannot
        bring a fact back. Other users are untouched. Not a reset: ``team.reset()`` clears the model
        context, never this. To drop single records use :meth:`forget` / :meth:`forget_message`."""
        store = await self._ready()
        await store.delete_user(self._key.tenant, self._key.user)
        self._last_block = None

    # -- component config --------------------------------------------------------------------------
    def _to_config(self) -> AmberMemoryConfig:
        url = self._url.get_secret_value()
        if "***" in url:
            log.warning("AmberMemory config holds a redacted store URL; pass store_url= to keep the password")
        spec = embedder_spec(self._embedder)
        if self._embedder is not None and spec is None:
            log.warning("embedder %r has no spec; the config will not re-create it", self._embedder)
        client = getattr(self._extractor, "model_client", None)
        dumped = client.dump_component() if client is not None and hasattr(client, "dump_component") else None
        return AmberMemoryConfig(
            store_url=self._url, tenant=self._key.tenant, user=self._key.user, thread=self._key.thread,
            name=self._name, limit=self._limit, max_tokens=self._max_tokens, min_score=self._min_score,
            modes=list(self._modes), kinds=list(self._kinds), neighbours=self._neighbours,
            embedder=None if spec == "none" else spec, learn=self._learn, extractor_model_client=dumped,
        )

    @classmethod
    def _from_config(cls, config: AmberMemoryConfig) -> Self:
        url = store_url_from_config(config.store_url, cls.__name__)
        extractor = None
        if config.extractor_model_client is not None:
            from autogen_core.models import ChatCompletionClient

            from ..learn import ModelExtractor

            extractor = ModelExtractor(ChatCompletionClient.load_component(config.extractor_model_client))
        return cls(
            url, SessionKey(config.tenant, config.user, config.thread), name=config.name,
            limit=config.limit, max_tokens=config.max_tokens, min_score=config.min_score, modes=config.modes,
            kinds=config.kinds, neighbours=config.neighbours, embedder=config.embedder, learn=config.learn,
            extractor=extractor,
        )


def _is_block(message: Any) -> bool:
    return isinstance(message, SystemMessage) and isinstance(message.content, str) \
        and message.content.startswith(BLOCK_OPEN)


def _leads_a_valid_window(window: Sequence[Any], block: SystemMessage) -> bool:
    """Only system messages precede the block in the window, and no tool result follows it."""
    for i, m in enumerate(window):
        if m is block:
            after = window[i + 1] if i + 1 < len(window) else None
            return not isinstance(after, FunctionExecutionResultMessage)
        if not isinstance(m, SystemMessage):
            return False
    return False
