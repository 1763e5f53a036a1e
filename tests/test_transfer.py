"""export -> forget -> import round trips: exact (byte for byte) on the in-memory reference store,
SQLite files, PostgreSQL and SQLite behind the Redis cache, and through the ``amber`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest

import amber
from amber import NewFact, NewMessage, SessionKey
from amber.errors import Conflict, InvalidInput
from amber.transfer import NOT_PRESERVED, export_jsonl, import_jsonl, restore_jsonl

from conftest import POSTGRES_URL, REDIS_URL, unreachable

T0 = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
AMBER = os.path.join(os.path.dirname(sys.executable), "amber")  # the installed console script


async def _open(kind: str, tmp_path) -> amber.Store:
    if kind == "memory":
        return await amber.open_store(f"memory://transfer-{uuid.uuid4().hex}")
    if kind == "sqlite":
        return await amber.open_store(f"sqlite:///{tmp_path / 'amber.db'}")
    if kind == "postgres":
        url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema=amber_transfer_test"
    else:  # SQLite behind the Redis hot layer, under a key prefix of its own
        url = f"sqlite:///{tmp_path / 'amber.db'}"
    try:
        if kind == "postgres":
            return await amber.open_store(url)
        from amber.store.redis import RedisCachedStore

        inner = await amber.open_store(url)
        try:
            return await RedisCachedStore.wrap(inner, REDIS_URL, prefix=f"amber-test:{uuid.uuid4().hex[:10]}:")
        except BaseException:
            await inner.close()
            raise
    except amber.StoreUnavailable as exc:
        unreachable(kind, exc)
        raise


@pytest.fixture(params=["memory", "sqlite", "postgres", "sqlite+redis"])
async def store(request, tmp_path):
    s = await _open(request.param, tmp_path)
    yield s
    await s.close()


async def seed(store: amber.Store, tenant: str) -> None:
    alice = SessionKey(tenant, "alice", "claim-7788")
    msgs = await store.append(alice, [
        NewMessage("user", "my policy is P-1 and I live at 1 Old Road", idempotency_key="a1",
                   created_at=T0, metadata={"channel": "web"}),
        NewMessage("assistant", "Noted, Zoë ✓ \U0001F600", payload={"type": "AssistantMessage", "x": [1, None, 2.5]},
                   payload_format="autogen/0.7:AssistantMessage", author="support", idempotency_key="a2",
                   created_at=T0 + timedelta(seconds=5)),
        NewMessage("user", "I moved to 2 New Street", idempotency_key="a3", created_at=T0 + timedelta(days=2)),
    ])
    await store.put_state(alice, "team", {"turn": 3, "agents": ["support"]})
    await store.put_state(alice, "team", {"turn": 4, "agents": ["support"]})
    await store.put_state(SessionKey(tenant, "alice", "state-only"), "agent", {"draft": True})
    await store.append_one(SessionKey(tenant, "alice", "other"), NewMessage("user", "second thread", idempotency_key="o1"))
    old = await store.record_fact(tenant, "alice", NewFact(
        "address", "1 Old Road", "address: 1 Old Road", source_message_ids=(msgs[0].id,), thread="claim-7788",
        valid_from=T0, confidence=0.9, metadata={"by": "rules"}))
    await store.record_fact(tenant, "alice", NewFact(
        "address", "2 New Street", "address: 2 New Street", source_message_ids=(msgs[2].id,), thread="claim-7788",
        valid_from=T0 + timedelta(days=2)), supersedes=[old.id])
    await store.record_fact(tenant, "alice", NewFact("policy_number", "P-1", "policy P-1", kind="identifier",
                                                     source_message_ids=(msgs[0].id,), valid_from=T0))
    await store.append_one(SessionKey(tenant, "bob", "t"), NewMessage("user", "bob here", idempotency_key="b1"))


async def dump(store: amber.Store, tenant: str, **scope) -> list[dict]:
    return [json.loads(line) async for line in export_jsonl(store, tenant, **scope)]


def canonical(records: list[dict], id_map: dict[str, str] | None = None) -> list[dict]:
    """For a MERGE (into a target that is not empty): drop what a merge assigns anew (times, state
    versions) and translate old ids to new. An exact restore needs none of this (NOT_PRESERVED)."""
    m = id_map or {}
    out = []
    for r in records:
        r = dict(r)
        if r["type"] == "header":
            r.pop("exported_at")
        elif r["type"] == "session":
            r.pop("created_at"), r.pop("updated_at")
        elif r["type"] == "state":
            r.pop("version"), r.pop("updated_at")
        elif r["type"] == "message":
            r["id"] = m.get(r["id"], r["id"])
        elif r["type"] == "fact":
            r["id"] = m.get(r["id"], r["id"])
            r["superseded_by"] = m.get(r["superseded_by"], r["superseded_by"])
            r["source_message_ids"] = [m.get(s, s) for s in r["source_message_ids"]]
            r.pop("created_at")
        out.append(r)
    facts = sorted((r for r in out if r["type"] == "fact"), key=lambda r: (r["user"], r["attribute"], r["valid_from"]))
    return [r for r in out if r["type"] != "fact"] + facts


def assert_same_export(first: list[str], again: list[str]) -> None:
    """Byte for byte, but the header's exported_at (the time of each export)."""
    h1, h2 = json.loads(first[0]), json.loads(again[0])
    assert h1.pop("exported_at") <= h2.pop("exported_at") and h1 == h2
    assert again[1:] == first[1:]


