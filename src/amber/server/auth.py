"""API keys and tenants, kept inside the Store contract (state blobs in a reserved admin tenant).

A key looks like ``amb_<key id>_<secret>``. Only ``sha256(secret)`` is stored (the secret has 256 bits
of entropy, so a slow password hash adds nothing), under ``SessionKey(ADMIN_TENANT, "keys", key_id)``;
each key names exactly one tenant, and the tenant of every request comes from its key, never from
the request. Tenants live under ``SessionKey(ADMIN_TENANT, "tenants", name)``; the tenant index is
one state blob updated with compare-and-set, so concurrent workers never lose a registration.
Because the records are ordinary state blobs they are audited and replicated like everything else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict, InvalidInput, NotFound, VersionConflict
from ..keys import SessionKey, validate_part
from ..records import utcnow
from ..store.base import Store

__all__ = ["ADMIN_TENANT", "ApiKey", "KeyRing", "hash_secret"]

ADMIN_TENANT = "amber-admin"  # reserved: no key can be issued for it
_KEY = re.compile(r"^amb_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$")
_INDEX = SessionKey(ADMIN_TENANT, "registry", "tenants")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    label: str
    created_at: str
    revoked_at: str | None

    def public(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "tenant": self.tenant, "label": self.label,
                "created_at": self.created_at, "revoked_at": self.revoked_at}


class KeyRing:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- tenants ---------------------------------------------------------------------------------
    @staticmethod
    def _check_tenant(tenant: str) -> str:
        validate_part("tenant", tenant)
        if tenant == ADMIN_TENANT:
            raise InvalidInput(f"tenant {ADMIN_TENANT!r} is reserved")
        return tenant

    async def tenants(self) -> list[str]:
        blob = await self.store.get_state(_INDEX, "index")
        return sorted(blob.data.get("tenants", [])) if blob else []

    async def create_tenant(self, tenant: str) -> bool:
        """Register a tenant; returns False if it already existed."""
        self._check_tenant(tenant)
        for _ in range(20):
            blob = await self.store.get_state(_INDEX, "index")
            names = set(blob.data.get("tenants", [])) if blob else set()
            if tenant in names:
                return False
            try:
                await self.store.put_state(_INDEX, "index", {"tenants": sorted(names | {tenant})},
                                           expected_version=blob.version if blob else 0)
                return True
            except VersionConflict:
                continue  # another worker registered a tenant at the same moment: re-read and retry
        raise Conflict("the tenant index is too contended; retry")

    async def _require_tenant(self, tenant: str) -> None:
        if tenant not in await self.tenants():
            raise NotFound(f"no tenant {tenant!r}")

    # -- keys --------------------------------------------------------------------------------------
    async def issue(self, tenant: str, label: str = "") -> tuple[ApiKey, str]:
        """Create a key for ``tenant``; returns it and the plaintext key, shown once."""
        self._check_tenant(tenant)
        await self._require_tenant(tenant)
        if not isinstance(label, str) or len(label) > 200:
            raise InvalidInput("label must be a string of at most 200 characters")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        record = {"tenant": tenant, "label": label, "hash": hash_secret(secret),
                  "created_at": utcnow().isoformat(), "revoked_at": None}
        await self.store.put_state(SessionKey(ADMIN_TENANT, "keys", key_id), "apikey", record, expected_version=0)
        await self.store.put_state(SessionKey(ADMIN_TENANT, "tenants", tenant), f"key-{key_id}", {"key_id": key_id},
                                   expected_version=0)
        return self._key(key_id, record), f"amb_{key_id}_{secret}"

    @staticmethod
    def _key(key_id: str, data: Any) -> ApiKey:
        return ApiKey(key_id, data["tenant"], data.get("label", ""), data["created_at"], data.get("revoked_at"))

    async def list_keys(self, tenant: str) -> list[ApiKey]:
        self._check_tenant(tenant)
        await self._require_tenant(tenant)
        out = []
        for name in await self.store.list_states(SessionKey(ADMIN_TENANT, "tenants", tenant)):
            if name.startswith("key-"):
                blob = await self.store.get_state(SessionKey(ADMIN_TENANT, "keys", name[4:]), "apikey")
                if blob is not None:
                    out.append(self._key(name[4:], blob.data))
        return sorted(out, key=lambda k: k.created_at)

    async def revoke(self, key_id: str) -> ApiKey:
        if not re.fullmatch(r"[a-z0-9]{16}", key_id or ""):
            raise NotFound("no such key")
        where = SessionKey(ADMIN_TENANT, "keys", key_id)
        for _ in range(20):
            blob = await self.store.get_state(where, "apikey")
            if blob is None:
                raise NotFound("no such key")
            if blob.data.get("revoked_at"):
                return self._key(key_id, blob.data)
            data = dict(blob.data, revoked_at=utcnow().isoformat())
            try:
                await self.store.put_state(where, "apikey", data, expected_version=blob.version)
                return self._key(key_id, data)
            except VersionConflict:
                continue
        raise Conflict("the key record is too contended; retry")

    async def verify(self, presented: str) -> ApiKey | None:
        """The live key ``presented`` names, or None (malformed, unknown, wrong secret or revoked)."""
        m = _KEY.match(presented or "")
        if not m:
            return None
        blob = await self.store.get_state(SessionKey(ADMIN_TENANT, "keys", m.group(1)), "apikey")
        if blob is None:
            return None
        if not hmac.compare_digest(str(blob.data.get("hash", "")), hash_secret(m.group(2))):
            return None
        if blob.data.get("revoked_at"):
            return None
        return self._key(m.group(1), blob.data)
