"""Store conformance clauses: one test per semantic of the storage contract.

Every clause uses a fresh random tenant, so the suite can run against a shared server (PostgreSQL,
Redis) without cleaning it first, and any leak across tenants shows up as a failure.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import pytest

from ..errors import AmberError, InvalidInput, InvalidSessionKey, MessageTooLarge, NotFound, VersionConflict
from ..keys import SessionKey
from ..records import LearnJob, NewFact, NewMessage, VectorItem
from ..store.base import Store
from .model_based import MODEL_BASED_SETTINGS, run_model_based

OpenHandle = Callable[[], Awaitable[Store]]

pytestmark = pytest.mark.amber_conformance


def _msg(text: str, idem: str | None = None, **kw: Any) -> NewMessage:
    return NewMessage(role=kw.pop("role", "user"), content=text, idempotency_key=idem, **kw)


class StoreConformance:
    """Base class; subclasses provide the ``open_handle`` fixture."""

    @pytest.fixture
    def open_handle(self) -> OpenHandle:  # pragma: no cover - overridden
        raise NotImplementedError("provide an open_handle fixture")

    @pytest.fixture
    async def store(self, open_handle: OpenHandle):  # type: ignore[no-untyped-def]
        s = await open_handle()
        try:
            yield s
        finally:
            await s.close()

    # Subclasses may lower this for a slow backend (e.g. ``settings(MODEL_BASED_SETTINGS, max_examples=10)``).
    model_based_settings = MODEL_BASED_SETTINGS

    @pytest.fixture
    def tenant(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def key(self, tenant: str) -> SessionKey:
        return SessionKey(tenant, "u-1", "thread-1")

    # -- append and order --------------------------------------------------------------------------
    async def test_append_assigns_gap_free_sequence_from_one(self, store: Store, key: SessionKey) -> None:
        stored = await store.append(key, [_msg(f"m{i}") for i in range(5)])
        assert [m.seq for m in stored] == [1, 2, 3, 4, 5]
        more = await store.append_one(key, _msg("m5"))
        assert more.seq == 6
        assert [m.content for m in await store.read_since(key)] == [f"m{i}" for i in range(6)]

    async def test_empty_append_is_a_noop(self, store: Store, key: SessionKey) -> None:
        # Found by the model-based clause: the reference store created an empty session.
        assert await store.append(key, []) == []
        assert await store.get_session(key) is None
        assert await store.list_sessions(key.tenant) == [] and await store.list_users(key.tenant) == []

    async def test_append_returns_only_after_visible_to_another_handle(
        self, store: Store, open_handle: OpenHandle, key: SessionKey
    ) -> None:
        await store.append_one(key, _msg("hello"))
        other = await open_handle()
        try:
            assert [m.content for m in await other.read_window(key)] == ["hello"]
        finally:
            await other.close()

    async def test_retried_idempotency_key_is_a_noop(self, store: Store, key: SessionKey) -> None:
        first = await store.append_one(key, _msg("once", "idem-1"))
        again = await store.append_one(key, _msg("once", "idem-1"))
        assert again.id == first.id and again.seq == first.seq
        both = await store.append(key, [_msg("once", "idem-1"), _msg("twice", "idem-2")])
        assert [m.seq for m in both] == [1, 2]
        assert len(await store.read_since(key)) == 2

    async def test_idempotency_key_is_scoped_to_the_session(self, store: Store, tenant: str) -> None:
        a, b = SessionKey(tenant, "u", "a"), SessionKey(tenant, "u", "b")
        await store.append_one(a, _msg("x", "same"))
        await store.append_one(b, _msg("x", "same"))
        assert len(await store.read_since(a)) == 1 and len(await store.read_since(b)) == 1

    async def test_concurrent_appends_from_many_tasks_lose_nothing(self, store: Store, key: SessionKey) -> None:
        async def writer(w: int) -> None:
            for i in range(20):
                await store.append_one(key, _msg(f"w{w}-{i}", f"w{w}-{i}"))

        await asyncio.gather(*(writer(w) for w in range(8)))
        msgs = await store.read_since(key)
        assert [m.seq for m in msgs] == list(range(1, 161))
        assert len({m.content for m in msgs}) == 160
        for w in range(8):  # each writer's own order is kept
            mine = [m.content for m in msgs if m.content.startswith(f"w{w}-")]
            assert mine == [f"w{w}-{i}" for i in range(20)]

    async def test_concurrent_appends_from_two_handles(self, open_handle: OpenHandle, key: SessionKey) -> None:
        a, b = await open_handle(), await open_handle()
        try:
            async def writer(s: Store, tag: str) -> None:
                for i in range(25):
                    await s.append_one(key, _msg(f"{tag}{i}", f"{tag}{i}"))

            await asyncio.gather(writer(a, "a"), writer(b, "b"))
            msgs = await a.read_since(key)
            assert [m.seq for m in msgs] == list(range(1, 51))
            assert sorted(m.content for m in msgs) == sorted([f"a{i}" for i in range(25)] + [f"b{i}" for i in range(25)])
        finally:
            await a.close()
            await b.close()

    # -- round trips --------------------------------------------------------------------------------
    async def test_unicode_payload_and_metadata_round_trip(self, store: Store, key: SessionKey) -> None:
        text = "Zoë says 日本語 ✓ \U0001F600 «quotes» \\ \"escaped\" \t tab\nnewline"
        payload = {"type": "AssistantMessage", "content": [{"a": 1, "b": [True, None, 2.5]}], "thought": "ü"}
        meta = {"source": "import", "nested": {"k": ["v", 1, None]}, "emoji": "\U0001F680"}
        stamp = datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)
        stored = await store.append_one(key, NewMessage(
            role="assistant", content=text, payload=payload, payload_format="autogen/0.7:AssistantMessage",
            author="support", idempotency_key="k1", created_at=stamp, metadata=meta,
        ))
        (read,) = await store.read_since(key)
        for m in (stored, read):
            assert m.content == text and dict(m.payload) == payload and dict(m.metadata) == meta
            assert m.author == "support" and m.role == "assistant"
            assert m.payload_format == "autogen/0.7:AssistantMessage"
            assert m.created_at == stamp and m.created_at.tzinfo is not None
            assert m.idempotency_key == "k1" and m.tokens > 0 and len(m.content_hash) == 64

    async def test_timestamps_are_utc(self, store: Store, key: SessionKey) -> None:
        plus2 = timezone(timedelta(hours=2))
        m = await store.append_one(key, _msg("t", created_at=datetime(2024, 1, 1, 12, tzinfo=plus2)))
        (read,) = await store.read_since(key)
        assert read.created_at == datetime(2024, 1, 1, 10, tzinfo=timezone.utc) == m.created_at
        assert read.created_at.utcoffset() == timedelta(0)

    # -- windows -----------------------------------------------------------------------------------
    async def test_window_last_n_oldest_first(self, store: Store, key: SessionKey) -> None:
        await store.append(key, [_msg(f"m{i}") for i in range(10)])
        assert [m.content for m in await store.read_window(key, last=3)] == ["m7", "m8", "m9"]
        assert len(await store.read_window(key)) == 10
        assert await store.read_window(key, last=0) == []
        assert len(await store.read_window(key, last=100)) == 10

    async def test_window_token_budget_keeps_newest_suffix(self, store: Store, key: SessionKey) -> None:
        stored = await store.append(key, [_msg("word " * 10) for _ in range(10)])
        per = stored[0].tokens
        window = await store.read_window(key, max_tokens=per * 3 + per // 2)
        assert [m.seq for m in window] == [8, 9, 10]
        assert await store.read_window(key, max_tokens=per - 1) == []
        assert [m.seq for m in await store.read_window(key, last=2, max_tokens=10_000)] == [9, 10]

    async def test_read_since_and_limits(self, store: Store, key: SessionKey) -> None:
        await store.append(key, [_msg(f"m{i}") for i in range(6)])
        assert [m.seq for m in await store.read_since(key, 4)] == [5, 6]
        assert [m.seq for m in await store.read_since(key, 0, limit=2)] == [1, 2]
        assert await store.read_since(key, 6) == []
        assert await store.read_since(key, 100) == []
        with pytest.raises(InvalidInput):
            await store.read_since(key, -1)
        with pytest.raises(InvalidInput):
            await store.read_window(key, last=-1)

    async def test_unknown_session_reads_empty(self, store: Store, tenant: str) -> None:
        k = SessionKey(tenant, "nobody", "nothing")
        assert await store.read_window(k) == [] and await store.read_since(k) == []
        assert await store.get_session(k) is None

    # -- sessions ----------------------------------------------------------------------------------
    async def test_session_info_and_listing(self, store: Store, tenant: str) -> None:
        k1, k2, k3 = (SessionKey(tenant, "alice", "a"), SessionKey(tenant, "alice", "b"),
                      SessionKey(tenant, "bob", "a"))
        await store.append(k1, [_msg("1"), _msg("2")])
        await store.append(k2, [_msg("3")])
        await store.append(k3, [_msg("4")])
        info = await store.get_session(k1)
        assert info is not None and info.message_count == 2 and info.last_seq == 2
        assert info.created_at <= info.updated_at
        assert {str(s.key) for s in await store.list_sessions(tenant, "alice")} == {str(k1), str(k2)}
        assert len(await store.list_sessions(tenant)) == 3
        assert len(await store.list_sessions(tenant, limit=2)) == 2
        assert len(await store.list_sessions(tenant, limit=2, offset=2)) == 1
        assert await store.list_users(tenant) == ["alice", "bob"]

    # -- isolation ---------------------------------------------------------------------------------
    async def test_tenants_and_users_are_isolated(self, store: Store, tenant: str) -> None:
        other_tenant = tenant + "-b"
        keys = [SessionKey(tenant, "u", "t"), SessionKey(tenant, "v", "t"), SessionKey(other_tenant, "u", "t")]
        for i, k in enumerate(keys):
            await store.append_one(k, _msg(f"secret-{i}", "same-idem"))
            await store.record_fact(k.tenant, k.user, NewFact("policy_number", f"P-{i}", f"policy P-{i}"))
        for i, k in enumerate(keys):
            assert [m.content for m in await store.read_since(k)] == [f"secret-{i}"]
            facts = await store.list_facts(k.tenant, k.user)
            assert [f.value for f in facts] == [f"P-{i}"]
            hits = await store.search_text(k.tenant, k.user, "secret policy")
            assert hits and all(h.tenant == k.tenant and h.user == k.user for h in hits)
        assert await store.list_users(other_tenant) == ["u"]
        assert await store.get_fact(other_tenant, "u", facts[0].id) is not None
        assert await store.get_fact(tenant, "u", facts[0].id) is None

    # -- state -------------------------------------------------------------------------------------
    async def test_state_compare_and_set(self, store: Store, key: SessionKey) -> None:
        assert await store.get_state(key, "team") is None
        b1 = await store.put_state(key, "team", {"a": 1}, expected_version=0)
        assert b1.version == 1
        with pytest.raises(VersionConflict):
            await store.put_state(key, "team", {"a": 2}, expected_version=0)
        b2 = await store.put_state(key, "team", {"a": 2}, expected_version=1)
        assert b2.version == 2
        with pytest.raises(VersionConflict):
            await store.put_state(key, "team", {"a": 3}, expected_version=1)
        got = await store.get_state(key, "team")
        assert got is not None and got.version == 2 and dict(got.data) == {"a": 2}
        b3 = await store.put_state(key, "team", {"a": 4})  # unconditional
        assert b3.version == 3

    async def test_concurrent_compare_and_set_exactly_one_wins(self, store: Store, key: SessionKey) -> None:
        await store.put_state(key, "s", {"n": 0}, expected_version=0)

        async def attempt(i: int) -> bool:
            try:
                await store.put_state(key, "s", {"n": i}, expected_version=1)
                return True
            except VersionConflict:
                return False

        results = await asyncio.gather(*(attempt(i) for i in range(6)))
        assert sum(results) == 1
        got = await store.get_state(key, "s")
        assert got is not None and got.version == 2

    async def test_list_states_names_what_a_session_holds(self, store: Store, key: SessionKey) -> None:
        assert await store.list_states(key) == []
        await store.put_state(key, "team", {"a": 1})
        await store.put_state(key, "agent", {"b": 1})
        await store.put_state(key, "agent", {"b": 2})
        await store.put_state(SessionKey(key.tenant, key.user, "other-thread"), "elsewhere", {})
        await store.put_state(SessionKey(key.tenant + "-b", key.user, key.thread), "other-tenant", {})
        assert await store.list_states(key) == ["agent", "team"]
        await store.delete_session(key)
        assert await store.list_states(key) == []

    # -- deletion ----------------------------------------------------------------------------------
    async def test_close_never_deletes(self, open_handle: OpenHandle, key: SessionKey) -> None:
        s = await open_handle()
        await s.append_one(key, _msg("keep me"))
        await s.put_state(key, "agent", {"x": 1})
        await s.close()
        await s.close()  # idempotent
        s2 = await open_handle()
        try:
            assert [m.content for m in await s2.read_since(key)] == ["keep me"]
            assert (await s2.get_state(key, "agent")) is not None
        finally:
            await s2.close()

    async def test_delete_session_is_explicit_and_audited(self, store: Store, tenant: str) -> None:
        gone, kept = SessionKey(tenant, "u", "gone"), SessionKey(tenant, "u", "kept")
        await store.append(gone, [_msg("a"), _msg("b")])
        await store.put_state(gone, "agent", {"x": 1})
        await store.append(kept, [_msg("c")])
        receipt = await store.delete_session(gone)
        assert receipt.counts["messages"] == 2 and receipt.counts["states"] == 1
        assert await store.read_since(gone) == [] and await store.get_state(gone, "agent") is None
        assert await store.get_session(gone) is None
        assert [m.content for m in await store.read_since(kept)] == ["c"]
        ops = [e.operation for e in await store.list_audit(tenant)]
        assert "session.delete" in ops

    async def test_delete_user_removes_everything_of_that_user_only(self, store: Store, tenant: str) -> None:
        for user in ("gone", "kept"):
            for t in ("a", "b"):
                await store.append_one(SessionKey(tenant, user, t), _msg(f"{user} {t}"))
            await store.record_fact(tenant, user, NewFact("email", f"{user}@x.io", f"email {user}@x.io"))
        receipt = await store.delete_user(tenant, "gone")
        assert receipt.counts["sessions"] == 2 and receipt.counts["messages"] == 2 and receipt.counts["facts"] == 1
        assert await store.list_sessions(tenant, "gone") == []
        assert await store.list_facts(tenant, "gone", include_superseded=True) == []
        assert await store.search_text(tenant, "gone", "gone") == []
        assert len(await store.list_sessions(tenant, "kept")) == 2
        assert len(await store.list_facts(tenant, "kept")) == 1
        assert await store.list_users(tenant) == ["kept"]

    # -- audit -------------------------------------------------------------------------------------
    async def test_every_write_is_audited_with_ids_and_hashes_never_content(self, store: Store, key: SessionKey) -> None:
        stored = await store.append(key, [_msg("the secret P-99999"), _msg("more")])
        await store.append_one(key, _msg("the secret P-99999", stored[0].idempotency_key))  # no-op
        await store.put_state(key, "agent", {"secret": "P-99999"})
        await store.record_fact(key.tenant, key.user, NewFact("policy_number", "P-99999", "policy P-99999"))
        events = await store.list_audit(key.tenant)
        ops = [e.operation for e in events]
        assert ops == ["message.append", "state.put", "fact.record"]
        append = events[0]
        assert set(append.record_ids) == {m.id for m in stored} and append.count == 2
        assert set(append.digests) == {m.content_hash for m in stored}
        assert all(e.actor and e.at.tzinfo is not None for e in events)
        for e in events:
            assert "P-99999" not in repr((e.record_ids, e.digests, e.operation, e.actor))
        assert [e.id for e in events] == sorted(e.id for e in events)

    # -- bad input ---------------------------------------------------------------------------------
    async def test_bad_input_is_rejected_and_loses_nothing(self, store: Store, key: SessionKey) -> None:
        await store.append_one(key, _msg("safe"))
        bad = [
            NewMessage(role="wizard", content="x"),
            NewMessage(role="user", content="bad \ud800 surrogate"),
            NewMessage(role="user", content="nul \x00 byte"),
            NewMessage(role="user", content="x", metadata={"x": object()}),
            NewMessage(role="user", content="x" * (store.limits.max_message_bytes + 1)),
            NewMessage(role="user", content="x", created_at=datetime(2024, 1, 1)),  # naive
            NewMessage(role="user", content="x", idempotency_key=""),
        ]
        for m in bad:
            with pytest.raises(InvalidInput):
                await store.append(key, [_msg("batch-mate"), m])  # whole batch refused
        with pytest.raises(MessageTooLarge):
            await store.append_one(key, bad[4])
        assert [m.content for m in await store.read_since(key)] == ["safe"]
        with pytest.raises(InvalidSessionKey):
            SessionKey(key.tenant, "bad/user", "t")
        with pytest.raises(AmberError):
            await store.put_state(key, "bad name!", {})

    # -- facts -------------------------------------------------------------------------------------
    async def test_fact_supersession_keeps_history_and_provenance(self, store: Store, key: SessionKey) -> None:
        (m1,) = await store.append(key, [_msg("my address is 1 Old Road")])
        old = await store.record_fact(key.tenant, key.user, NewFact(
            "address", "1 Old Road", "address: 1 Old Road", source_message_ids=(m1.id,), thread=key.thread))
        (m2,) = await store.append(key, [_msg("I moved to 2 New Street")])
        new = await store.record_fact(key.tenant, key.user, NewFact(
            "address", "2 New Street", "address: 2 New Street", source_message_ids=(m2.id,)), supersedes=[old.id])
        current = await store.list_facts(key.tenant, key.user)
        assert [f.id for f in current] == [new.id]
        history = await store.list_facts(key.tenant, key.user, include_superseded=True)
        assert {f.id for f in history} == {old.id, new.id}
        old_now = await store.get_fact(key.tenant, key.user, old.id)
        assert old_now is not None and old_now.valid_to is not None and old_now.superseded_by == new.id
        assert old_now.source_message_ids == (m1.id,) and new.source_message_ids == (m2.id,)
        with pytest.raises(AmberError):
            await store.record_fact(key.tenant, key.user, NewFact("address", "x", "x"), supersedes=[old.id])
        assert await store.delete_fact(key.tenant, key.user, new.id) is True
        assert await store.delete_fact(key.tenant, key.user, new.id) is False

    async def test_fact_refusal_reports_an_unknown_superseded_fact_before_erased_sources(
        self, store: Store, tenant: str
    ) -> None:
        # Found by the model-based clause: the reference store reported the erased sources first.
        key = SessionKey(tenant, "u", "t")
        (m,) = await store.append(key, [_msg("hello")])
        await store.delete_session(key)
        erased_source = NewFact("a", "b", "a b", source_message_ids=(m.id,))
        with pytest.raises(InvalidInput):
            await store.record_fact(tenant, "u", erased_source, supersedes=["fact_unknown"])
        with pytest.raises(NotFound):
            await store.record_fact(tenant, "u", erased_source)
        assert await store.list_facts(tenant, "u", include_superseded=True) == []

    async def test_fact_compare_and_set_mismatch_raises_and_writes_nothing(self, store: Store, key: SessionKey) -> None:
        t, u = key.tenant, key.user
        email = NewFact("email", "bob@example.com", "email bob@example.com")
        first = await store.record_fact(t, u, email, expect_current=())
        await store.record_fact(t, "someone-else", email)  # another user's and another attribute's
        await store.record_fact(t, u, NewFact("phone", "555-0100", "phone 555-0100"))  # facts do not count
        audited = len(await store.list_audit(t, operation="fact.record"))
        for expected in ((), ("fact_unknown",), (first.id, "fact_unknown")):
            with pytest.raises(VersionConflict):
                await store.record_fact(t, u, email, expect_current=expected)
            with pytest.raises(VersionConflict):  # also when superseding what is current
                await store.record_fact(t, u, email, supersedes=[first.id], expect_current=expected)
        assert [f.id for f in await store.list_facts(t, u, attribute="email", include_superseded=True)] == [first.id]
        assert len(await store.list_audit(t, operation="fact.record")) == audited
        with pytest.raises(InvalidInput):
            await store.record_fact(t, u, email, expect_current=first.id)  # a string is not a set of ids
        second = await store.record_fact(t, u, NewFact("email", "bob@work.com", "email bob@work.com"),
                                         expect_current=[first.id])  # both current, as expected
        newest = await store.record_fact(t, u, NewFact("email", "b@new.io", "email b@new.io"),
                                         supersedes=[first.id, second.id], expect_current=(second.id, first.id))
        assert [f.id for f in await store.list_facts(t, u, attribute="email")] == [newest.id]
        # superseded facts are not current: only the newest one is expected now
        with pytest.raises(VersionConflict):
            await store.record_fact(t, u, email, expect_current=[first.id, second.id, newest.id])

    async def test_concurrent_fact_compare_and_set_exactly_one_wins(self, store: Store, key: SessionKey) -> None:
        async def attempt(i: int) -> bool:
            try:
                await store.record_fact(key.tenant, key.user, NewFact(
                    "email", "bob@example.com", f"email bob@example.com ({i})"), expect_current=())
                return True
            except VersionConflict:
                return False

        results = await asyncio.gather(*(attempt(i) for i in range(8)))
        assert sum(results) == 1
        assert len(await store.list_facts(key.tenant, key.user, attribute="email", include_superseded=True)) == 1

    async def test_fact_compare_and_set_exactly_one_wins_across_handles(
        self, open_handle: OpenHandle, tenant: str
    ) -> None:
        """Separate handles (separate connections, writer threads, pools) racing: the check holds
        inside each write's transaction, not only within one handle."""
        handles = [await open_handle() for _ in range(3)]
        try:
            async def attempt(s: Store, user: str, i: int) -> bool:
                try:
                    await s.record_fact(tenant, user, NewFact(
                        "email", "bob@example.com", f"email bob@example.com ({i})"), expect_current=())
                    return True
                except VersionConflict:
                    return False

            for race in range(3):  # several races, each over a fresh attribute
                user = f"u-{race}"
                results = await asyncio.gather(*(attempt(handles[i % 3], user, i) for i in range(9)))
                assert sum(results) == 1, f"race {race}: {sum(results)} writers won"
                assert len(await handles[race].list_facts(tenant, user, include_superseded=True)) == 1
        finally:
            for s in handles:
                await s.close()

    async def test_fact_recorded_as_history_is_closed_and_leaves_the_current_fact_alone(
        self, store: Store, key: SessionKey
    ) -> None:
        t, u = key.tenant, key.user
        t1, t2, t3 = (datetime(2024, 3, 1, h, tzinfo=timezone.utc) for h in (9, 10, 11))
        (m,) = await store.append(key, [_msg("I lived in Leeds then", created_at=t2)])
        older = await store.record_fact(t, u, NewFact("city", "Hull", "city Hull", valid_from=t1))
        newer = await store.record_fact(t, u, NewFact("city", "York", "city York", valid_from=t3), supersedes=[older.id])
        late = NewFact("city", "Leeds", "city Leeds", source_message_ids=(m.id,), valid_from=t2)
        audited = len(await store.list_audit(t, operation="fact.record"))
        bad: list[tuple[NewFact, dict[str, Any]]] = [
            (late, {"superseded_by": "fact_unknown"}),
            (late, {"superseded_by": newer.id, "supersedes": [newer.id]}),
            (replace(late, valid_from=None), {"superseded_by": newer.id}),
            (replace(late, valid_from=t3 + timedelta(seconds=1)), {"superseded_by": newer.id}),  # starts after it
            (replace(late, attribute="town"), {"superseded_by": newer.id}),
        ]
        for fact, kw in bad:
            with pytest.raises(InvalidInput):
                await store.record_fact(t, u, fact, **kw)
        with pytest.raises(VersionConflict):  # the compare-and-set holds for history too
            await store.record_fact(t, u, late, superseded_by=newer.id, expect_current=())
        assert len(await store.list_audit(t, operation="fact.record")) == audited
        assert len(await store.list_facts(t, u, include_superseded=True)) == 2
        past = await store.record_fact(t, u, late, superseded_by=newer.id, expect_current=[newer.id])
        assert (past.valid_from, past.valid_to, past.superseded_by) == (t2, t3, newer.id) and not past.current
        assert await store.get_fact(t, u, past.id) == past
        assert await store.get_fact(t, u, newer.id) == newer  # untouched
        assert [f.id for f in await store.list_facts(t, u)] == [newer.id]
        assert {f.id for f in await store.list_facts(t, u, include_superseded=True)} == {older.id, newer.id, past.id}
        assert await store.search_text(t, u, "Leeds", kinds=("fact",)) == []  # history is not searched
        (entry,) = (await store.list_audit(t, operation="fact.record"))[audited:]
        assert list(entry.record_ids) == [past.id]
        # a superseded fact may close it too (the statement that came next may itself be history)
        between = await store.record_fact(t, u, replace(late, valid_from=t1), superseded_by=older.id)
        assert (between.valid_to, between.superseded_by) == (t1, older.id)

    # -- search ------------------------------------------------------------------------------------
    async def test_lexical_scores_in_unit_range_and_ranked(self, store: Store, key: SessionKey) -> None:
        await store.append(key, [
            _msg("my claim number is C-7788 for the water damage"),
            _msg("the weather is nice today"),
            _msg("claim claim claim"),
        ])
        hits = await store.search_text(key.tenant, key.user, "claim C-7788 water damage", kinds=("message",))
        assert hits
        assert hits[0].text.startswith("my claim number")
        assert all(0.0 <= h.score <= 1.0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all(h.kind == "message" and h.seq is not None for h in hits)
        assert await store.search_text(key.tenant, key.user, "zebra", kinds=("message",)) == []

    async def test_vector_search_scores_and_tie_order_is_stable(self, store: Store, key: SessionKey) -> None:
        msgs = await store.append(key, [_msg(f"v{i}") for i in range(4)])
        vecs = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)]
        await store.put_vectors(key.tenant, key.user, "toy", [VectorItem("message", m.id, v) for m, v in zip(msgs, vecs)])
        hits = await store.search_vectors(key.tenant, key.user, "toy", (1.0, 0.0, 0.0), limit=4)
        assert hits[0].id == msgs[0].id and abs(hits[0].score - 1.0) < 1e-6
        assert hits[-1].id == msgs[2].id and abs(hits[-1].score) < 1e-6
        assert all(0.0 <= h.score <= 1.0 for h in hits)
        again = await store.search_vectors(key.tenant, key.user, "toy", (1.0, 0.0, 0.0), limit=4)
        assert [h.id for h in again] == [h.id for h in hits]
        assert await store.search_vectors(key.tenant, "someone-else", "toy", (1.0, 0.0, 0.0)) == []

    async def test_hits_say_who_said_a_turn(self, store: Store, key: SessionKey) -> None:
        """Message hits carry the turn's author and role (recall tells speakers apart by them); fact
        hits carry neither."""
        nora, anon = await store.append(key, [
            _msg("I have been vegetarian since May", author="Nora"),
            _msg("vegetarian recipes coming up", role="assistant"),
        ])
        fact = await store.record_fact(key.tenant, key.user, NewFact(
            "diet", "vegetarian", "diet: vegetarian (said by Nora)", source_message_ids=(nora.id,)))
        await store.put_vectors(key.tenant, key.user, "toy", [
            VectorItem("message", nora.id, (1.0, 0.0)), VectorItem("message", anon.id, (0.8, 0.6)),
            VectorItem("fact", fact.id, (0.6, 0.8))])
        want = {nora.id: ("user", "Nora"), anon.id: ("assistant", None), fact.id: (None, None)}
        lexical = await store.search_text(key.tenant, key.user, "vegetarian")
        vector = await store.search_vectors(key.tenant, key.user, "toy", (1.0, 0.0))
        for hits in (lexical, vector):
            assert {h.id: (h.role, h.author) for h in hits} == want
        only_messages = await store.search_text(key.tenant, key.user, "vegetarian", kinds=("message",))
        assert {h.id: h.author for h in only_messages} == {nora.id: "Nora", anon.id: None}

    # -- learning queue ----------------------------------------------------------------------------
    async def test_learn_jobs_are_leased_retried_and_completed(self, store: Store, key: SessionKey) -> None:
        await store.append(key, [_msg("a"), _msg("b")])
        mine = lambda jobs: [j for j in jobs if j.key == key]  # noqa: E731 - other clauses share the queue
        jobs = mine(await store.claim_learn_jobs(limit=1000, lease_seconds=60, tenant=key.tenant))
        assert sorted(j.seq for j in jobs) == [1, 2]
        assert mine(await store.claim_learn_jobs(limit=1000, tenant=key.tenant)) == []  # leased
        await store.fail_learn_job(jobs[0].id, "boom", retry_in=0)
        retry = mine(await store.claim_learn_jobs(limit=1000, tenant=key.tenant))
        assert [j.id for j in retry] == [jobs[0].id] and retry[0].attempts == 2 and retry[0].last_error == "boom"
        await store.complete_learn_jobs([j.id for j in jobs])
        await store.fail_learn_job(jobs[0].id, "late", retry_in=0)  # completed job: no resurrection
        assert mine(await store.claim_learn_jobs(limit=1000, lease_seconds=0, tenant=key.tenant)) == []

    @staticmethod
    async def _dead_jobs(store: Store, key: SessionKey, errors: list[str]) -> list[LearnJob]:
        """Append one message per error and fail its job for good with that error; the jobs, in order."""
        await store.append(key, [_msg(e) for e in errors])
        claimed = await store.claim_learn_jobs(limit=1000, lease_seconds=600, tenant=key.tenant)
        jobs = sorted((j for j in claimed if j.key == key), key=lambda j: j.seq)
        assert len(jobs) == len(errors)
        for job, error in zip(jobs, errors):
            await store.fail_learn_job(job.id, error, retry_in=None)
        return jobs

    async def test_dead_jobs_are_listed_oldest_first_with_their_error_and_attempts(
        self, store: Store, key: SessionKey
    ) -> None:
        (m1,) = await store.append(key, [_msg("a")])
        await asyncio.sleep(0.002)  # ids are time-ordered: a's job sorts first, yet it dies last
        (m2,) = await store.append(key, [_msg("b")])
        claimed = await store.claim_learn_jobs(limit=1000, lease_seconds=600, tenant=key.tenant)
        jobs = {j.message_id: j for j in claimed if j.key == key}
        job, other = jobs[m1.id], jobs[m2.id]
        await store.fail_learn_job(other.id, "other", retry_in=None)
        await store.fail_learn_job(job.id, "first try", retry_in=0)
        await asyncio.sleep(0.002)
        before = datetime.now(timezone.utc)
        (again,) = [j for j in await store.claim_learn_jobs(limit=1000, lease_seconds=600, tenant=key.tenant)
                    if j.key == key]
        await store.fail_learn_job(again.id, "ValueError: gave up", retry_in=None)
        after = datetime.now(timezone.utc)
        dead = await store.list_dead_learn_jobs(tenant=key.tenant)
        assert [(d.id, d.key, d.message_id, d.seq, d.attempts, d.last_error) for d in dead] == [
            (other.id, key, m2.id, 2, 1, "other"),
            (job.id, key, m1.id, 1, 2, "ValueError: gave up"),
        ]
        died = dead[1].died_at
        assert died is not None and died.tzinfo is not None and dead[0].died_at is not None
        # when it died, not when its lease would have run out (600 s later)
        assert before - timedelta(seconds=5) <= died <= after + timedelta(seconds=5)
        assert dead[0].died_at < died
        assert [d.id for d in await store.list_dead_learn_jobs(tenant=key.tenant, limit=1)] == [other.id]
        assert await store.list_dead_learn_jobs(tenant=key.tenant, limit=0) == []
        everyone = await store.list_dead_learn_jobs(limit=10_000)
        assert [d.id for d in everyone if d.key == key] == [other.id, job.id]
        assert (await store.learn_queue_stats(key.tenant))["dead"] == 2
        # claiming never hands out a dead job
        assert await store.claim_learn_jobs(limit=1000, lease_seconds=0, tenant=key.tenant) == []
        await store.delete_session(key)  # its jobs go with it: nothing is left on a shared server
        assert await store.list_dead_learn_jobs(tenant=key.tenant) == []

    async def test_requeue_makes_dead_jobs_claimable_again(self, store: Store, key: SessionKey) -> None:
        first, second = await self._dead_jobs(store, key, ["boom 1", "boom 2"])
        (live,) = await store.append(key, [_msg("pending")])
        stats = await store.learn_queue_stats(key.tenant)
        assert (stats["pending"], stats["dead"]) == (1, 2)
        # only the dead job named counts: an unknown id and a pending job's id are skipped
        live_job = [j for j in await store.claim_learn_jobs(limit=1000, lease_seconds=0, tenant=key.tenant)
                    if j.message_id == live.id]
        assert len(live_job) == 1
        assert await store.requeue_dead_learn_jobs([second.id, "job-unknown", live_job[0].id],
                                                   tenant=key.tenant) == 1
        assert [d.id for d in await store.list_dead_learn_jobs(tenant=key.tenant)] == [first.id]
        after = await store.learn_queue_stats(key.tenant)
        assert (after["pending"], after["dead"]) == (stats["pending"] + 1, stats["dead"] - 1)
        claimed = {j.id: j for j in await store.claim_learn_jobs(limit=1000, tenant=key.tenant)
                   if j.key == key}
        assert set(claimed) == {second.id, live_job[0].id}
        # attempts start again from 0 (this claim is the first); the old error is kept until the next one
        assert (claimed[second.id].attempts, claimed[second.id].last_error) == (1, "boom 2")
        assert await store.requeue_dead_learn_jobs([second.id], tenant=key.tenant) == 0  # not dead any more
        assert await store.requeue_dead_learn_jobs([], tenant=key.tenant) == 0
        assert await store.requeue_dead_learn_jobs(tenant=key.tenant) == 1  # None: every dead job of it
        assert await store.list_dead_learn_jobs(tenant=key.tenant) == []
        assert (await store.learn_queue_stats(key.tenant))["dead"] == 0
        again = await store.claim_learn_jobs(limit=1000, tenant=key.tenant)
        assert [j.id for j in again if j.key == key] == [first.id]
        await store.delete_session(key)

    async def test_dead_jobs_are_listed_and_requeued_per_tenant(self, store: Store, tenant: str) -> None:
        a, b = SessionKey(tenant, "u", "t"), SessionKey(f"{tenant}-b", "u", "t")
        (job_a,) = await self._dead_jobs(store, a, ["boom a"])
        (job_b,) = await self._dead_jobs(store, b, ["boom b"])
        assert [d.id for d in await store.list_dead_learn_jobs(tenant=a.tenant)] == [job_a.id]
        assert [d.id for d in await store.list_dead_learn_jobs(tenant=b.tenant)] == [job_b.id]
        assert {d.id for d in await store.list_dead_learn_jobs(limit=10_000)} >= {job_a.id, job_b.id}
        # tenant A's requeue never touches B's job, not even when given its id
        assert await store.requeue_dead_learn_jobs([job_b.id], tenant=a.tenant) == 0
        assert await store.requeue_dead_learn_jobs(tenant=a.tenant) == 1
        assert [d.id for d in await store.list_dead_learn_jobs(tenant=b.tenant)] == [job_b.id]
        assert (await store.learn_queue_stats(b.tenant))["dead"] == 1
        assert (await store.learn_queue_stats(a.tenant))["dead"] == 0
        assert await store.requeue_dead_learn_jobs([job_b.id]) == 1  # no tenant: the id alone decides
        assert await store.list_dead_learn_jobs(tenant=b.tenant) == []
        await store.delete_session(a)
        await store.delete_session(b)

    async def test_dead_job_queries_reject_bad_input_and_change_nothing(
        self, store: Store, key: SessionKey
    ) -> None:
        (job,) = await self._dead_jobs(store, key, ["boom"])
        for limit in (-1, "10", True, None, 1.5, 2**63):
            with pytest.raises(InvalidInput):
                await store.list_dead_learn_jobs(tenant=key.tenant, limit=limit)  # type: ignore[arg-type]
        for bad_tenant in ("bad/tenant", "", 42):
            with pytest.raises(InvalidInput):
                await store.list_dead_learn_jobs(tenant=bad_tenant)  # type: ignore[arg-type]
            with pytest.raises(InvalidInput):
                await store.requeue_dead_learn_jobs([job.id], tenant=bad_tenant)  # type: ignore[arg-type]
        for ids in (job.id, [job.id, 7], b"job", [None]):
            with pytest.raises(InvalidInput):  # a lone string is not read as its characters
                await store.requeue_dead_learn_jobs(ids, tenant=key.tenant)  # type: ignore[arg-type]
        assert [d.id for d in await store.list_dead_learn_jobs(tenant=key.tenant)] == [job.id]
        await store.delete_session(key)

    # -- restore: records written with their given identity ---------------------------------------
    async def _restore_source(self, store: Store, key: SessionKey) -> tuple[Any, ...]:
        """A session and facts as an export would carry them, read back from ``store``."""
        t0 = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
        m1, m2, m3 = await store.append(key, [
            _msg("my policy is P-4242 and I live at 1 Old Road", "r1", created_at=t0, metadata={"ch": "web"}),
            NewMessage("assistant", "Noted, Zoë ✓ \U0001F600", payload={"type": "AssistantMessage", "x": [1, None]},
                       payload_format="autogen/0.7:AssistantMessage", author="support", idempotency_key="r2",
                       created_at=t0 + timedelta(seconds=5)),
            _msg("I moved to 2 New Street", "r3", created_at=t0 + timedelta(days=2)),
        ])
        await store.put_state(key, "team", {"turn": 3})
        await store.put_state(key, "team", {"turn": 4, "agents": ["support"]})
        await store.put_state(key, "agent", {"draft": True})
        old = await store.record_fact(key.tenant, key.user, NewFact(
            "address", "1 Old Road", "address: 1 Old Road", source_message_ids=(m1.id,), thread=key.thread,
            valid_from=t0, confidence=0.9, metadata={"by": "rules"}))
        await store.record_fact(key.tenant, key.user, NewFact(
            "address", "2 New Street", "address: 2 New Street", source_message_ids=(m3.id,), thread=key.thread,
            valid_from=t0 + timedelta(days=2)), supersedes=[old.id])
        await store.record_fact(key.tenant, key.user, NewFact("policy_number", "P-4242", "policy P-4242",
                                                              kind="identifier", source_message_ids=(m1.id,)))
        info = await store.get_session(key)
        messages = await store.read_since(key)
        states = [await store.get_state(key, n) for n in await store.list_states(key)]
        facts = await store.list_facts(key.tenant, key.user, include_superseded=True)
        return info, messages, states, facts

    async def test_restore_after_forget_reproduces_every_record_exactly(self, store: Store, key: SessionKey) -> None:
        info, messages, states, facts = await self._restore_source(store, key)
        assert info is not None and len(states) == 2 and len(facts) == 3
        await store.delete_user(key.tenant, key.user)
        assert await store.get_session(key) is None

        restored = await store.restore_session(key, messages, states, created_at=info.created_at,
                                               updated_at=info.updated_at, last_seq=info.last_seq)
        await store.restore_facts(key.tenant, key.user, facts)
        assert restored == info == await store.get_session(key)
        assert await store.read_since(key) == messages
        assert [await store.get_state(key, b.name) for b in states] == states
        assert await store.list_states(key) == [b.name for b in states]
        assert await store.list_facts(key.tenant, key.user, include_superseded=True) == facts
        assert [f.value for f in await store.list_facts(key.tenant, key.user)] == ["P-4242", "2 New Street"]
        assert await store.list_users(key.tenant) == [key.user]
        # searchable like appended data; learnable (the learner re-embeds it) like appended data
        hits = await store.search_text(key.tenant, key.user, "New Street")
        assert {h.id for h in hits} >= {messages[2].id}
        jobs = [j for j in await store.claim_learn_jobs(limit=1000, tenant=key.tenant) if j.key == key]
        assert sorted((j.seq, j.message_id) for j in jobs) == [(m.seq, m.id) for m in messages]
        # the restored identity is live: a retried key is a no-op, the next append follows last_seq
        again = await store.append_one(key, _msg(messages[0].content, "r1"))
        assert again == messages[0]
        assert (await store.append_one(key, _msg("after restore"))).seq == 4
        # a restored message is no longer "erased": facts learned from it are accepted again
        await store.record_fact(key.tenant, key.user, NewFact("greeting", "hi", "said hi",
                                                              source_message_ids=(messages[1].id,)))
        events = {e.operation: e for e in await store.list_audit(key.tenant)}
        assert set(events["session.restore"].record_ids) == {m.id for m in messages} | {"agent@1", "team@2"}
        assert set(events["fact.restore"].record_ids) == {f.id for f in facts}
        for op in ("session.restore", "fact.restore"):
            assert "P-4242" not in repr(events[op].record_ids + events[op].digests)

    async def test_restore_keeps_seqs_a_retention_prune_left_and_state_only_sessions(
        self, store: Store, key: SessionKey
    ) -> None:
        import dataclasses

        await store.append(key, [_msg(f"m{i}", f"k{i}") for i in range(4)])
        kept = (await store.read_since(key))[2:]  # as if retention removed seq 1 and 2
        target = SessionKey(key.tenant, key.user, "restored")
        moved = [dataclasses.replace(m, key=target, id=f"{m.id}-copy") for m in kept]
        info = await store.restore_session(target, moved, last_seq=4)
        assert info is not None and info.last_seq == 4
        assert [(m.seq, m.id) for m in await store.read_since(target)] == [(3, moved[0].id), (4, moved[1].id)]
        assert (await store.append_one(target, _msg("next"))).seq == 5
        only_state = SessionKey(key.tenant, key.user, "state-only")
        blob = await store.put_state(key, "agent", {"x": 1})
        copy = dataclasses.replace(blob, key=only_state, version=7)
        assert await store.restore_session(only_state, [], [copy]) is None
        assert await store.get_session(only_state) is None
        assert await store.get_state(only_state, "agent") == copy

    async def test_restore_refuses_a_target_that_is_not_empty_and_writes_nothing(
        self, store: Store, key: SessionKey
    ) -> None:
        from ..errors import Conflict

        info, messages, states, facts = await self._restore_source(store, key)
        fresh = SessionKey(key.tenant, key.user, "fresh")

        def moved(k: SessionKey, suffix: str) -> list[Any]:
            import dataclasses

            return [dataclasses.replace(m, key=k, id=m.id + suffix) for m in messages]

        def blobs(k: SessionKey) -> list[Any]:
            import dataclasses

            return [dataclasses.replace(b, key=k) for b in states]

        with pytest.raises(Conflict):  # the session holds messages
            await store.restore_session(key, moved(key, "-a"), [])
        await store.put_state(fresh, "agent", {"x": 1})
        with pytest.raises(Conflict):  # it holds state (and no messages)
            await store.restore_session(fresh, moved(fresh, "-b"), blobs(fresh)[:1])
        with pytest.raises(Conflict):  # a message id is taken (by another session of the tenant)
            await store.restore_session(SessionKey(key.tenant, key.user, "empty"), moved(
                SessionKey(key.tenant, key.user, "empty"), ""), [])
        with pytest.raises(Conflict):  # one fact id of the batch is taken
            import dataclasses

            await store.restore_facts(key.tenant, key.user, [
                dataclasses.replace(facts[0], id=facts[0].id + "-new"), facts[1]])
        assert await store.read_since(key) == messages
        assert await store.read_since(fresh) == [] and await store.get_session(fresh) is None
        assert [m for m in await store.read_since(SessionKey(key.tenant, key.user, "empty"))] == []
        assert await store.get_session(SessionKey(key.tenant, key.user, "empty")) is None
        assert await store.list_states(fresh) == ["agent"]
        assert await store.list_facts(key.tenant, key.user, include_superseded=True) == facts
        assert await store.list_audit(key.tenant, operation="session.restore") == []
        assert await store.list_audit(key.tenant, operation="fact.restore") == []
        assert [j for j in await store.claim_learn_jobs(limit=1000, tenant=key.tenant)
                if j.key.thread != key.thread] == []

    async def test_restore_refuses_bad_records_and_writes_nothing(self, store: Store, key: SessionKey) -> None:
        import dataclasses

        _info, messages, states, facts = await self._restore_source(store, key)
        await store.delete_user(key.tenant, key.user)
        r = dataclasses.replace
        other = SessionKey(key.tenant, key.user, "other")
        bad_sessions: list[tuple[list[Any], list[Any], dict[str, Any]]] = [
            ([messages[1], messages[0]], [], {}),  # seqs not increasing
            ([messages[0], r(messages[1], id=messages[0].id)], [], {}),  # duplicate id
            ([messages[0], r(messages[1], idempotency_key="r1")], [], {}),  # duplicate idempotency key
            ([r(messages[0], key=other)], [], {}),  # another session's message
            (messages, [], {"last_seq": 2}),  # last_seq below the last message
            ([r(messages[0], seq=0)], [], {}),
            ([r(messages[0], role="wizard")], [], {}),
            ([r(messages[0], content_hash="not-a-hash")], [], {}),
            ([r(messages[0], created_at=datetime(2024, 1, 1))], [], {}),  # naive
            (messages, [states[0], states[0]], {}),  # duplicate state name
            (messages, [r(states[0], version=0)], {}),
            (messages, [r(states[0], key=other)], {}),
        ]
        for msgs, blobs, kw in bad_sessions:
            with pytest.raises(InvalidInput):
                await store.restore_session(key, msgs, blobs, **kw)
        bad_facts = [
            [facts[0], facts[0]],  # duplicate id
            [r(facts[0], user="someone-else")],
            [r(facts[0], valid_to=facts[0].valid_from - timedelta(days=1))],
            [r(facts[0], valid_to=None, superseded_by="fact_x")],
            [r(facts[0], text="")],
            [facts[0], r(facts[1], confidence=2.0)],
        ]
        for batch in bad_facts:
            with pytest.raises(InvalidInput):
                await store.restore_facts(key.tenant, key.user, batch)
        assert await store.get_session(key) is None and await store.list_states(key) == []
        assert await store.list_facts(key.tenant, key.user, include_superseded=True) == []
        assert [e for e in await store.list_audit(key.tenant) if e.operation.endswith(".restore")] == []

    # -- governance: audit completeness, chain, erasure, retention ---------------------------------
    @staticmethod
    async def _chained(store: Store, tenant: str) -> dict[str, tuple[int, str]]:
        from ..errors import CapabilityMissing

        try:
            return await store.chain_audit(tenant)
        except CapabilityMissing as exc:  # a backend that has not implemented the chain yet
            pytest.skip(str(exc))

    async def test_a_stored_vector_is_audited_by_the_hash_of_its_float32_bytes(self, store: Store,
                                                                                 key: SessionKey) -> None:
        # The same hash on every backend for the same stored vector (0.1 is not exact in float32).
        from ..store.base import vector_digest

        m1, m2 = await store.append(key, [_msg("first"), _msg("second")])
        vectors = {f"message:{m1.id}": (0.1, -0.2, 0.3), f"message:{m2.id}": (1.0, 0.0, 0.0)}
        await store.put_vectors(key.tenant, key.user, "toy", [
            VectorItem("message", m1.id, vectors[f"message:{m1.id}"]),
            VectorItem("message", m2.id, vectors[f"message:{m2.id}"])])
        (entry,) = await store.list_audit(key.tenant, operation="vector.put")
        assert dict(zip(entry.record_ids, entry.digests)) == {
            rid: vector_digest("toy", v) for rid, v in vectors.items()}
        assert vector_digest("toy", (0.1, -0.2, 0.3)) != vector_digest("other", (0.1, -0.2, 0.3))

    async def test_every_public_operation_leaves_exactly_its_audit_entries(self, store: Store, tenant: str) -> None:
        from collections import Counter

        await self._chained(store, tenant)
        key = SessionKey(tenant, "u-1", "t-1")
        expected: list[tuple[str, str | None, str | None, frozenset[str]]] = []

        def want(op: str, ids: Any, user: str | None = "u-1", thread: str | None = None) -> None:
            expected.append((op, user, thread, frozenset(ids)))

        m1, m2 = await store.append(key, [_msg("my policy is P-4242", "i1"), _msg("thanks", "i2")])
        want("message.append", [m1.id, m2.id], thread="t-1")
        await store.append_one(key, _msg("my policy is P-4242", "i1"))  # a retry writes nothing
        want("message.read", [m1.id, m2.id], thread="t-1")
        assert len(await store.read_window(key)) == 2
        want("message.read", [m2.id], thread="t-1")
        assert len(await store.read_since(key, 1)) == 1
        await store.put_state(key, "agent", {"x": 1})
        want("state.put", ["agent@1"], thread="t-1")
        assert await store.get_state(key, "agent") is not None
        want("state.read", ["agent@1"], thread="t-1")
        assert await store.get_state(key, "none") is None
        want("state.read", [], thread="t-1")
        fact = await store.record_fact(tenant, "u-1", NewFact("policy_number", "P-4242", "policy P-4242",
                                                              source_message_ids=(m1.id,)))
        want("fact.record", [fact.id], thread=None)
        assert [f.id for f in await store.list_facts(tenant, "u-1")] == [fact.id]
        want("fact.read", [fact.id])
        assert await store.get_fact(tenant, "u-1", fact.id) is not None
        want("fact.read", [fact.id])
        hits = await store.search_text(tenant, "u-1", "policy P-4242")
        want("search.text", [h.id for h in hits])
        await store.put_vectors(tenant, "u-1", "toy", [VectorItem("message", m1.id, (1.0, 0.0))])
        want("vector.put", [f"message:{m1.id}"])
        vhits = await store.search_vectors(tenant, "u-1", "toy", (1.0, 0.0))
        want("search.vector", [h.id for h in vhits])
        jobs = [j for j in await store.claim_learn_jobs(limit=1000, tenant=tenant) if j.key == key]
        assert len(jobs) == 2
        await store.fail_learn_job(jobs[0].id, "boom", retry_in=None)
        want("learn.fail", [jobs[0].id, jobs[0].message_id], thread="t-1")
        assert [d.id for d in await store.list_dead_learn_jobs(tenant=tenant)] == [jobs[0].id]  # no entry
        assert await store.requeue_dead_learn_jobs([jobs[0].id], tenant=tenant) == 1
        want("learn.requeue", [jobs[0].id, jobs[0].message_id], thread="t-1")
        assert await store.requeue_dead_learn_jobs([jobs[0].id], tenant=tenant) == 0  # none: no entry
        await store.complete_learn_jobs([jobs[1].id])
        assert await store.delete_fact(tenant, "u-1", fact.id) is True
        want("fact.delete", [fact.id])
        assert await store.delete_fact(tenant, "u-1", fact.id) is False  # nothing deleted: no entry
        await store.correct_message(key, m2.id, "thank you")
        want("message.correct", [m2.id], thread="t-1")
        assert await store.delete_message(key, m1.id) is True
        want("message.delete", [m1.id], thread="t-1")
        assert await store.delete_message(key, m1.id) is False  # nothing deleted: no entry
        # metadata reads are not memory-record reads: no entries
        await store.get_session(key)
        await store.list_sessions(tenant)
        await store.list_users(tenant)
        await store.list_states(key)
        await store.delete_session(key)
        want("session.delete", [m2.id, "state:t-1/agent@1"], thread="t-1")
        (m3,) = await store.append(SessionKey(tenant, "u-2", "t"), [_msg("bye")])
        want("message.append", [m3.id], user="u-2", thread="t")
        await store.delete_user(tenant, "u-2")
        want("user.delete", [m3.id], user="u-2")
        await store.restore_session(SessionKey(tenant, "u-3", "t"), [replace(m3, key=SessionKey(tenant, "u-3", "t"))])
        want("session.restore", [m3.id], user="u-3", thread="t")
        await store.restore_facts(tenant, "u-1", [fact])
        want("fact.restore", [fact.id])

        await self._chained(store, tenant)  # writes this handle's buffered reads
        events = await store.list_audit(tenant, limit=1000)
        got = Counter((e.operation, e.user, e.thread, frozenset(e.record_ids)) for e in events)
        wanted = Counter(expected)
        missing = wanted - got
        extra = got - wanted
        assert not missing, f"missing audit entries: {sorted(missing)}"
        assert not extra, f"unexpected audit entries: {sorted(extra)}"
        for e in events:
            one_job = e.operation in ("learn.fail", "learn.requeue")
            assert e.actor and e.at.tzinfo is not None and e.count == (1 if one_job else len(e.record_ids))
            assert "P-4242" not in repr((e.record_ids, e.digests, e.operation, e.actor))

    async def test_reads_are_audited_durably_by_close(self, open_handle: OpenHandle, key: SessionKey) -> None:
        writer = await open_handle()
        try:
            await self._chained(writer, key.tenant)
            (m,) = await writer.append(key, [_msg("hello")])
        finally:
            await writer.close()
        reader = await open_handle()
        await reader.read_window(key)
        await reader.close()  # buffered read entries are written at close at the latest
        check = await open_handle()
        try:
            reads = await check.list_audit(key.tenant, operation="message.read")
            assert [(e.record_ids, e.thread) for e in reads] == [((m.id,), key.thread)]
        finally:
            await check.close()

    async def test_audit_chain_links_every_entry_per_tenant(self, store: Store, tenant: str) -> None:
        from ..governance.audit import GENESIS, link, verify_audit

        await self._chained(store, tenant)
        other = tenant + "-b"
        for t in (tenant, other):
            k = SessionKey(t, "u", "t")
            await store.append(k, [_msg("a"), _msg("b")])
            await store.read_window(k)
            await store.put_state(k, "s", {"v": 1})
        heads = await store.chain_audit(tenant)
        events = await store.list_audit(tenant)
        assert len(events) == 3 and all(e.chain_seq is not None for e in events)
        ordered = sorted(events, key=lambda e: e.chain_seq)  # type: ignore[arg-type, return-value]
        assert [e.chain_seq for e in ordered] == [1, 2, 3]
        prev = GENESIS
        for e in ordered:
            assert e.chain_hash == link(prev, e, e.chain_seq)  # type: ignore[arg-type]
            prev = e.chain_hash  # type: ignore[assignment]
        assert heads[tenant] == (3, prev)
        result = await verify_audit(store, tenant)
        assert result.ok and result.entries == 3 and result.unchained == 0
        assert (await verify_audit(store, other)).ok  # the other tenant has its own chain

    async def test_late_learning_job_cannot_resurrect_an_erased_user(self, store: Store, tenant: str) -> None:
        await self._chained(store, tenant)
        key = SessionKey(tenant, "gone", "t")
        (m,) = await store.append(key, [_msg("my card is SENTINEL-1")])
        (job,) = [j for j in await store.claim_learn_jobs(limit=1000, tenant=tenant) if j.key == key]
        await store.delete_user(tenant, "gone")  # erased while the learner holds the job
        with pytest.raises(AmberError):
            await store.record_fact(tenant, "gone", NewFact("card", "SENTINEL-1", "card SENTINEL-1",
                                                            source_message_ids=(m.id,)))
        await store.put_vectors(tenant, "gone", "toy", [VectorItem("message", m.id, (1.0, 0.0))])
        await store.complete_learn_jobs([job.id])
        assert await store.list_facts(tenant, "gone", include_superseded=True) == []
        assert await store.search_vectors(tenant, "gone", "toy", (1.0, 0.0)) == []
        assert [e.operation for e in await store.list_audit(tenant, operation="vector.put")] == []
        # the user may come back with new data; only what was erased stays erased
        (m2,) = await store.append(key, [_msg("hello again")])
        f = await store.record_fact(tenant, "gone", NewFact("greeting", "hi", "said hi", source_message_ids=(m2.id,)))
        assert [x.id for x in await store.list_facts(tenant, "gone")] == [f.id]

    async def test_erasure_receipt_names_the_erased_ids_and_spares_other_users(self, store: Store, tenant: str) -> None:
        await self._chained(store, tenant)
        gone, kept = SessionKey(tenant, "gone", "t"), SessionKey(tenant, "kept", "t")
        msgs = await store.append(gone, [_msg(f"g{i}") for i in range(3)])
        await store.put_state(gone, "agent", {"x": 1})
        fact = await store.record_fact(tenant, "gone", NewFact("a", "b", "a b"))
        await store.append(kept, [_msg("k")])
        await store.record_fact(tenant, "kept", NewFact("a", "b", "a b"))
        receipt = await store.delete_user(tenant, "gone")
        assert receipt.counts["messages"] == 3 and receipt.counts["facts"] == 1 and receipt.counts["states"] == 1
        (entry,) = await store.list_audit(tenant, operation="user.delete")
        assert set(entry.record_ids) == {m.id for m in msgs} | {fact.id, "state:t/agent@1"}
        assert entry.user == "gone" and entry.count == 5
        assert len(await store.read_since(kept)) == 1 and len(await store.list_facts(tenant, "kept")) == 1

    # -- single-message deletion and correction (delete_message, correct_message) ----------------
    async def test_delete_message_leaves_a_gap_and_never_renumbers(self, store: Store, key: SessionKey) -> None:
        msgs = await store.append(key, [_msg(f"m{i}") for i in range(1, 6)])
        assert len(await store.read_window(key)) == 5  # a cached window must not serve it afterwards
        assert await store.delete_message(key, msgs[2].id) is True
        assert [(m.seq, m.content) for m in await store.read_since(key)] == [(1, "m1"), (2, "m2"), (4, "m4"), (5, "m5")]
        assert [m.seq for m in await store.read_window(key, last=3)] == [2, 4, 5]
        assert [m.seq for m in await store.read_window(key)] == [1, 2, 4, 5]
        assert [m.seq for m in await store.read_since(key, 2)] == [4, 5]
        assert [m.seq for m in await store.read_since(key, 1, limit=2)] == [2, 4]
        assert [m.id for m in await store.read_window(key, last=2)] == [msgs[3].id, msgs[4].id]
        info = await store.get_session(key)
        assert info is not None and info.message_count == 4 and info.last_seq == 5
        assert await store.delete_message(key, msgs[2].id) is False  # already gone: nothing changes
        assert await store.delete_message(key, msgs[4].id) is True  # the newest: its seq is not reused
        assert (await store.append_one(key, _msg("m6"))).seq == 6
        assert [m.seq for m in await store.read_window(key)] == [1, 2, 4, 6]
        info = await store.get_session(key)
        assert info is not None and info.message_count == 4 and info.last_seq == 6

    async def test_delete_message_removes_its_index_vectors_jobs_and_orphaned_facts(
        self, store: Store, key: SessionKey
    ) -> None:
        await self._chained(store, key.tenant)
        t, u = key.tenant, key.user
        m1, m2 = await store.append(key, [_msg("my zebra policy is ZP-77"), _msg("my zebra is striped")])
        await store.put_vectors(t, u, "toy", [VectorItem("message", m1.id, (1.0, 0.0)),
                                              VectorItem("message", m2.id, (0.0, 1.0))])
        only = await store.record_fact(t, u, NewFact("policy", "ZP-77", "policy ZP-77", source_message_ids=(m1.id,)))
        shared = await store.record_fact(t, u, NewFact("pet", "zebra", "has a zebra", source_message_ids=(m1.id, m2.id)))
        manual = await store.record_fact(t, u, NewFact("tier", "gold", "gold tier"))
        await store.put_vectors(t, u, "toy", [VectorItem("fact", only.id, (1.0, 0.0))])
        assert m1.id in {h.id for h in await store.search_text(t, u, "zebra", kinds=("message",))}
        assert await store.delete_message(key, m1.id) is True
        assert {h.id for h in await store.search_text(t, u, "zebra policy", kinds=("message",))} == {m2.id}
        assert await store.search_text(t, u, "ZP", kinds=("message",)) == []
        assert {h.id for h in await store.search_vectors(t, u, "toy", (1.0, 0.0))} == {m2.id}
        jobs = [j for j in await store.claim_learn_jobs(limit=1000, tenant=t) if j.key == key]
        assert [j.message_id for j in jobs] == [m2.id]
        assert {f.id for f in await store.list_facts(t, u, include_superseded=True)} == {shared.id, manual.id}
        with pytest.raises(AmberError):  # a late learning job cannot bring a fact of it back
            await store.record_fact(t, u, NewFact("policy", "ZP-77", "policy ZP-77", source_message_ids=(m1.id,)))
        (entry,) = await store.list_audit(t, operation="message.delete")
        assert list(entry.record_ids) == [m1.id] and list(entry.digests) == [m1.content_hash]
        assert entry.user == u and entry.thread == key.thread
        (fact_entry,) = await store.list_audit(t, operation="fact.delete")
        assert list(fact_entry.record_ids) == [only.id]
        for e in await store.list_audit(t, limit=1000):
            assert "zebra" not in repr((e.record_ids, e.digests)) and "ZP-77" not in repr((e.record_ids, e.digests))
        assert await store.delete_message(key, m2.id) is True  # now the shared fact has no source left
        assert {f.id for f in await store.list_facts(t, u, include_superseded=True)} == {manual.id}

    async def test_correct_message_replaces_content_and_keeps_identity(self, store: Store, key: SessionKey) -> None:
        await self._chained(store, key.tenant)
        t, u = key.tenant, key.user
        m1, m2, m3 = await store.append(key, [
            _msg("first"), _msg("my policy is WRONG-1", metadata={"lang": "en"}, payload={"x": 1}, payload_format="x/1"),
            _msg("third")])
        learned = await store.record_fact(t, u, NewFact("policy", "WRONG-1", "policy WRONG-1", source_message_ids=(m2.id,)))
        await store.put_vectors(t, u, "toy", [VectorItem("message", m2.id, (1.0, 0.0))])
        await store.complete_learn_jobs([j.id for j in await store.claim_learn_jobs(limit=1000, tenant=t)])
        assert len(await store.read_window(key)) == 3  # a cached window must not serve the old text afterwards
        fixed = await store.correct_message(key, m2.id, "my policy is RIGHT-2", reason="typo")
        assert (fixed.id, fixed.seq, fixed.role, fixed.key, fixed.idempotency_key) == (m2.id, 2, m2.role, key, m2.idempotency_key)
        assert fixed.content == "my policy is RIGHT-2" and fixed.payload is None and fixed.payload_format == "text/1"
        assert fixed.content_hash != m2.content_hash and fixed.tokens > 0
        assert fixed.created_at == m2.created_at
        assert fixed.metadata["lang"] == "en" and fixed.metadata["correction_reason"] == "typo"
        assert datetime.fromisoformat(fixed.metadata["corrected_at"]).tzinfo is not None
        assert await store.read_since(key) == [m1, fixed, m3]
        assert await store.read_window(key, last=2) == [fixed, m3]
        assert {h.id for h in await store.search_text(t, u, "RIGHT-2", kinds=("message",))} == {m2.id}
        assert await store.search_text(t, u, "WRONG-1", kinds=("message",)) == []
        assert await store.search_vectors(t, u, "toy", (1.0, 0.0), kinds=("message",)) == []  # re-embedded later
        assert await store.list_facts(t, u, include_superseded=True) == []  # learned from the old text only
        assert learned.id not in {f.id for f in await store.list_facts(t, u, include_superseded=True)}
        jobs = [j for j in await store.claim_learn_jobs(limit=1000, tenant=t) if j.key == key]
        assert [(j.message_id, j.seq) for j in jobs] == [(m2.id, 2)]  # queued for learning again
        info = await store.get_session(key)
        assert info is not None and info.message_count == 3 and info.last_seq == 3
        (entry,) = await store.list_audit(t, operation="message.correct")
        assert list(entry.record_ids) == [m2.id] and list(entry.digests) == [m2.content_hash, fixed.content_hash]
        for e in await store.list_audit(t, limit=1000):
            assert "RIGHT-2" not in repr((e.record_ids, e.digests)) and "typo" not in repr((e.record_ids, e.digests))
        again = await store.correct_message(key, m2.id, "my policy is RIGHT-3")  # no reason: none is kept
        assert "correction_reason" not in again.metadata and again.metadata["lang"] == "en"

    async def test_unknown_or_foreign_message_ids_change_nothing(self, store: Store, tenant: str) -> None:
        from ..errors import NotFound

        key = SessionKey(tenant, "u-1", "t-1")
        (m,) = await store.append(key, [_msg("keep me")])
        other_tenant = f"{tenant}-x"
        for wrong in (SessionKey(other_tenant, "u-1", "t-1"), SessionKey(tenant, "u-2", "t-1"),
                      SessionKey(tenant, "u-1", "t-2")):
            assert await store.delete_message(wrong, m.id) is False
            with pytest.raises(NotFound):
                await store.correct_message(wrong, m.id, "hijacked")
        assert await store.delete_message(key, "msg_does_not_exist") is False
        with pytest.raises(NotFound):
            await store.correct_message(key, "msg_does_not_exist", "x")
        with pytest.raises(InvalidInput):
            await store.correct_message(key, m.id, "bad\x00content")
        with pytest.raises(InvalidInput):
            await store.correct_message(key, m.id, 42)  # type: ignore[arg-type]
        assert await store.read_since(key) == [m]
        for t in (tenant, other_tenant):
            for op in ("message.delete", "message.correct", "fact.delete"):
                assert await store.list_audit(t, operation=op) == []

    async def test_prune_removes_what_is_past_its_ttl_and_nothing_younger(self, store: Store, tenant: str) -> None:
        await self._chained(store, tenant)
        old_t = datetime(2020, 1, 1, tzinfo=timezone.utc)
        key = SessionKey(tenant, "u", "t")
        old_msgs = await store.append(key, [_msg("old 1", created_at=old_t), _msg("old 2", created_at=old_t)])
        new_msgs = await store.append(key, [_msg("new 1"), _msg("new 2")])
        other = SessionKey(tenant + "-b", "u", "t")
        await store.append(other, [_msg("other tenant", created_at=old_t)])
        f_old = await store.record_fact(tenant, "u", NewFact("a", "1", "a 1"))
        s_old = await store.put_state(key, "old", {"v": 1})
        await asyncio.sleep(0.01)  # ordering only: the cutoff must fall strictly between the two
        f_new = await store.record_fact(tenant, "u", NewFact("b", "2", "b 2"))
        s_new = await store.put_state(key, "new", {"v": 2})
        cut_f = f_old.created_at + (f_new.created_at - f_old.created_at) / 2
        cut_s = s_old.updated_at + (s_new.updated_at - s_old.updated_at) / 2
        assert f_old.created_at < cut_f < f_new.created_at and s_old.updated_at < cut_s < s_new.updated_at
        receipt = await store.prune(tenant, before={"messages": datetime(2021, 1, 1, tzinfo=timezone.utc),
                                                    "facts": cut_f, "states": cut_s})
        assert receipt.counts["messages"] == 2 and receipt.counts["facts"] == 1 and receipt.counts["states"] == 1
        assert [m.id for m in await store.read_since(key)] == [m.id for m in new_msgs]
        assert [f.id for f in await store.list_facts(tenant, "u", include_superseded=True)] == [f_new.id]
        assert await store.list_states(key) == ["new"]
        assert len(await store.read_since(other)) == 1  # another tenant is untouched
        (entry,) = await store.list_audit(tenant, operation="retention.prune")
        assert set(entry.record_ids) == {m.id for m in old_msgs} | {f_old.id, "state:t/old@1"}
        (m5,) = await store.append(key, [_msg("after prune")])
        assert m5.seq == 5  # sequence numbers never restart
        with pytest.raises(InvalidInput):
            await store.prune(tenant, before={"messages": datetime(2021, 1, 1)})  # naive
        with pytest.raises(InvalidInput):
            await store.prune(tenant, before={"everything": old_t})

    # -- model-based: random operation sequences agree with the reference store ------------------
    def test_random_operation_sequences_agree_with_the_reference_store(self, open_handle: OpenHandle) -> None:
        """Appends (batches, retried idempotency keys, invalid batches), windows, reads since, state
        compare-and-set, sessions, users, facts and deletions, drawn at random over 2 tenants x 2 users
        x 2 threads: every result (or error type) must equal the in-memory reference store's.
        Synchronous on purpose: each Hypothesis example runs its own event loop."""
        run_model_based(open_handle, self.model_based_settings)
