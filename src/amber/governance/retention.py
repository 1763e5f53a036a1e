"""Retention: how long a tenant keeps its transcripts, facts and state, and the pruning that enforces it.

The policy lives inside the store, as one state blob in the reserved admin tenant
(``SessionKey("amber-admin", "retention", "policy")``, state ``policy``), so every process and host
that shares the store -- ``amber prune``, every ``amber worker``, the server -- enforces the same
policy, and every change to it is itself audited (``state.put``) and compare-and-set::

    {"tenants": {"acme": {"messages": 2592000, "facts": null, "states": 604800}}}

Time-to-live in seconds per kind; a missing kind or ``null`` keeps that kind forever. Pruning
deletes what is older than ``now - ttl`` (messages and facts by ``created_at``, state blobs by
``updated_at``) through :meth:`amber.Store.prune`, which writes a ``retention.prune`` receipt
(the erased ids, never content) in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from ..errors import InvalidInput, VersionConflict
from ..keys import SessionKey, validate_part
from ..records import DeletionReceipt, utcnow

__all__ = [
    "KINDS",
    "RetentionPolicy",
    "POLICY_KEY",
    "check_cutoffs",
    "parse_duration",
    "load_policy",
    "save_policy",
    "set_tenant_ttl",
    "prune_tenant",
    "enforce_retention",
    "housekeeping",
    "run_housekeeping",
]

KINDS = ("messages", "facts", "states")
_ALIASES = {"transcripts": "messages", "messages": "messages", "facts": "facts", "state": "states",
            "states": "states"}
ADMIN_TENANT = "amber-admin"  # the reserved tenant of amber.server.auth (no API key can be issued for it)
POLICY_KEY = SessionKey(ADMIN_TENANT, "retention", "policy")
POLICY_NAME = "policy"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def kind_name(kind: str) -> str:
    try:
        return _ALIASES[kind]
    except KeyError:
        raise InvalidInput(f"unknown retention kind {kind!r}; expected one of {', '.join(KINDS)}") from None


def check_cutoffs(before: Mapping[str, datetime]) -> dict[str, datetime]:
    """Validate ``Store.prune``'s ``before`` argument: kind -> timezone-aware cutoff."""
    if not isinstance(before, Mapping) or not before:
        raise InvalidInput("prune needs at least one cutoff: before={'messages'|'facts'|'states': datetime}")
    out: dict[str, datetime] = {}
    for kind, cut in before.items():
        name = kind_name(kind)
        if not isinstance(cut, datetime) or cut.tzinfo is None:
            raise InvalidInput(f"the {name} cutoff must be a timezone-aware datetime")
        out[name] = cut.astimezone(timezone.utc)
    return out


