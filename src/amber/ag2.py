"""Classic AutoGen (AG2 0.x, ``from autogen import ConversableAgent``): durable history through hooks.

Capabilities in the style of AG2's ``Teachability.add_to_agent`` (:class:`AgentHistory`,
:class:`GroupChatHistory`, :class:`AgentMemory`), attached by two functions::

    from amber.ag2 import persist, remember

    persist(assistant, "sqlite:///amber.db", "acme/u-42/claim-7788")   # a ConversableAgent
    user.initiate_chat(assistant, message="...", clear_history=False)

    history = persist(manager, "sqlite:///amber.db", "acme/u-42/board")  # a GroupChatManager
    resumed = history.resume()          # in a new process: (last speaker, last message) or None

    memory = remember(assistant, "sqlite:///amber.db", "acme/u-42/claim-7788", learn=True)
    # recalled facts and past turns reach the model as one quoted-data block, never the history

What ``persist`` accepts as its ``store``:

* a URL (``"sqlite:///amber.db"``, ``"postgresql://..."``, ``"memory://NAME"``): Amber opens it once
  per process on a private event-loop thread (:class:`amber.sync.SyncStore`) and closes it at exit;
* a :class:`amber.sync.SyncStore` you opened (you close it);
* an async :class:`amber.Store` together with ``loop=``, the event loop it was opened on, which
  must be running in another thread. An async store without ``loop`` is driven from a private
  loop thread, which is right only for a store not yet tied to a loop (``memory://``).

Calls work with and without a running event loop in the calling thread (Jupyter, FastAPI).

Guarantees: every message the agent sends (hook ``process_message_before_send``) or receives
(its ``receive``/``a_receive``, wrapped on the instance, because AG2 runs no hook on receipt when
no reply follows, e.g. on the last turn of ``max_turns``) is written to the store before the next
reply is generated. A chat that ends by ``is_termination_msg``, ``max_turns`` or an exception keeps
everything said up to that point. If the store cannot take a write, the error propagates and the
chat stops rather than continue undurably.

Exactly once: a message's idempotency key is derived from the message (sender, recipient, its
position in the pair's stored transcript, a hash of its content), not from the agent storing it,
so when both agents of a pair are persisted to the same session the second write is a no-op.
Should the two agents ever disagree on a position, the worst case is a duplicate, never a loss.

Rehydration: on attach the agent's stored history with each peer is loaded and put in front of
its in-memory history (``agent.chat_messages[peer]``) the first time that peer is met, unless the
history with that peer is cleared first (``initiate_chat(clear_history=True)``, the AG2 default):
pass ``clear_history=False`` to continue a conversation. Peers are matched by name.

Stored form: one session per key; each message keeps the AG2 message dict as its payload
(``payload_format="ag2.message/1"``) and sender, recipient and position in ``metadata["ag2"]``.
Roles: messages from agents that speak for the human user (default: agents without an LLM,
``llm_config=False``; or the names you pass as ``user_agents``) are stored as ``user``, tool and
function results as ``tool``, everything else as ``assistant``; the learner reads ``user``
messages for facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence, Union, overload

from .embed import open_embedder
from .errors import InvalidInput, MissingDependency
from .keys import SessionKey
from .learn import Learner
from .recall import Recall, render_block
from .records import Message, NewMessage
from .store import Store
from .store.base import digest, encode_json
from .sync import SyncStore

try:
    from autogen import Agent, ConversableAgent, GroupChatManager
    from autogen.agentchat.contrib.capabilities.agent_capability import AgentCapability
    from autogen.agentchat.conversable_agent import normilize_message_to_oai
    from autogen.code_utils import content_str
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency("autogen", "ag2") from exc

__all__ = [
    "persist",
    "remember",
    "AgentMemory",
    "AgentHistory",
    "GroupChatHistory",
    "import_oai_messages",
    "open_sync_store",
    "StoreLike",
    "PAYLOAD_FORMAT",
]

PAYLOAD_FORMAT = "ag2.message/1"

StoreLike = Union[str, SyncStore, Store]

# AG2 message keys worth keeping; "context" (arbitrary objects) is runtime-only and not stored.
_KEPT_KEYS = ("content", "role", "name", "function_call", "tool_calls", "tool_responses", "tool_call_id")
_PAGE = 1000

# Set while GroupChatHistory.resume() replays stored messages into the agents, so the replay is
# not recorded a second time by persisted agents.
_replaying: contextvars.ContextVar[bool] = contextvars.ContextVar("amber_ag2_replaying", default=False)


@contextlib.contextmanager
def _not_recording() -> Iterator[None]:
    token = _replaying.set(True)
    try:
        yield
    finally:
        _replaying.reset(token)


# -- store resolution -------------------------------------------------------------------------
_shared_lock = threading.Lock()
_shared_by_url: dict[str, SyncStore] = {}
_shared_by_store: dict[tuple[int, int], SyncStore] = {}


def open_sync_store(store: StoreLike, *, loop: asyncio.AbstractEventLoop | None = None) -> SyncStore:
    """Resolve what :func:`persist` accepts as a store into a :class:`SyncStore`.

    A URL is opened once per process and shared (one connection pool, one loop thread), so two
    agents given the same URL use one store object."""
    if isinstance(store, SyncStore):
        if loop is not None:
            raise InvalidInput("loop= applies to an async Store, not to a SyncStore")
        return store
    if isinstance(store, str):
        if loop is not None:
            raise InvalidInput("loop= applies to an async Store, not to a URL")
        with _shared_lock:
            sync = _shared_by_url.get(store)
            if sync is None or sync.closed:
                sync = _shared_by_url[store] = SyncStore.open(store)
            return sync
    if isinstance(store, Store):
        with _shared_lock:
            ident = (id(store), id(loop))
            sync = _shared_by_store.get(ident)
            if sync is None or sync.closed:
                sync = _shared_by_store[ident] = SyncStore(store, loop=loop)
            return sync
    raise InvalidInput(
        f"store must be a URL, an amber.sync.SyncStore or an amber.Store, got {type(store).__name__}"
    )


def _session_key(key: SessionKey | str) -> SessionKey:
    if isinstance(key, SessionKey):
        return key
    if isinstance(key, str):
        return SessionKey.parse(key)
    raise InvalidInput(f"key must be an amber.SessionKey or 'tenant/user/thread', got {type(key).__name__}")


def _read_all(store: SyncStore, key: SessionKey) -> list[Message]:
    out: list[Message] = []
    after = 0
    while True:
        page = store.read_since(key, after, limit=_PAGE)
        out.extend(page)
        if len(page) < _PAGE:
            return out
        after = page[-1].seq


# -- message encoding -------------------------------------------------------------------------
def _is_valid(message: Mapping[str, Any]) -> bool:
    # The same test AG2 applies before appending (normilize_message_to_oai): content, or a call.
    return (
        message.get("content") is not None
        or message.get("function_call") is not None
        or bool(message.get("tool_calls"))
    )


def _as_dict(message: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(message, str):
        return {"content": message}
    return dict(message)


def _payload(message: Mapping[str, Any]) -> dict[str, Any]:
    payload = {k: message[k] for k in _KEPT_KEYS if k in message and message[k] is not None}
    if callable(payload.get("content")):
        raise InvalidInput(
            "this message's content is a callable (AG2 'context' templating); Amber stores text: "
            "render the content before sending it from a persisted agent"
        )
    return payload


def _text(payload: Mapping[str, Any]) -> str:
    content = payload.get("content")
    if isinstance(content, (str, list)) or content is None:
        text = content_str(content)
    else:
        text = str(content)
    if not text and payload.get("tool_responses"):
        text = "\n".join(content_str(r.get("content")) for r in payload["tool_responses"] if r.get("content"))
    return text


def _message_key(sender: str, recipient: str, position: int, payload_json: str) -> str:
    return f"ag2:{position}:{digest(sender, recipient, str(position), payload_json)[:40]}"


def _new_message(
    *, sender: str, recipient: str, position: int, payload: dict[str, Any], role: str, group: bool = False
) -> NewMessage:
    payload_json = encode_json(payload, "AG2 message")
    meta: dict[str, Any] = {"sender": sender, "recipient": recipient, "position": position}
    if group:
        meta = {"group": True, "speaker": sender, "position": position}
    return NewMessage(
        role=role,
        content=_text(payload),
        payload=payload,
        payload_format=PAYLOAD_FORMAT,
        author=sender,
        idempotency_key=_message_key(sender, recipient, position, payload_json),
        metadata={"ag2": meta},
    )


def _ag2_meta(message: Message) -> Mapping[str, Any] | None:
    if message.payload_format != PAYLOAD_FORMAT or message.payload is None:
        return None
    meta = message.metadata.get("ag2")
    return meta if isinstance(meta, Mapping) else None


def _view(message: Message, viewer: str) -> dict[str, Any]:
    """A stored pair message as it sits in ``viewer``'s AG2 history (what _append_oai_message made)."""
    meta = _ag2_meta(message) or {}
    sender = str(meta.get("sender") or message.author or "")
    role = "assistant" if sender == viewer else "user"
    _, oai = normilize_message_to_oai(copy.deepcopy(dict(message.payload or {})), name=sender, role=role)
    return oai


