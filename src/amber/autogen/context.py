"""A durable AutoGen model context: every message is written through to an Amber store, and every
turn reads its window back from it.

    store = await amber.open_store("sqlite:///amber.db")
    key = amber.SessionKey("acme", "u-42", "claim-7788")
    agent = AssistantAgent("support", model_client,
                           model_context=DurableChatCompletionContext(store, key, window=40))

Semantics (see docs/agentchat.md for the reasoning):

* **Views.** Several agents of one team may share a session key. Each context is the *view* of one
  agent (``agent_name``) and sees only the messages added to that view -- exactly what AutoGen keeps
  in that agent's own context (its own replies as ``AssistantMessage``, the others' as
  ``UserMessage``). Seeing every agent's messages would show a model other agents' replies as its
  own and duplicate everything AutoGen already relays between participants. A context without an
  ``agent_name`` is the session's unnamed view, which also holds messages written by other adapters
  (REST, AG2, imports).
* **Write-through.** ``add_message`` returns after the message is durable. ``get_messages`` reads the
  window from the store every time, so another process's writes are seen on the next turn.
* **Idempotency.** A message's key is derived from the session, the view, the message itself and the
  key of the message before it in the view. A retried append (the store was briefly unavailable) or
  the same step run twice at once from the same starting point stores one message, and a message
  identical to the one right before it in the view is a retry, stored once (AutoGen re-delivers a
  participant's buffered messages after its turn failed). A user who says "yes", gets an answer and
  says "yes" again stores two: the second follows a different message. To make a replayed *request*
  idempotent (same request again after a crash), wrap it in :func:`idempotent_turn`.
* **clear()** starts the window afresh (a "window start" marker in the session's state); nothing
  durable is deleted. **save_state()** is a small reference to the session, not a copy of the
  transcript; **load_state()** accepts it (no messages duplicated) or AutoGen's own
  ``{"messages": [...]}`` from a plain context, whose messages it imports once.
* **Memory seam.** :meth:`DurableChatCompletionContext.set_memory_block` keeps an in-process block that
  ``get_messages()`` merges into the leading system message; it is never written to the transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterator, List, Literal, Mapping, Sequence, Union

from autogen_core import Component, ComponentModel
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import (
    ChatCompletionClient,
    FunctionExecutionResultMessage,
    LLMMessage,
    SystemMessage,
    UserMessage,
)
from pydantic import BaseModel, Field, PositiveInt, SecretStr, field_serializer
from typing_extensions import Self

from ..errors import InvalidInput, StoreUnavailable
from ..keys import SessionKey, validate_part
from ..records import Message
from ..store import Store, open_store, redact_url
from . import _codec

__all__ = [
    "DurableChatCompletionContext",
    "DurableChatCompletionContextConfig",
    "Unbounded",
    "LastN",
    "TokenBudget",
    "HeadAndTail",
    "Window",
    "idempotent_turn",
]

log = logging.getLogger(__name__)

STATE_FORMAT = "amber.autogen.context/1"


# -- windowing strategies (pydantic models so they travel in the component config) ---------------
class Unbounded(BaseModel):
    """Every message since the window start (AutoGen's ``UnboundedChatCompletionContext``)."""

    kind: Literal["unbounded"] = "unbounded"


class LastN(BaseModel):
    """The last ``n`` messages (AutoGen's ``BufferedChatCompletionContext``)."""

    kind: Literal["last"] = "last"
    n: PositiveInt


class TokenBudget(BaseModel):
    """The most recent messages whose tokens fit ``max_tokens``, counted offline
    (:func:`amber.tokens.estimate_tokens`) or by the context's ``model_client.count_tokens``.
    Unlike AutoGen's ``TokenLimitedChatCompletionContext`` (which drops from the middle) this keeps a
    contiguous recent suffix, so the store can serve it without reading the whole session."""

    kind: Literal["tokens"] = "tokens"
    max_tokens: PositiveInt


class HeadAndTail(BaseModel):
    """The first ``head`` and last ``tail`` messages with a "Skipped N messages." note between them
    (AutoGen's ``HeadAndTailChatCompletionContext``)."""

    kind: Literal["head_and_tail"] = "head_and_tail"
    head: PositiveInt
    tail: PositiveInt


Window = Annotated[Union[Unbounded, LastN, TokenBudget, HeadAndTail], Field(discriminator="kind")]


class DurableChatCompletionContextConfig(BaseModel):
    """Component config. ``store_url`` is a secret: in-process it round-trips whole; in a JSON dump
    it is written with its password redacted, never in clear."""

    store_url: SecretStr
    session: str
    agent_name: str | None = None
    window: Window = Field(default_factory=Unbounded)
    model_client: ComponentModel | None = None
    initial_messages: List[LLMMessage] | None = None

    @field_serializer("store_url", when_used="json")
    def _redacted(self, value: SecretStr) -> str:
        return redact_url(value.get_secret_value())


# -- request-scoped idempotency ---------------------------------------------------------------
@dataclass
class _Turn:
    turn_id: str
    counters: dict[tuple[str, str | None], int] = field(default_factory=dict)


_TURN: contextvars.ContextVar[_Turn | None] = contextvars.ContextVar("amber_autogen_turn", default=None)


@contextlib.contextmanager
def idempotent_turn(turn_id: str) -> Iterator[None]:
    """Derive message keys from ``turn_id`` (e.g. your HTTP request's idempotency key) and each
    message's position in the turn, so running the same request again -- after a crash, or a load
    balancer retry -- stores no message twice. Messages whose content differs on the replay (a model
    that answers differently) are stored as new messages."""
    if not isinstance(turn_id, str) or not turn_id or len(turn_id) > 256:
        raise InvalidInput("turn_id must be a non-empty string of at most 256 characters")
    token = _TURN.set(_Turn(turn_id))
    try:
        yield
    finally:
        _TURN.reset(token)


class DurableChatCompletionContext(ChatCompletionContext, Component[DurableChatCompletionContextConfig]):
    """An AutoGen model context whose messages live in an Amber store, keyed by session and agent.

    Args:
        store: an open :class:`amber.Store` (not closed by this context), or a store URL opened
            lazily on first use (and closed by :meth:`close`).
        key: the session (:class:`amber.SessionKey` or its ``tenant/user/thread`` string form).
        agent_name: the view inside the session: give each agent of a team its own name.
        window: ``None`` (unbounded), an ``int`` (last N), or :class:`Unbounded`, :class:`LastN`,
            :class:`TokenBudget`, :class:`HeadAndTail`.
        model_client: counts tokens for :class:`TokenBudget` (``count_tokens``); offline estimate if None.
        initial_messages: written once to the view the first time it is used (idempotent); like
            AutoGen's, they leave the window on ``clear()``.
        store_url: the URL to put in the component config when ``store`` is a Store object whose
            ``url`` is redacted (it has a password); defaults to ``store.url``.
    """

    component_config_schema = DurableChatCompletionContextConfig
    component_provider_override = "amber.autogen.DurableChatCompletionContext"

    _APPEND_ATTEMPTS = 3

    def __init__(
        self,
        store: Store | str,
        key: SessionKey | str,
        *,
        agent_name: str | None = None,
        window: int | Unbounded | LastN | TokenBudget | HeadAndTail | None = None,
        model_client: ChatCompletionClient | None = None,
        initial_messages: Sequence[LLMMessage] | None = None,
        store_url: str | SecretStr | None = None,
    ) -> None:
        super().__init__(None)
        self._key = key if isinstance(key, SessionKey) else SessionKey.parse(key)
        if agent_name is not None:
            validate_part("agent_name", agent_name)
        self._view = agent_name
        self._window = _window(window)
        self._model_client = model_client
        self._initial = _codec.as_llm_messages(list(initial_messages)) if initial_messages else None
        self._initial_messages = self._initial  # what AutoGen's base class exposes
        if isinstance(store, Store):
            self._store: Store | None = store
            self._owns_store = False
            url = store_url if store_url is not None else store.url
        elif isinstance(store, str):
            self._store = None
            self._owns_store = True
            url = store
        else:
            raise InvalidInput(f"store must be an amber.Store or a store URL, got {type(store).__name__}")
        self._url = url if isinstance(url, SecretStr) else SecretStr(url)
        self._open_lock = asyncio.Lock()
        self._initialised = False
        self._memory_block: str | None = None
        self._state_name = "autogen.context" if agent_name is None else f"autogen.context:{agent_name}"

    # -- identity ----------------------------------------------------------------------------------
    @property
    def session_key(self) -> SessionKey:
        return self._key

    @property
    def agent_name(self) -> str | None:
        return self._view

    # -- the memory seam ---------------------------------------------------------------------------
    def set_memory_block(self, text: str | None) -> None:
        """Set (or with None, remove) the memory block rendered into the leading system message by
        :meth:`get_messages`. It replaces the previous block and is never persisted."""
        if text is not None and not isinstance(text, str):
            raise InvalidInput("memory block must be a string or None")
        self._memory_block = text or None

    @property
    def memory_block(self) -> str | None:
        return self._memory_block

    # -- ChatCompletionContext -----------------------------------------------------------------------
    async def add_message(self, message: LLMMessage) -> None:
        """Append the message to this view of the session; returns once it is durable."""
        _codec.validate_llm_message(message)
        store = await self._ready()
        payload = _codec.canonical_json(message)
        turn = _TURN.get()
        index = -1
        if turn is not None:  # positions count every add, so a replay numbers its messages the same
            slot = (str(self._key), self._view)
            index = turn.counters.get(slot, 0)
            turn.counters[slot] = index + 1
        tip = await self._fetch(store, last=1, after=0)
        if tip and _codec.same_message(tip[-1], payload):
            # The same message right after itself in one view is a retry: AutoGen re-delivers a
            # participant's buffered messages when its turn failed, and a failed turn gets re-sent.
            return
        if turn is not None:
            idem = _codec.derive_key("turn", str(self._key), self._view or "", turn.turn_id, str(index), payload)
        else:
            parent = tip[-1].idempotency_key if tip else ""
            idem = _codec.derive_key("after", str(self._key), self._view or "", parent, payload)
        await self._append(store, _codec.to_new_message(message, view=self._view, idempotency_key=idem))

    async def get_messages(self) -> List[LLMMessage]:
        """The window, read from the store now, with the memory block merged into the leading
        system message."""
        store = await self._ready()
        start = await self._window_start(store)
        w = self._window
        if isinstance(w, Unbounded):
            messages = _codec.decode_all(await self._fetch(store, last=None, after=start))
            messages = _drop_orphan_results(messages)
        elif isinstance(w, LastN):
            messages = _codec.decode_all(await self._fetch(store, last=w.n, after=start))
            messages = _drop_orphan_results(messages)
        elif isinstance(w, TokenBudget):
            messages = await self._token_window(store, start, w.max_tokens)
        else:
            messages = await self._head_and_tail(store, start, w)
        return self._with_memory(messages)

    async def clear(self) -> None:
        """Start the window afresh (team or agent reset). Nothing durable is deleted: the earlier
        messages stay in the store, before the window start."""
        store = await self._ready()
        info = await store.get_session(self._key)
        await self._set_window_start(store, info.last_seq if info else 0)

    async def save_state(self) -> Mapping[str, Any]:
        """A reference to the durable session, not a copy of the transcript."""
        store = await self._ready()
        return {
            "format": STATE_FORMAT,
            "session": str(self._key),
            "agent_name": self._view,
            "window_start": await self._window_start(store),
        }

    async def load_state(self, state: Mapping[str, Any]) -> None:
        """Accept a reference saved by :meth:`save_state` (restores its window start; duplicates
        nothing), or AutoGen's ``{"messages": [...]}`` from a plain context, whose messages are
        imported into this view once -- loading the same state again adds nothing."""
        if not isinstance(state, Mapping):
            raise InvalidInput("context state must be a mapping")
        store = await self._ready()
        if state.get("format") == STATE_FORMAT:
            session = state.get("session")
            if session != str(self._key) or state.get("agent_name") != self._view:
                raise InvalidInput(
                    f"context state refers to session {session!r} view {state.get('agent_name')!r}, "
                    f"but this context is session {str(self._key)!r} view {self._view!r}"
                )
            start = state.get("window_start", 0)
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise InvalidInput("window_start must be a non-negative integer")
            if start != await self._window_start(store):
                await self._set_window_start(store, start)
            return
        if "messages" in state and isinstance(state["messages"], (list, tuple)):
            await self._import(store, _codec.as_llm_messages(state["messages"]), tag="import")
            return
        raise InvalidInput(
            f"unrecognised context state (keys {sorted(state)[:10]}): expected {STATE_FORMAT!r} "
            "or AutoGen's {'messages': [...]}"
        )

    async def close(self) -> None:
        """Close the store if this context opened it from a URL."""
        if self._owns_store and self._store is not None:
            store, self._store = self._store, None
            self._initialised = False
            await store.close()

    # -- Component -------------------------------------------------------------------------------------
    def _to_config(self) -> DurableChatCompletionContextConfig:
        return DurableChatCompletionContextConfig(
            store_url=self._url,
            session=str(self._key),
            agent_name=self._view,
            window=self._window,
            model_client=self._model_client.dump_component() if self._model_client is not None else None,
            initial_messages=self._initial,
        )

    @classmethod
    def _from_config(cls, config: DurableChatCompletionContextConfig) -> Self:
        # Synchronous by AutoGen's contract, so the store is opened on first use.
        url = store_url_from_config(config.store_url, cls.__name__)
        model_client = (
            ChatCompletionClient.load_component(config.model_client) if config.model_client is not None else None
        )
        return cls(
            url,
            config.session,
            agent_name=config.agent_name,
            window=config.window,
            model_client=model_client,
            initial_messages=config.initial_messages,
        )

    # -- internals -----------------------------------------------------------------------------------
    async def _ready(self) -> Store:
        if self._store is not None and self._initialised:
            return self._store
        async with self._open_lock:
            if self._store is None:
                self._store = await open_store(self._url.get_secret_value())
            if not self._initialised:
                if self._initial:
                    await self._import(self._store, self._initial, tag="initial")
                self._initialised = True
        return self._store

    async def _append(self, store: Store, message: Any) -> Message:
        # The idempotency key makes a retry after an unacknowledged append safe.
        for attempt in range(self._APPEND_ATTEMPTS):
            try:
                return await store.append_one(self._key, message)
            except StoreUnavailable:
                if attempt == self._APPEND_ATTEMPTS - 1:
                    raise
                log.warning("store unavailable appending to %s; retrying", self._key)
                await asyncio.sleep(0.05 * 4**attempt)
        raise AssertionError("unreachable")

    async def _import(self, store: Store, messages: Sequence[LLMMessage], *, tag: str) -> None:
        # Keyed by position in the imported list: importing the same list again is a no-op.
        batch = [
            _codec.to_new_message(
                m,
                view=self._view,
                idempotency_key=_codec.derive_key(
                    tag, str(self._key), self._view or "", str(i), _codec.canonical_json(m)
                ),
            )
            for i, m in enumerate(messages)
        ]
        for offset in range(0, len(batch), store.limits.max_batch):
            await store.append(self._key, batch[offset: offset + store.limits.max_batch])

    async def _window_start(self, store: Store) -> int:
        blob = await store.get_state(self._key, self._state_name)
        if blob is None:
            return 0
        value = blob.data.get("window_start", 0)
        return value if isinstance(value, int) and value >= 0 else 0

    async def _set_window_start(self, store: Store, seq: int) -> None:
        await store.put_state(self._key, self._state_name, {"window_start": seq})

    async def _fetch(self, store: Store, *, last: int | None, after: int) -> list[Message]:
        """This view's messages with ``seq > after``, oldest first; the last ``last`` of them if given.

        Other views share the session, so a bounded read widens until it holds enough of ours."""
        if last is None:
            return [m for m in await store.read_since(self._key, after) if _codec.in_view(m, self._view)]
        fetch = max(2 * last, 16)
        while True:
            batch = await store.read_window(self._key, last=fetch)
            mine = [m for m in batch if m.seq > after and _codec.in_view(m, self._view)]
            if len(mine) >= last or len(batch) < fetch or batch[0].seq <= after + 1:
                return mine[-last:] if last else []
            fetch *= 4

    def _count(self, message: LLMMessage) -> int:
        if self._model_client is not None:
            return int(self._model_client.count_tokens([message]))
        return _codec.estimate_message_tokens(message)

    async def _token_window(self, store: Store, start: int, budget: int) -> list[LLMMessage]:
        want = 32
        while True:
            stored = await self._fetch(store, last=want, after=start)
            decoded = _codec.decode_all(stored)
            kept: list[LLMMessage] = []
            total = 0
            for message in reversed(decoded):
                total += self._count(message)
                if total > budget:
                    break
                kept.append(message)
            exhausted = len(stored) < want
            if total > budget or exhausted:
                return _drop_orphan_results(list(reversed(kept)))
            want *= 4

    async def _head_and_tail(self, store: Store, start: int, w: HeadAndTail) -> list[LLMMessage]:
        # The skipped count needs the whole view; fine for the sizes this strategy is used with.
        messages = _codec.decode_all(await self._fetch(store, last=None, after=start))
        skipped = len(messages) - w.head - w.tail
        if skipped <= 0:
            return _drop_orphan_results(messages)
        head = messages[: w.head]
        if head and _codec.is_function_call_message(head[-1]):
            head = head[:-1]  # a call without its result would be rejected by the model API
        tail = _drop_orphan_results(messages[-w.tail:])
        return head + [UserMessage(content=f"Skipped {skipped} messages.", source="System")] + tail

    def _with_memory(self, messages: list[LLMMessage]) -> list[LLMMessage]:
        block = self._memory_block
        if not block:
            return messages
        # Merged into ONE leading system message: models that accept a single system message (or
        # only a contiguous run of them at the start) still work, and the block never piles up.
        if messages and isinstance(messages[0], SystemMessage):
            return [SystemMessage(content=f"{messages[0].content}\n\n{block}")] + messages[1:]
        return [SystemMessage(content=block)] + messages


def store_url_from_config(store_url: SecretStr, component: str) -> str:
    """The store URL of a component config being loaded. Refused here, at load time, when AutoGen
    masked it in a JSON dump: otherwise the first use -- inside an agent's turn -- would fail."""
    url = store_url.get_secret_value()
    if url.strip("*") == "":
        raise InvalidInput(
            f"the {component} component config's store_url is masked ('**********'): AutoGen masks secrets "
            "when a component is dumped to JSON; put the store URL back into config['store_url'] before "
            f"loading, or construct {component}(store, ...) in code"
        )
    return url


def _window(value: object) -> Unbounded | LastN | TokenBudget | HeadAndTail:
    if value is None:
        return Unbounded()
    if isinstance(value, bool):
        raise InvalidInput("window must be None, a positive int or a window strategy")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidInput(f"window must be a positive number of messages, got {value}")
        return LastN(n=value)
    if isinstance(value, (Unbounded, LastN, TokenBudget, HeadAndTail)):
        return value
    raise InvalidInput(f"window must be None, a positive int or a window strategy, got {type(value).__name__}")


def _drop_orphan_results(messages: list[LLMMessage]) -> list[LLMMessage]:
    # A window that starts with tool results has lost their call; model APIs reject that.
    i = 0
    while i < len(messages) and isinstance(messages[i], FunctionExecutionResultMessage):
        i += 1
    return messages[i:] if i else messages