async def test_export_forget_import_reproduces_the_export_byte_for_byte(store: amber.Store) -> None:
    assert NOT_PRESERVED == {}
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await seed(store, tenant)
    before = [line async for line in export_jsonl(store, tenant)]
    records = [json.loads(line) for line in before]
    assert records[0]["type"] == "header" and records[-1]["type"] == "end"
    assert records[-1]["counts"] == {"sessions": 3, "messages": 5, "states": 2, "facts": 3}
    assert any(r["type"] == "fact" and r["valid_to"] for r in records)  # history is exported

    for user in ("alice", "bob"):
        await store.delete_user(tenant, user)
    emptied = await dump(store, tenant)
    assert [r["type"] for r in emptied] == ["header", "end"] and not any(emptied[-1]["counts"].values())

    report = await import_jsonl(store, tenant, before)
    assert report.warnings == [] and report.id_map == {}
    assert report.counts["messages"] == 5 and report.counts["facts"] == 3 and report.counts["states"] == 2
    assert_same_export(before, [line async for line in export_jsonl(store, tenant)])

    # restored data is live: searchable, queued for the learner, retried keys are no-ops
    alice = SessionKey(tenant, "alice", "claim-7788")
    assert [h.kind for h in await store.search_text(tenant, "alice", "New Street")]
    jobs = [j for j in await store.claim_learn_jobs(limit=1000, tenant=tenant)]
    assert len(jobs) == 5
    again = await store.append_one(alice, NewMessage("user", "my policy is P-1 and I live at 1 Old Road",
                                                     idempotency_key="a1", created_at=T0))
    assert again.seq == 1 and again.id == records[2]["id"] and len(await store.read_since(alice)) == 3
    # a second import of the same file merges into what is there: nothing new
    second = await import_jsonl(store, tenant, before)
    assert second.counts.get("messages", 0) == 0 and second.counts.get("facts", 0) == 0
    assert second.counts["messages_existing"] == 5


async def test_restore_of_an_older_backup_never_brings_back_a_message_deleted_since(store: amber.Store) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await seed(store, tenant)
    backup = [line async for line in export_jsonl(store, tenant)]
    alice = SessionKey(tenant, "alice", "claim-7788")
    doomed, *kept = await store.read_since(alice)
    facts_before = {f.id for f in await store.list_facts(tenant, "alice", include_superseded=True)}
    assert await store.delete_message(alice, doomed.id)
    facts_after = {f.id for f in await store.list_facts(tenant, "alice", include_superseded=True)}
    assert facts_after < facts_before  # facts learned from that message alone went with it
    report = await restore_jsonl(store, tenant, backup)
    assert report.counts["withheld_erased"] == 1 + len(facts_before - facts_after)
    assert [m.id for m in await store.read_since(alice)] == [m.id for m in kept]  # still deleted, none doubled
    assert {f.id for f in await store.list_facts(tenant, "alice", include_superseded=True)} == facts_after


async def test_exact_import_refuses_a_target_that_holds_data_and_writes_nothing(store: amber.Store) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await seed(store, tenant)
    lines = [line async for line in export_jsonl(store, tenant)]
    await store.delete_user(tenant, "alice")  # bob stays: his session is not empty
    audit = len(await store.list_audit(tenant, limit=1000))
    with pytest.raises(Conflict):
        await import_jsonl(store, tenant, lines, exact=True)
    assert await store.list_users(tenant) == ["bob"]
    writes = [e for e in await store.list_audit(tenant, limit=1000)][audit:]
    assert not [e for e in writes if e.operation not in ("message.read", "state.read", "fact.read")]
    await store.delete_user(tenant, "bob")
    report = await import_jsonl(store, tenant, lines, exact=True)
    assert report.id_map == {} and report.warnings == []
    assert_same_export(lines, [line async for line in export_jsonl(store, tenant)])