class _UserRule:
    """Which speakers' messages are stored with role ``user``."""

    def __init__(self, user_agents: Collection[str] | None) -> None:
        if isinstance(user_agents, str):
            raise InvalidInput("user_agents is a collection of agent names, not one string")
        self.names = None if user_agents is None else frozenset(user_agents)

    def role(self, speaker: Agent | None, speaker_name: str, payload: Mapping[str, Any]) -> str:
        if payload.get("role") in ("tool", "function") or payload.get("tool_responses"):
            return "tool"
        if self.names is not None:
            return "user" if speaker_name in self.names else "assistant"
        if speaker is None or isinstance(speaker, GroupChatManager):
            return "assistant"
        return "user" if getattr(speaker, "llm_config", None) is False else "assistant"


# -- one agent ---------------------------------------------------------------------------------
@dataclass
class _Pair:
    count: int = 0  # messages of this pair in the stored transcript (the next position)
    pending: list[Message] = field(default_factory=list)  # stored, not yet in memory
    restored: bool = False


class AgentHistory(AgentCapability):
    """Durable history for one ConversableAgent (a capability: ``AgentHistory(...).add_to_agent(a)``,
    or simply :func:`persist`). See the module docstring for what is stored and when."""

    def __init__(
        self,
        store: StoreLike,
        key: SessionKey | str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        user_agents: Collection[str] | None = None,
        last: int | None = None,
    ) -> None:
        """``last`` limits how many stored messages per peer are put back into memory on attach
        (all by default); the store keeps everything either way."""
        super().__init__()
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
            raise InvalidInput(f"last must be a non-negative integer or None, got {last!r}")
        self.key = _session_key(key)
        self.store = open_sync_store(store, loop=loop)
        self._roles = _UserRule(user_agents)
        self._last = last
        self._pairs: dict[str, _Pair] = defaultdict(_Pair)
        self._lock = threading.RLock()
        self.agent: ConversableAgent | None = None

    # -- attach ------------------------------------------------------------------------------
    def add_to_agent(self, agent: ConversableAgent) -> None:
        if not isinstance(agent, ConversableAgent):
            raise InvalidInput(f"persist() needs an autogen ConversableAgent, got {type(agent).__name__}")
        if self.agent is not None:
            raise InvalidInput("this AgentHistory is already attached to an agent; make one per agent")
        if getattr(agent.receive, "__amber_history__", None) is not None:
            raise InvalidInput(f"agent {agent.name!r} is already persisted")
        name = agent.name
        by_peer: dict[str, list[Message]] = defaultdict(list)
        for message in _read_all(self.store, self.key):
            meta = _ag2_meta(message)
            if meta is None or meta.get("group"):
                continue
            sender, recipient = meta.get("sender"), meta.get("recipient")
            if sender == name:
                by_peer[str(recipient)].append(message)
            elif recipient == name:
                by_peer[str(sender)].append(message)
        for peer, messages in by_peer.items():
            pending = messages if self._last is None else messages[len(messages) - self._last :]
            self._pairs[peer] = _Pair(count=len(messages), pending=list(pending) if self._last != 0 else [])
        self.agent = agent
        agent.register_hook("process_message_before_send", self._before_send)
        self._wrap(agent)

    def _wrap(self, agent: ConversableAgent) -> None:
        receive, a_receive, clear_history = agent.receive, agent.a_receive, agent.clear_history

        @functools.wraps(receive)
        def receive_wrapper(message: Any, sender: Agent, request_reply: bool | None = None, silent: bool | None = False) -> Any:
            self._observe(message, sender=sender, recipient=agent, peer=sender)
            return receive(message, sender, request_reply, silent)

        @functools.wraps(a_receive)
        async def a_receive_wrapper(
            message: Any, sender: Agent, request_reply: bool | None = None, silent: bool | None = False
        ) -> Any:
            pending = self._observe(message, sender=sender, recipient=agent, peer=sender, wait=False)
            if pending is not None:
                await asyncio.wrap_future(pending)  # do not block the caller's loop on the write
            return await a_receive(message, sender, request_reply, silent)

        @functools.wraps(clear_history)
        def clear_history_wrapper(recipient: Agent | None = None, nr_messages_to_preserve: int | None = None) -> Any:
            # A cleared history must not be refilled from the store at first contact.
            with self._lock:
                for peer, pair in self._pairs.items():
                    if recipient is None or peer == recipient.name:
                        pair.pending = []
                        pair.restored = True
            return clear_history(recipient, nr_messages_to_preserve)

        for wrapper in (receive_wrapper, a_receive_wrapper, clear_history_wrapper):
            wrapper.__amber_history__ = self  # type: ignore[attr-defined]
        # Instance attributes shadow the class methods; AG2 calls them as self.receive(...).
        agent.receive = receive_wrapper  # type: ignore[method-assign]
        agent.a_receive = a_receive_wrapper  # type: ignore[method-assign]
        agent.clear_history = clear_history_wrapper  # type: ignore[method-assign]

    # -- the write path ------------------------------------------------------------------------
    def _before_send(
        self, sender: Agent, message: dict[str, Any] | str, recipient: Agent, silent: bool
    ) -> dict[str, Any] | str:
        self._observe(message, sender=sender, recipient=recipient, peer=recipient)
        return message

    def _observe(
        self, message: Any, *, sender: Agent, recipient: Agent, peer: Agent, wait: bool = True
    ) -> Any:
        agent = self.agent
        assert agent is not None
        if _replaying.get():
            return None
        msg = _as_dict(message)
        with self._lock:
            pair = self._pairs[peer.name]
            self._restore(agent, peer, pair)
            if not _is_valid(msg):
                return None  # AG2 raises on it right after; nothing was said
            payload = _payload(msg)
            new = _new_message(
                sender=sender.name,
                recipient=recipient.name,
                position=pair.count,
                payload=payload,
                role=self._roles.role(sender, sender.name, payload),
            )
            future = self.store.submit(self.store.store.append_one(self.key, new))
            pair.count += 1
        if wait:
            future.result()
            return None
        return future

    def _restore(self, agent: ConversableAgent, peer: Agent, pair: _Pair) -> None:
        if pair.restored:
            return
        pair.restored = True
        if pair.pending:
            history = agent.chat_messages[peer]
            history[:0] = [_view(m, agent.name) for m in pair.pending]
            pair.pending = []

    # -- reading -------------------------------------------------------------------------------
    def history(self, peer: str) -> list[dict[str, Any]]:
        """The stored history with ``peer`` (a name), as AG2 message dicts from this agent's view."""
        if self.agent is None:
            raise InvalidInput("attach the capability to an agent first")
        name = self.agent.name
        out = []
        for message in _read_all(self.store, self.key):
            meta = _ag2_meta(message)
            if meta is None or meta.get("group"):
                continue
            if {meta.get("sender"), meta.get("recipient")} == {name, peer}:
                out.append(_view(message, name))
        return out


