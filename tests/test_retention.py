"""Retention on PostgreSQL with the Redis layer: a per-tenant policy stored with `amber prune --save`,
enforced by `amber prune` and by the worker's governance round. Records past their TTL are gone (and
out of the Redis cache), nothing younger is touched, another tenant is untouched, and every prune
leaves a `retention.prune` receipt naming the erased ids."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

import amber
from amber.cli import main
from amber.governance.retention import (RetentionPolicy, enforce_retention, housekeeping, load_policy,
                                        parse_duration, set_tenant_ttl)
from amber.errors import InvalidInput
from amber.keys import SessionKey
from amber.records import NewMessage
from conftest import POSTGRES_URL, REDIS_URL, unreachable

pytestmark = [pytest.mark.postgres]

SCHEMA = "amber_retention_test"
URL = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={SCHEMA}"
OLD = datetime.now(timezone.utc) - timedelta(days=40)


async def _open(cache: bool = False) -> amber.Store:
    try:
        return await amber.open_store(URL, cache=REDIS_URL if cache else None)
    except amber.errors.StoreUnavailable as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
        raise


async def _seed(store: amber.Store, tenant: str) -> tuple[list[str], list[str]]:
    key = SessionKey(tenant, "u", "t")
    old = await store.append(key, [NewMessage("user", f"old {i}", created_at=OLD) for i in range(5)])
    new = await store.append(key, [NewMessage("user", f"new {i}") for i in range(3)])
    return [m.id for m in old], [m.id for m in new]


def test_cli_prune_with_a_stored_policy() -> None:
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"

    async def seed() -> tuple[list[str], list[str]]:
        async with await _open(cache=True) as store:
            ids = await _seed(store, tenant)
            await _seed(store, other)
            assert len(await store.read_window(SessionKey(tenant, "u", "t"))) == 8  # cached in Redis
            return ids

    old, new = asyncio.run(seed())
    runner = CliRunner()
    # the same store URL the app uses, Redis included: a prune must drop the cached copies too
    base = ["--store", f"{URL}&cache={REDIS_URL}", "--tenant", tenant]
    saved = runner.invoke(main, base + ["prune", "--messages", "30d", "--states", "2w", "--save"])
    assert saved.exit_code == 0, saved.output
    shown = runner.invoke(main, base + ["--json", "prune", "--show"])
    assert json.loads(shown.output)["tenants"][tenant] == {"messages": 30 * 86400.0, "states": 14 * 86400.0}
    pruned = runner.invoke(main, base + ["--json", "prune", "--yes"])
    assert pruned.exit_code == 0, pruned.output
    (receipt,) = json.loads(pruned.output)["receipts"]
    assert receipt["counts"]["messages"] == 5 and receipt["counts"]["facts"] == 0

    async def check() -> None:
        async with await _open(cache=True) as store:
            key = SessionKey(tenant, "u", "t")
            assert [m.id for m in await store.read_window(key)] == new  # not served stale from Redis
            assert len(await store.read_since(SessionKey(other, "u", "t"))) == 8  # other tenant untouched
            (entry,) = await store.list_audit(tenant, operation="retention.prune")
            assert set(entry.record_ids) == set(old) and entry.user == "u"
            again = await enforce_retention(store, tenant=tenant)
            assert again[0].counts["messages"] == 0  # idempotent
            await set_tenant_ttl(store, tenant, {"messages": None, "states": None})
            assert tenant not in (await load_policy(store)).tenants

    asyncio.run(check())


async def test_worker_round_enforces_every_stored_policy() -> None:
    t1, t2 = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    async with await _open(cache=True) as store:  # the same store configuration as the other tests
        old1, new1 = await _seed(store, t1)
        old2, new2 = await _seed(store, t2)
        await set_tenant_ttl(store, t1, {"transcripts": "30d"})
        result = await housekeeping(store)
        assert any(r.tenant == t1 and r.counts["messages"] == 5 for r in result["receipts"])
        assert [m.id for m in await store.read_since(SessionKey(t1, "u", "t"))] == new1
        assert len(await store.read_since(SessionKey(t2, "u", "t"))) == 8  # no policy: untouched
        assert (await store.chain_audit(t1))[t1][0] > 0
        await set_tenant_ttl(store, t1, {"messages": None})


def test_policy_validation() -> None:
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200 and parse_duration(None) is None
    for bad in ("-1d", "soon", "0s", True):
        with pytest.raises(InvalidInput):
            parse_duration(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        RetentionPolicy.from_data({"tenants": {"acme": {"everything": 5}}})
    p = RetentionPolicy.from_data({"tenants": {"acme": {"state": "1d", "facts": None}}})
    now = datetime(2025, 1, 2, tzinfo=timezone.utc)
    assert p.cutoffs("acme", now) == {"states": datetime(2025, 1, 1, tzinfo=timezone.utc)}
    assert p.cutoffs("other", now) == {}