async def test_import_is_idempotent_and_keeps_facts_a_session_forget_left(store: amber.Store) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await seed(store, tenant)
    lines = [line async for line in export_jsonl(store, tenant, user="alice", thread="claim-7788")]
    await store.delete_session(SessionKey(tenant, "alice", "claim-7788"))  # facts stay with the user
    report = await import_jsonl(store, tenant, lines)
    assert report.counts["messages"] == 3 and report.counts.get("facts", 0) == 0  # deduped, not duplicated
    second = await import_jsonl(store, tenant, lines)
    assert second.counts.get("messages", 0) == 0 and second.counts["messages_existing"] == 3
    assert second.counts.get("states", 0) == 0
    assert len(await store.read_since(SessionKey(tenant, "alice", "claim-7788"))) == 3
    assert len(await store.list_facts(tenant, "alice", include_superseded=True)) == 3


async def test_import_into_another_tenant_leaves_the_source_alone(store: amber.Store) -> None:
    src, dst = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    await seed(store, src)
    before = await dump(store, src)
    # Where the backend's ids are unique store-wide, the copy cannot keep them: it is merged under
    # new ids (a warning says so) and provenance follows the new ids.
    report = await import_jsonl(store, dst, [json.dumps(r) for r in before])
    assert canonical(await dump(store, dst)) == canonical(before, report.id_map)
    assert (await dump(store, src))[1:] == before[1:]


@pytest.mark.parametrize("damage", ["truncate", "bad_json", "bad_role", "naive_time", "not_export", "bad_user"])
async def test_bad_import_is_refused_before_anything_is_written(store: amber.Store, damage: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await seed(store, tenant)
    lines = [line async for line in export_jsonl(store, tenant)]
    target = f"t-{uuid.uuid4().hex[:8]}"
    msg_line = next(i for i, l in enumerate(lines) if '"type":"message"' in l)
    if damage == "truncate":
        lines = lines[:-1]
    elif damage == "bad_json":
        lines[-2] = lines[-2][:-5]
    elif damage == "bad_role":
        lines[msg_line] = lines[msg_line].replace('"role":"user"', '"role":"wizard"')
    elif damage == "naive_time":
        rec = json.loads(lines[msg_line]); rec["created_at"] = "2024-01-01T00:00:00"; lines[msg_line] = json.dumps(rec)
    elif damage == "not_export":
        lines = ['{"hello": 1}']
    elif damage == "bad_user":
        rec = json.loads(lines[msg_line]); rec["user"] = "../etc"; lines[msg_line] = json.dumps(rec)
    with pytest.raises(InvalidInput):
        await import_jsonl(store, target, lines)
    assert await store.list_users(target) == [] and await store.list_audit(target) == []


async def test_export_scope_checks(store: amber.Store) -> None:
    with pytest.raises(InvalidInput):
        [x async for x in export_jsonl(store, "t", thread="only-thread")]
    with pytest.raises(amber.InvalidSessionKey):
        [x async for x in export_jsonl(store, "bad tenant")]


def test_cli_export_forget_import_reproduces_the_export(tmp_path) -> None:
    """The three commands as an operator runs them, each in its own process, on a SQLite file."""
    url = f"sqlite:///{tmp_path / 'amber.db'}"
    tenant = "acme"

    async def go() -> None:
        async with await amber.open_store(url) as s:
            await seed(s, tenant)

    import asyncio

    asyncio.run(go())

    def amber_cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([AMBER, "--store", url, "--tenant", tenant, *args], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    first, again = tmp_path / "first.jsonl", tmp_path / "again.jsonl"
    amber_cli("export", "-o", str(first))
    for user in ("alice", "bob"):
        amber_cli("--json", "forget", "--user", user, "--yes")
    imported = json.loads(amber_cli("--json", "import", "--exact", str(first)).stdout)
    assert imported["warnings"] == [] and imported["ids_remapped"] == 0
    assert imported["counts"]["messages"] == 5 and imported["counts"]["facts"] == 3
    amber_cli("export", "-o", str(again))
    assert_same_export(first.read_text(encoding="utf-8").splitlines(keepends=True),
                       again.read_text(encoding="utf-8").splitlines(keepends=True))