# -- a group chat ---------------------------------------------------------------------------------
class GroupChatHistory:
    """Durable messages of a GroupChat, and resumption from the store in a new process with AG2's
    ``GroupChatManager.resume``.

    Every group message reaches the manager through its ``receive``/``a_receive`` (the opening
    message and each speaker's reply), so those are wrapped on the manager instance: a message is
    stored as the manager received it, before the next speaker is asked for a reply."""

    def __init__(
        self,
        store: StoreLike,
        key: SessionKey | str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        user_agents: Collection[str] | None = None,
    ) -> None:
        self.key = _session_key(key)
        self.store = open_sync_store(store, loop=loop)
        self._roles = _UserRule(user_agents)
        self._lock = threading.RLock()
        self._count = 0
        self.manager: GroupChatManager | None = None

    def add_to_manager(self, manager: GroupChatManager) -> None:
        if not isinstance(manager, GroupChatManager):
            raise InvalidInput(f"expected an autogen GroupChatManager, got {type(manager).__name__}")
        if self.manager is not None:
            raise InvalidInput("this GroupChatHistory is already attached to a manager")
        if getattr(manager.receive, "__amber_history__", None) is not None:
            raise InvalidInput(f"group chat manager {manager.name!r} is already persisted")
        self._count = len(self._stored())
        self.manager = manager
        receive, a_receive = manager.receive, manager.a_receive

        @functools.wraps(receive)
        def receive_wrapper(message: Any, sender: Agent, request_reply: bool | None = None, silent: bool | None = False) -> Any:
            self._observe(message, sender)
            return receive(message, sender, request_reply, silent)

        @functools.wraps(a_receive)
        async def a_receive_wrapper(
            message: Any, sender: Agent, request_reply: bool | None = None, silent: bool | None = False
        ) -> Any:
            pending = self._observe(message, sender, wait=False)
            if pending is not None:
                await asyncio.wrap_future(pending)
            return await a_receive(message, sender, request_reply, silent)

        for wrapper in (receive_wrapper, a_receive_wrapper):
            wrapper.__amber_history__ = self  # type: ignore[attr-defined]
        manager.receive = receive_wrapper  # type: ignore[method-assign]
        manager.a_receive = a_receive_wrapper  # type: ignore[method-assign]

    def _observe(self, message: Any, sender: Agent, *, wait: bool = True) -> Any:
        if _replaying.get():
            return None
        msg = _as_dict(message)
        if not _is_valid(msg):
            return None
        # Store it in the form GroupChat.messages holds (the manager's view), which is also what
        # resume() hands back, so a resumed last message maps onto its stored twin.
        _, oai = normilize_message_to_oai(copy.deepcopy(_payload(msg)), name=sender.name, role="user")
        payload = _payload(oai)
        speaker = str(payload.get("name") or sender.name)
        manager = self.manager
        with self._lock:
            new = _new_message(
                sender=speaker,
                recipient=f"group:{manager.name if manager else ''}",
                position=self._count,
                payload=payload,
                role=self._roles.role(sender, speaker, payload),
                group=True,
            )
            future = self.store.submit(self.store.store.append_one(self.key, new))
            self._count += 1
        if wait:
            future.result()
            return None
        return future

    def _stored(self) -> list[Message]:
        return [m for m in _read_all(self.store, self.key) if (_ag2_meta(m) or {}).get("group")]

    def messages(self) -> list[dict[str, Any]]:
        """The stored group messages, oldest first, in the form ``GroupChat.messages`` holds."""
        return [copy.deepcopy(dict(m.payload or {})) for m in self._stored()]

    def resume(
        self,
        *,
        remove_termination_string: str | Callable[[str], str] | None = None,
        silent: bool | None = True,
    ) -> tuple[Agent, dict[str, Any]] | None:
        """Load the stored conversation into the manager, its group chat and its agents
        (``GroupChatManager.resume``). Returns ``(last_speaker, last_message)`` to continue with
        ``last_speaker.initiate_chat(manager, message=last_message, clear_history=False)``, or None
        when nothing is stored yet. Replayed messages are not recorded again."""
        manager = self.manager
        if manager is None:
            raise InvalidInput("attach the capability to a GroupChatManager first")
        stored = self.messages()
        if not stored:
            return None
        with _not_recording():
            last_agent, last_message = manager.resume(
                messages=stored, remove_termination_string=remove_termination_string, silent=silent
            )
        with self._lock:
            # The caller re-sends the last message to continue; it lands on its stored position.
            self._count = len(stored) - 1
        return last_agent, last_message