def parse_duration(text: str | int | float | None) -> float | None:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` or seconds -> seconds; ``None``/``"forever"``
    -> None (keep forever)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "forever", "keep")):
        return None
    if isinstance(text, bool):
        raise InvalidInput("a duration must be a number of seconds or like '30d'")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = _DURATION.match(text)
        if not m:
            raise InvalidInput(f"invalid duration {text!r}: use e.g. 45s, 90m, 12h, 30d, 2w")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0:
        raise InvalidInput("a retention time-to-live must be positive")
    return seconds


@dataclass(frozen=True)
class RetentionPolicy:
    """TTL in seconds per tenant and kind (``None``: keep forever)."""

    tenants: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    version: int = 0  # the state blob version it was loaded from (0: none stored)

    @classmethod
    def from_data(cls, data: Mapping[str, Any], version: int = 0) -> "RetentionPolicy":
        tenants: dict[str, dict[str, float | None]] = {}
        raw = data.get("tenants", {})
        if not isinstance(raw, Mapping):
            raise InvalidInput("retention policy: 'tenants' must be an object")
        for tenant, kinds in raw.items():
            validate_part("tenant", tenant)
            if not isinstance(kinds, Mapping):
                raise InvalidInput(f"retention policy of {tenant!r} must be an object of kind -> seconds")
            tenants[tenant] = {kind_name(k): parse_duration(v) for k, v in kinds.items()}
        return cls(tenants, version)

    def as_data(self) -> dict[str, Any]:
        return {"tenants": {t: dict(k) for t, k in sorted(self.tenants.items())}}

    def cutoffs(self, tenant: str, now: datetime | None = None) -> dict[str, datetime]:
        now = now or utcnow()
        return {kind: now - timedelta(seconds=ttl) for kind, ttl in self.tenants.get(tenant, {}).items()
                if ttl is not None}


async def load_policy(store: Any) -> RetentionPolicy:
    blob = await store.get_state(POLICY_KEY, POLICY_NAME)
    if blob is None:
        return RetentionPolicy()
    return RetentionPolicy.from_data(blob.data, blob.version)


async def save_policy(store: Any, policy: RetentionPolicy) -> RetentionPolicy:
    """Store the policy, compare-and-set against the version it was loaded from (VersionConflict if
    someone changed it meanwhile)."""
    blob = await store.put_state(POLICY_KEY, POLICY_NAME, policy.as_data(), expected_version=policy.version)
    return RetentionPolicy.from_data(blob.data, blob.version)


async def set_tenant_ttl(store: Any, tenant: str, ttls: Mapping[str, str | float | None]) -> RetentionPolicy:
    """Set (or with ``None`` clear) the TTL of some kinds for one tenant; retried on a concurrent change."""
    validate_part("tenant", tenant)
    if tenant == ADMIN_TENANT:
        raise InvalidInput(f"tenant {ADMIN_TENANT!r} is reserved (API keys, policies): no retention applies")
    changes = {kind_name(k): parse_duration(v) for k, v in ttls.items()}
    version: int | None = None
    for _ in range(10):
        policy = await load_policy(store)
        if version is not None and version > policy.version:
            # a cache in front answered with an older version than the store holds (e.g. it was
            # changed through a handle without the cache): write against the version the store named
            policy = RetentionPolicy(policy.tenants, version)
        tenants = {t: dict(k) for t, k in policy.tenants.items()}
        mine = tenants.setdefault(tenant, {})
        for kind, ttl in changes.items():
            if ttl is None:
                mine.pop(kind, None)
            else:
                mine[kind] = ttl
        if not mine:
            tenants.pop(tenant)
        try:
            return await save_policy(store, RetentionPolicy(tenants, policy.version))
        except VersionConflict as exc:
            version = exc.actual
            continue
    raise VersionConflict("the retention policy kept changing; try again", expected=None, actual=None)


async def prune_tenant(store: Any, tenant: str, ttls: Mapping[str, float | None],
                       *, now: datetime | None = None) -> DeletionReceipt | None:
    """Prune one tenant by explicit TTLs (seconds per kind). None if no TTL applies."""
    now = now or utcnow()
    cut = {kind_name(k): now - timedelta(seconds=v) for k, v in ttls.items() if v is not None}
    if not cut:
        return None
    return await store.prune(tenant, before=cut)


async def enforce_retention(store: Any, *, tenant: str | None = None,
                            now: datetime | None = None) -> list[DeletionReceipt]:
    """Apply the stored policy (to one tenant, or every tenant it names). Used by ``amber prune``
    and periodically by ``amber worker``."""
    policy = await load_policy(store)
    receipts = []
    for t in sorted(policy.tenants):
        if tenant is not None and t != tenant:
            continue
        cut = policy.cutoffs(t, now)
        if cut:
            receipts.append(await store.prune(t, before=cut))
    return receipts


log = logging.getLogger("amber.governance")


async def housekeeping(store: Any, *, now: datetime | None = None) -> dict[str, Any]:
    """One governance round (``amber worker`` runs it every ``--governance-interval`` seconds):
    enforce every stored retention policy, then hash-chain every tenant's pending audit entries."""
    receipts = await enforce_retention(store, now=now)
    heads = await store.chain_audit()
    return {"receipts": receipts, "chained_tenants": len(heads)}


async def run_housekeeping(store: Any, stop: asyncio.Event, interval: float = 60.0) -> None:
    """Run :func:`housekeeping` until ``stop`` is set; failures are logged and retried next round."""
    while not stop.is_set():
        try:
            result = await housekeeping(store)
            for r in result["receipts"]:
                log.info("retention: pruned tenant %s: %s", r.tenant, dict(r.counts))
        except Exception as exc:  # noqa: BLE001 - the worker must keep running
            log.warning("governance round failed, retrying in %.0fs: %s", interval, exc)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except asyncio.TimeoutError:
            pass
