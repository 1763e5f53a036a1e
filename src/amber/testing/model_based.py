"""Model-based conformance: random sequences of operations run against a backend and against the
in-memory reference store (the model); every observable result must agree.

A Hypothesis ``RuleBasedStateMachine`` draws operations over a deliberately tiny key space
(2 tenants x 2 users x 2 threads, three idempotency keys, two state names, two fact attributes) so
operations collide: retries, conflicts, deletions of what was just written, facts sourced from
erased messages. Each example gets its own event loop, a fresh reference store, a fresh backend
handle and fresh tenant names (so a shared server needs no cleanup). Values that legitimately
differ between stores -- generated ids and timestamps -- are not compared directly; ids are instead
mapped one-to-one from backend to model as they appear, so a backend that returns the wrong record
(say, a different message for a retried idempotency key) still fails.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from ..keys import SessionKey
from ..records import Fact, Message, NewFact, NewMessage, SessionInfo, StateBlob
from ..store.base import Store
from ..store.memory import MemoryStore

__all__ = ["MODEL_BASED_SETTINGS", "run_model_based"]

OpenHandle = Callable[[], Awaitable[Store]]
IdMap = Callable[[str], str]

# Reproducible in CI (derandomize, no example database); small enough for a few seconds a backend.
MODEL_BASED_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=25,
    derandomize=True,
    database=None,
    deadline=None,
    report_multiple_bugs=False,  # shrink one disagreement quickly rather than every distinct one slowly
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

USERS = ("u1", "u2")
THREADS = ("t1", "t2")
STATE_NAMES = ("team", "agent")
IDEMPOTENCY_KEYS = ("k1", "k2", "k3")
# Plain words only: the redaction layer must have nothing to redact for the contract to hold.
WORDS = ("hello", "claim", "water", "damage", "policy", "thanks", "window", "Zoë", "日本語", "\U0001F600", "«quote»")
TIMES = (
    datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc),
    datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
)
EXPLICIT_TIMES = frozenset(t.astimezone(timezone.utc) for t in TIMES)

FACT_ATTRIBUTES = ("email", "policy")
# Half the draws hit one hot session (and its tenant and user), so writes collide: a state written
# twice, a fact superseded, a retried idempotency key in the same session.
key_indexes = st.one_of(st.just((0, 0, 0)), st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)))
tenant_users = st.one_of(st.just((0, 0)), st.tuples(st.integers(0, 1), st.integers(0, 1)))
tenant_indexes = st.one_of(st.just(0), st.integers(0, 1))
new_messages = st.builds(
    NewMessage,
    role=st.sampled_from(("user", "assistant", "system", "tool", "event")),
    content=st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join),
    payload=st.sampled_from((None, {"type": "UserMessage", "content": [{"a": 1, "b": [True, None, 2.5]}]})),
    author=st.none() | st.just("support"),
    idempotency_key=st.none() | st.sampled_from(IDEMPOTENCY_KEYS),
    created_at=st.none() | st.sampled_from(TIMES),
    metadata=st.sampled_from(({}, {"source": "import"}, {"nested": {"k": ["v", 1, None]}, "emoji": "\U0001F680"})),
)
bad_messages = st.sampled_from((
    NewMessage(role="wizard", content="x"),
    NewMessage(role="user", content="nul \x00 byte"),
    NewMessage(role="user", content="x", created_at=datetime(2024, 1, 1)),  # naive
    NewMessage(role="user", content="x", idempotency_key=""),
))
state_data = st.dictionaries(st.sampled_from(("a", "b", "Zoë")), st.integers(-3, 3) | st.text(max_size=3), max_size=3)
picks = st.integers(0, 1_000)  # an index into what was written so far (modulo its length)


@dataclass(frozen=True)
class _Failed:
    """An operation that raised: only the error type is compared."""

    error: str


class StoreModelMachine(RuleBasedStateMachine):
    """Drives one backend and the reference store with the same operations and compares results."""

    open_handle: OpenHandle  # set on a per-test subclass by run_model_based

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.new_event_loop()  # one loop per example: store handles are bound to it
        self.model: Store = MemoryStore()
        self.store: Store | None = None
        try:
            self.store = self._run(type(self).open_handle())
        except BaseException:
            self.teardown()
            raise
        prefix = f"mb-{uuid.uuid4().hex[:10]}"
        self.tenants = (f"{prefix}-a", f"{prefix}-b")
        self.backend_to_model: dict[str, str] = {}
        self.model_to_backend: dict[str, str] = {}
        self.message_ids: list[str] = []  # model ids of every message ever appended
        self.fact_ids: list[str] = []  # model ids of every fact ever recorded
        self.content_hashes: dict[str, str] = {}  # backend message id -> its content hash

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self._run(self.store.close())
            self._run(self.model.close())
        finally:
            try:
                self._run(self._loop.shutdown_asyncgens())
                self._run(self._loop.shutdown_default_executor())
            finally:
                self._loop.close()

    def _run(self, coro: Awaitable[Any]) -> Any:
        return self._loop.run_until_complete(coro)

    # -- plumbing ----------------------------------------------------------------------------------
    def _key(self, idx: tuple[int, int, int]) -> SessionKey:
        return SessionKey(self.tenants[idx[0]], USERS[idx[1]], THREADS[idx[2]])

    def _to_backend(self, model_id: str) -> str:
        return self.model_to_backend.get(model_id, model_id)

    def _both(self, call: Callable[[Store, IdMap], Awaitable[Any]]) -> tuple[Any, Any]:
        """Run one operation on the model, then on the backend (ids translated to the backend's)."""
        assert self.store is not None
        out = []
        for store, ids in ((self.model, str), (self.store, self._to_backend)):
            try:
                out.append(self._run(call(store, ids)))
            except Exception as exc:  # noqa: BLE001 - an error is an observable result too
                out.append(_Failed(type(exc).__name__))
        return out[0], out[1]

    def _bind(self, model_id: str, backend_id: str) -> None:
        known = self.backend_to_model.get(backend_id)
        if known is None:
            assert model_id not in self.model_to_backend, (
                f"the backend returned a new record {backend_id} where the model returned the known {model_id}"
            )
            self.backend_to_model[backend_id] = model_id
            self.model_to_backend[model_id] = backend_id
        else:
            assert known == model_id, f"the backend returned {backend_id} (model {known}) where the model has {model_id}"

    def _same_hashes(self, messages: Any) -> None:
        """A content hash is the backend's own (an encryption layer hashes ciphertext, by design), so
        it is not compared with the model's: it must be a SHA-256 hex digest that never changes."""
        if isinstance(messages, _Failed):
            return
        for m in messages:
            assert len(m.content_hash) == 64, f"content hash of {m.id} is not a SHA-256 hex digest"
            known = self.content_hashes.setdefault(m.id, m.content_hash)
            assert known == m.content_hash, f"the content hash of message {m.id} changed"

    def _model_id(self, backend_id: str | None) -> str | None:
        # Unbound ids pass through: only a placeholder the test itself passed in can then match.
        return None if backend_id is None else self.backend_to_model.get(backend_id, backend_id)

    def _agree(self, what: str, expected: Any, actual: Any, norm: Callable[[Any, IdMap], Any],
               ids: Callable[[Any], Sequence[str]] = lambda v: ()) -> None:
        """Compare without ids first (clear messages for content drift), then bind and compare ids."""
        if isinstance(expected, _Failed) or isinstance(actual, _Failed):
            assert expected == actual, f"{what}: model gave {_show(expected)}, backend gave {_show(actual)}"
            return
        blind = lambda _i: "-"  # noqa: E731
        assert norm(expected, blind) == norm(actual, blind), (
            f"{what} disagrees\n  model:   {norm(expected, blind)!r}\n  backend: {norm(actual, blind)!r}"
        )
        for m_id, b_id in zip(ids(expected), ids(actual)):
            self._bind(m_id, b_id)
        assert norm(expected, str) == norm(actual, self._model_id), f"{what}: a record id maps to another record"

    def _check(self, what: str, call: Callable[[Store, IdMap], Awaitable[Any]], norm: Callable[[Any, IdMap], Any],
               ids: Callable[[Any], Sequence[str]] = lambda v: ()) -> tuple[Any, Any]:
        expected, actual = self._both(call)
        self._agree(what, expected, actual, norm, ids)
        return expected, actual

    # Snapshots after every write: a write that diverges is caught at once, not only if a later
    # random read happens to look at the same place.
    def _check_session(self, key: SessionKey) -> None:
        _, actual = self._check(f"snapshot read_since({key})", lambda s, _: s.read_since(key),
                                _messages, _message_ids)
        self._same_hashes(actual)
        self._check(f"snapshot get_session({key})", lambda s, _: s.get_session(key), _maybe_session)
        self._check(f"snapshot list_states({key})", lambda s, _: s.list_states(key), _plain)
        for name in STATE_NAMES:
            self._check(f"snapshot get_state({key}, {name!r})", lambda s, _: s.get_state(key, name),
                        _maybe_state)

    def _check_user(self, tenant: str, user: str) -> None:
        for include_superseded in (False, True):
            self._check(f"snapshot list_facts({tenant}, {user}, include_superseded={include_superseded})",
                        lambda s, _: s.list_facts(tenant, user, include_superseded=include_superseded),
                        _facts, _fact_ids)

    def _check_tenant(self, tenant: str) -> None:
        self._check(f"snapshot list_users({tenant})", lambda s, _: s.list_users(tenant), _plain)
        self._check(f"snapshot list_sessions({tenant})", lambda s, _: s.list_sessions(tenant), _sessions)

    def _remember_messages(self, messages: Any) -> None:
        if not isinstance(messages, _Failed):
            for m in messages:
                if m.id not in self.message_ids:
                    self.message_ids.append(m.id)

    # -- transcripts ---------------------------------------------------------------------------------
    # Rules are drawn about evenly, so without a seed many reads would see empty sessions.
    @initialize(batches=st.lists(st.tuples(key_indexes, st.lists(new_messages, min_size=1, max_size=4)),
                                 min_size=1, max_size=3),
                states=st.lists(st.tuples(key_indexes, st.sampled_from(STATE_NAMES), state_data), max_size=2))
    def seed(self, batches: list[tuple[tuple[int, int, int], list[NewMessage]]],
             states: list[tuple[tuple[int, int, int], str, dict[str, Any]]]) -> None:
        for k, batch in batches:
            self.append(k, batch)
        for k, name, data in states:
            self.put_state(k, name, data, None)

    @rule(k=key_indexes, batch=st.lists(new_messages, max_size=4))
    def append(self, k: tuple[int, int, int], batch: list[NewMessage]) -> None:
        key = self._key(k)
        expected, actual = self._check(f"append({key}, {len(batch)} messages)",
                                       lambda s, _: s.append(key, batch), _messages, _message_ids)
        self._same_hashes(actual)
        self._remember_messages(expected)
        self._check_session(key)
        self._check_tenant(key.tenant)

    @rule(k=key_indexes, message=new_messages)
    def append_one(self, k: tuple[int, int, int], message: NewMessage) -> None:
        key = self._key(k)
        expected, actual = self._check(f"append_one({key})", lambda s, _: s.append_one(key, message),
                                       lambda v, ids: [_message(v, ids)], lambda v: [v.id])
        self._same_hashes(actual if isinstance(actual, _Failed) else [actual])
        self._remember_messages(expected if isinstance(expected, _Failed) else [expected])
        self._check_session(key)

    @rule(k=key_indexes, good=st.lists(new_messages, max_size=2), bad=bad_messages)
    def append_invalid_batch(self, k: tuple[int, int, int], good: list[NewMessage], bad: NewMessage) -> None:
        key = self._key(k)
        expected, _ = self._check(f"append({key}) with an invalid message",
                                  lambda s, _: s.append(key, [*good, bad]), _messages, _message_ids)
        assert isinstance(expected, _Failed), "the reference store accepted an invalid message"
        self._check_session(key)  # the whole batch was refused

    @rule(k=key_indexes, last=st.none() | st.integers(0, 6),
          budget=st.none() | st.tuples(st.integers(0, 6), st.integers(-1, 1)))
    def read_window(self, k: tuple[int, int, int], last: int | None, budget: tuple[int, int] | None) -> None:
        """``budget`` = (n, slack): max_tokens is what the newest n messages hold, plus slack, so
        the token budget lands on and next to the boundaries where an off-by-one would show."""
        key = self._key(k)
        max_tokens = None
        if budget is not None:
            newest = self._run(self.model.read_window(key, last=budget[0]))
            max_tokens = max(0, sum(m.tokens for m in newest) + budget[1])
        _, actual = self._check(f"read_window({key}, last={last}, max_tokens={max_tokens})",
                                lambda s, _: s.read_window(key, last=last, max_tokens=max_tokens),
                                _messages, _message_ids)
        self._same_hashes(actual)

    @rule(k=key_indexes, after_seq=st.integers(0, 3), limit=st.none() | st.integers(0, 3))
    def read_since(self, k: tuple[int, int, int], after_seq: int, limit: int | None) -> None:
        key = self._key(k)
        _, actual = self._check(f"read_since({key}, {after_seq}, limit={limit})",
                                lambda s, _: s.read_since(key, after_seq, limit=limit), _messages, _message_ids)
        self._same_hashes(actual)

    # -- sessions and users --------------------------------------------------------------------------
    @rule(k=key_indexes)
    def inspect_session(self, k: tuple[int, int, int]) -> None:
        """get_session, list_states, get_state and the whole transcript of any session."""
        self._check_session(self._key(k))

    @rule(t=tenant_indexes, u=st.none() | st.integers(0, 1), limit=st.integers(1, 3), offset=st.integers(0, 2))
    def list_sessions(self, t: int, u: int | None, limit: int, offset: int) -> None:
        tenant, user = self.tenants[t], None if u is None else USERS[u]
        self._check(f"list_sessions({tenant}, {user}, limit={limit}, offset={offset})",
                    lambda s, _: s.list_sessions(tenant, user, limit=limit, offset=offset), _sessions)

    @rule(t=tenant_indexes, limit=st.integers(1, 2), offset=st.integers(0, 1))
    def list_users(self, t: int, limit: int, offset: int) -> None:
        tenant = self.tenants[t]
        self._check(f"list_users({tenant}, limit={limit}, offset={offset})",
                    lambda s, _: s.list_users(tenant, limit=limit, offset=offset), _plain)

    # -- state ---------------------------------------------------------------------------------------
    @rule(k=key_indexes, name=st.sampled_from(STATE_NAMES), data=state_data,
          cas=st.sampled_from((None, "must-not-exist", "current", "stale", "ahead")))
    def put_state(self, k: tuple[int, int, int], name: str, data: dict[str, Any], cas: str | None) -> None:
        """``cas`` picks expected_version relative to the model's current version, so compare-and-set
        both succeeds and conflicts often (a random number would nearly always conflict)."""
        key = self._key(k)
        expected_version: int | None = None
        if cas is not None:
            current = self._run(self.model.get_state(key, name))
            version = 0 if current is None else current.version
            expected_version = {"must-not-exist": 0, "current": version, "stale": max(0, version - 1),
                                "ahead": version + 1}[cas]
        self._check(f"put_state({key}, {name!r}, expected_version={expected_version})",
                    lambda s, _: s.put_state(key, name, data, expected_version=expected_version),
                    lambda v, _: _state(v))
        self._check_session(key)

    # -- deletion ------------------------------------------------------------------------------------
    @rule(k=key_indexes, whole_user=st.booleans())
    def delete(self, k: tuple[int, int, int], whole_user: bool) -> None:
        """delete_session, or delete_user of the session's user (one rule, so deletes stay rarer)."""
        key = self._key(k)
        if whole_user:
            self._check(f"delete_user({key.tenant}, {key.user})",
                        lambda s, _: s.delete_user(key.tenant, key.user), _receipt)
            for thread in THREADS:
                self._check_session(SessionKey(key.tenant, key.user, thread))
            self._check_user(key.tenant, key.user)
        else:
            self._check(f"delete_session({key})", lambda s, _: s.delete_session(key), _receipt)
            self._check_session(key)
        self._check_tenant(key.tenant)

    # -- facts ---------------------------------------------------------------------------------------
    @staticmethod
    def _pick(written: list[str], index: int | None, missing: str) -> list[str]:
        if index is None:
            return []
        return [written[index % len(written)]] if written else [missing]

    @rule(tu=tenant_users, attribute=st.sampled_from(FACT_ATTRIBUTES), value=st.sampled_from(("alpha", "beta", "Zoë")),
          thread=st.none() | st.sampled_from(THREADS), sources=st.lists(picks, max_size=2),
          supersedes=st.none() | picks)
    def record_fact(self, tu: tuple[int, int], attribute: str, value: str, thread: str | None,
                    sources: list[int], supersedes: int | None) -> None:
        tenant, user = self.tenants[tu[0]], USERS[tu[1]]
        source_ids = sorted({m for i in sources for m in self._pick(self.message_ids, i, "msg_never-appended")})
        superseded = self._pick(self.fact_ids, supersedes, "fact_never-recorded")

        def call(s: Store, ids: IdMap) -> Awaitable[Fact]:
            fact = NewFact(attribute, value, f"{attribute} is {value}", thread=thread,
                           source_message_ids=tuple(ids(m) for m in source_ids), metadata={"from": "model"})
            return s.record_fact(tenant, user, fact, supersedes=[ids(f) for f in superseded])

        expected, _ = self._check(f"record_fact({tenant}, {user}, {attribute}={value}, sources={source_ids},"
                                  f" supersedes={superseded})", call, _fact, lambda v: [v.id])
        if not isinstance(expected, _Failed):
            self.fact_ids.append(expected.id)
        self._check_user(tenant, user)
        self._check_tenant(tenant)

    @rule(tu=tenant_users, attribute=st.none() | st.sampled_from(FACT_ATTRIBUTES),
          include_superseded=st.booleans(), limit=st.none() | st.integers(0, 3))
    def list_facts(self, tu: tuple[int, int], attribute: str | None, include_superseded: bool,
                   limit: int | None) -> None:
        tenant, user = self.tenants[tu[0]], USERS[tu[1]]
        self._check(f"list_facts({tenant}, {user}, attribute={attribute}, include_superseded={include_superseded},"
                    f" limit={limit})", lambda s, _: s.list_facts(tenant, user, attribute=attribute,
                                                                 include_superseded=include_superseded, limit=limit),
                    _facts, _fact_ids)

    @rule(tu=tenant_users, which=picks)
    def get_fact(self, tu: tuple[int, int], which: int) -> None:
        tenant, user = self.tenants[tu[0]], USERS[tu[1]]
        (fact_id,) = self._pick(self.fact_ids, which, "fact_never-recorded")
        self._check(f"get_fact({tenant}, {user}, {fact_id})", lambda s, ids: s.get_fact(tenant, user, ids(fact_id)),
                    lambda v, ids: None if v is None else _fact(v, ids), lambda v: [] if v is None else [v.id])

    @rule(tu=tenant_users, which=picks)
    def delete_fact(self, tu: tuple[int, int], which: int) -> None:
        tenant, user = self.tenants[tu[0]], USERS[tu[1]]
        (fact_id,) = self._pick(self.fact_ids, which, "fact_never-recorded")
        self._check(f"delete_fact({tenant}, {user}, {fact_id})",
                    lambda s, ids: s.delete_fact(tenant, user, ids(fact_id)), _plain)
        self._check_user(tenant, user)
        self._check_tenant(tenant)


# -- what is compared ----------------------------------------------------------------------------------
def _show(value: Any) -> str:
    return f"error {value.error}" if isinstance(value, _Failed) else "a result"


def _message_ids(messages: Sequence[Message]) -> list[str]:
    return [m.id for m in messages]


def _messages(messages: Sequence[Message], ids: IdMap) -> list[tuple[Any, ...]]:
    return [_message(m, ids) for m in messages]


def _message(m: Message, ids: IdMap) -> tuple[Any, ...]:
    # An idempotency key or timestamp the caller did not give is generated: only its presence counts.
    idem = "<generated>" if m.idempotency_key.startswith("auto_") else m.idempotency_key
    created = m.created_at if m.created_at in EXPLICIT_TIMES else "<now>"
    return (str(m.key), m.seq, ids(m.id), m.role, m.content, m.payload, m.payload_format, m.author, idem, created,
            dict(m.metadata), m.tokens, m.created_at.utcoffset())


def _session(info: SessionInfo) -> tuple[Any, ...]:
    return (str(info.key), info.message_count, info.last_seq)


def _maybe_session(info: SessionInfo | None, _ids: IdMap) -> tuple[Any, ...] | None:
    return None if info is None else _session(info)


def _sessions(infos: Sequence[SessionInfo], _ids: IdMap) -> list[tuple[Any, ...]]:
    return [_session(i) for i in infos]  # in order: most recently active first


def _maybe_state(blob: StateBlob | None, _ids: IdMap) -> tuple[Any, ...] | None:
    return None if blob is None else _state(blob)


def _plain(value: Any, _ids: IdMap) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _fact_ids(facts: Sequence[Fact]) -> list[str]:
    return [f.id for f in facts]


def _facts(facts: Sequence[Fact], ids: IdMap) -> list[tuple[Any, ...]]:
    return [_fact(f, ids) for f in facts]


def _state(blob: StateBlob) -> tuple[Any, ...]:
    return (str(blob.key), blob.name, blob.version, dict(blob.data))


def _fact(f: Fact, ids: IdMap) -> tuple[Any, ...]:
    superseded_by = None if f.superseded_by is None else ids(f.superseded_by)
    return (ids(f.id), f.tenant, f.user, f.attribute, f.value, f.text, f.kind,
            tuple(ids(s) for s in f.source_message_ids), f.thread, f.confidence, f.valid_to is None,
            superseded_by, dict(f.metadata))


def _receipt(r: Any, _ids: IdMap) -> tuple[Any, ...]:
    return (r.operation, r.tenant, r.user, r.thread, dict(r.counts))


def run_model_based(open_handle: OpenHandle, run_settings: settings = MODEL_BASED_SETTINGS) -> None:
    """Run the state machine against the store ``open_handle`` opens (a new handle per example)."""
    machine = type("StoreModel", (StoreModelMachine,), {"open_handle": staticmethod(open_handle)})
    run_state_machine_as_test(machine, settings=run_settings)