# -- long-term memory ----------------------------------------------------------------------------------
class AgentMemory(AgentCapability):
    """Long-term memory for a classic agent: the same learning and recall as AgentChat's
    :class:`amber.autogen.AmberMemory`, through AG2's ``process_all_messages_before_reply`` hook.

    Before each reply the user's memory (learned facts and past turns of every thread, of
    ``key.tenant``/``key.user``) is searched for the last message the agent received, and ONE block
    of quoted data (:func:`amber.recall.render_block`, at most ``max_tokens``) is handed to the model
    as a system message in a NEW message list. The agent's history (``chat_messages``) and the store
    never see the block, and it is rebuilt each turn, so it never piles up. Turns already in the
    context are left out of the block.

    Learning: facts are extracted from stored messages by :class:`amber.learn.Learner` (rules by
    default, or ``extractor=``). ``learn=True`` runs one in this process, on the store's loop, until
    :meth:`close`; :meth:`learn_now` processes everything pending at once; or run ``amber worker``.
    ``embedder``: an embedder or spec (``"minilm"``, ``"hash"``); use the learner's. ``store``
    accepts what :func:`persist` accepts.
    """

    def __init__(
        self,
        store: StoreLike,
        key: SessionKey | str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        limit: int = 8,
        max_tokens: int = 600,
        min_score: float = 0.0,
        modes: Sequence[str] = ("lexical", "vector"),
        kinds: Sequence[str] = ("message", "fact"),
        neighbours: int = 0,
        embedder: Any | None = None,
        learn: bool = False,
        extractor: Any | None = None,
    ) -> None:
        super().__init__()
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidInput(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
        self.key = _session_key(key)
        self.store = open_sync_store(store, loop=loop)
        self._embedder = open_embedder(embedder) if isinstance(embedder, str) else embedder
        self._recall = Recall(self.store.store, embedder=self._embedder)
        self._learner = Learner(self.store.store, extractor=extractor, embedder=self._embedder, tenant=self.key.tenant)
        self._learn = learn
        self._limit = limit
        self._max_tokens = max_tokens
        self._min_score = min_score
        self._modes = tuple(modes)
        self._kinds = tuple(kinds)
        self._neighbours = neighbours
        self.last_block: str | None = None
        self.agent: ConversableAgent | None = None

    def add_to_agent(self, agent: ConversableAgent) -> None:
        if not isinstance(agent, ConversableAgent):
            raise InvalidInput(f"remember() needs an autogen ConversableAgent, got {type(agent).__name__}")
        if self.agent is not None:
            raise InvalidInput("this AgentMemory is already attached to an agent; make one per agent")
        self.agent = agent
        agent.register_hook("process_all_messages_before_reply", self._before_reply)
        if self._learn:
            self.store.run(self._learner.start())

    def search(self, query: str, *, limit: int | None = None) -> list[Any]:
        """Recall for ``query`` (hits of type :class:`amber.Hit`, best first)."""
        hits = self.store.run(
            self._recall.search(
                self.key.tenant, self.key.user, query, limit=limit or self._limit, modes=self._modes,
                kinds=self._kinds, neighbours=self._neighbours,
            )
        )
        return [h for h in hits if h.score >= self._min_score]

    def learn_now(self) -> int:
        """Learn from every message stored so far (this tenant); returns the jobs processed."""
        return self.store.run(self._learner.drain())

    def close(self) -> None:
        """Stop the in-process learner, if any. The store stays open (it may be shared)."""
        if self._learner.running and not self.store.closed:
            self.store.run(self._learner.stop())

    def _before_reply(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        query = ""
        for message in reversed(messages):
            if message.get("role") == "user":
                query = _text(message)
                break
        in_context = [text for m in messages if m.get("role") != "system" if (text := _text(m))]
        hits: list[Any] = []
        if query.strip():
            hits = self.store.run(
                self._recall.search(
                    self.key.tenant, self.key.user, query, limit=self._limit, modes=self._modes,
                    kinds=self._kinds, neighbours=self._neighbours, exclude_texts=in_context,
                )
            )
            hits = [h for h in hits if h.score >= self._min_score]
        block = render_block(hits, max_tokens=self._max_tokens)
        self.last_block = block.text or None
        if not block.text:
            return messages
        # A new list: the agent's own history (and so the transcript) never holds the block.
        lead = 0
        while lead < len(messages) and messages[lead].get("role") == "system":
            lead += 1
        return [*messages[:lead], {"role": "system", "content": block.text}, *messages[lead:]]


def remember(
    agent: ConversableAgent,
    store: StoreLike,
    key: SessionKey | str,
    **options: Any,
) -> AgentMemory:
    """Give ``agent`` long-term memory of ``key``'s user (see :class:`AgentMemory` for options)."""
    memory = AgentMemory(store, key, **options)
    memory.add_to_agent(agent)
    return memory


# -- the one entry point ----------------------------------------------------------------------------
@overload
def persist(
    agent: GroupChatManager,
    store: StoreLike,
    key: SessionKey | str,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    user_agents: Collection[str] | None = None,
    last: None = None,
) -> GroupChatHistory: ...


@overload
def persist(
    agent: ConversableAgent,
    store: StoreLike,
    key: SessionKey | str,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    user_agents: Collection[str] | None = None,
    last: int | None = None,
) -> AgentHistory: ...


def persist(
    agent: ConversableAgent,
    store: StoreLike,
    key: SessionKey | str,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    user_agents: Collection[str] | None = None,
    last: int | None = None,
) -> AgentHistory | GroupChatHistory:
    """Make ``agent``'s conversation durable under ``key`` (a :class:`amber.SessionKey` or
    ``"tenant/user/thread"``).

    ``store`` is a URL, an :class:`amber.sync.SyncStore`, or an async :class:`amber.Store` (with
    ``loop=``, the loop it was opened on, running in another thread) -- see the module docstring.

    For a ``GroupChatManager`` the group's messages are persisted and a :class:`GroupChatHistory`
    is returned (call ``.resume()`` in a new process); for any other ``ConversableAgent`` its
    messages with every peer are persisted and rehydrated, and an :class:`AgentHistory` is returned.
    """
    if isinstance(agent, GroupChatManager):
        if last is not None:
            raise InvalidInput("last= applies to a ConversableAgent, not to a GroupChatManager")
        group = GroupChatHistory(store, key, loop=loop, user_agents=user_agents)
        group.add_to_manager(agent)
        return group
    history = AgentHistory(store, key, loop=loop, user_agents=user_agents, last=last)
    history.add_to_agent(agent)
    return history


# -- migration ----------------------------------------------------------------------------------------
def import_oai_messages(
    store: StoreLike,
    key: SessionKey | str,
    messages: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    agent: str,
    peer: str | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> int:
    """Import an existing AG2 history dump (what ``agent.chat_messages[peer]`` held) into Amber,
    so that ``persist(<agent named agent>, store, key)`` rehydrates it.

    ``messages`` is either one peer's list (then name the peer with ``peer=``) or a mapping
    ``{peer name: list}``, e.g. ``{p.name: m for p, m in agent.chat_messages.items()}`` dumped as
    JSON. Each list must be that pair's history from its start. In ``agent``'s view a message with
    role ``assistant`` was sent by ``agent`` and ``user`` was received; a tool/function message was
    sent by ``agent`` if its ``name`` is ``agent``. Roles are stored as they appear.

    Idempotent: importing the same dump again stores nothing new. Returns the number of messages
    newly stored. Every message is checked before anything is written."""
    key = _session_key(key)
    sync = open_sync_store(store, loop=loop)
    if isinstance(messages, Mapping):
        if peer is not None:
            raise InvalidInput("peer= is for a single list; a mapping already names its peers")
        by_peer = dict(messages)
    elif isinstance(messages, Sequence) and not isinstance(messages, (str, bytes)):
        if not peer:
            raise InvalidInput("importing a single list of messages needs peer= (the other agent's name)")
        by_peer = {peer: messages}
    else:
        raise InvalidInput("messages must be a list of AG2 message dicts or a mapping of peer name to such a list")
    if not isinstance(agent, str) or not agent:
        raise InvalidInput("agent must be the (non-empty) name of the agent whose history this is")

    batch: list[NewMessage] = []
    for peer_name, history in by_peer.items():
        if not isinstance(peer_name, str) or not peer_name:
            raise InvalidInput(f"peer names must be non-empty strings, got {peer_name!r}")
        for position, raw in enumerate(history):
            if not isinstance(raw, Mapping):
                raise InvalidInput(f"message {position} with {peer_name!r} is not a dict: {raw!r:.80}")
            if not _is_valid(raw):
                raise InvalidInput(f"message {position} with {peer_name!r} has neither content nor a call")
            payload = _payload(raw)
            role = payload.get("role")
            if role == "assistant":
                sent = True
            elif role == "user":
                sent = False
            else:
                sent = payload.get("name") == agent
            sender, recipient = (agent, peer_name) if sent else (peer_name, agent)
            store_role = "tool" if role in ("tool", "function") else ("assistant" if sent else "user")
            batch.append(
                _new_message(sender=sender, recipient=recipient, position=position, payload=payload, role=store_role)
            )
    if not batch:
        return 0
    before = sync.get_session(key)
    last_seq = before.last_seq if before is not None else 0
    stored: list[Message] = []
    limit = sync.store.limits.max_batch
    for start in range(0, len(batch), limit):
        stored.extend(sync.append(key, batch[start : start + limit]))
    return sum(1 for m in stored if m.seq > last_seq)
