"""Keys for encryption at rest: master keys (the operator's), per-tenant data keys (Amber's), and the
keyring that keeps the data keys wrapped.

* A :class:`KeyProvider` wraps and unwraps data keys with a master key. :class:`LocalKeyProvider`
  holds AES-256 master keys in process memory (the CLI/server read them from an environment
  variable or a file; the library is handed the bytes). A KMS or HSM plugs in by implementing the
  same two async methods; the master key then never enters the process.
* A :class:`KeyRing` keeps each tenant's wrapped data keys. :class:`FileKeyRing` is one small JSON
  file, deliberately NOT inside the data store: a backup of the database then holds only
  ciphertext, and destroying a tenant's entry (crypto-shredding) makes every copy of its data
  unreadable, backups included. (Backups of the keyring file itself must be kept short-lived, or
  a restored keyring brings the keys back -- see docs/governance.md.)
* :class:`KeyManager` unwraps and caches keys, creates a tenant's first key, rotates data keys
  (new version for new writes; old versions keep decrypting), re-wraps everything under a new
  master key, and destroys a tenant's keys.

Per tenant there are two kinds of key: versioned *data keys* (AES-256-GCM content encryption) and
one *index key* (HMAC-SHA256 for the blind search index, idempotency keys and fact attributes,
which must stay deterministic across data-key rotations).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import InvalidInput, MissingDependency
from ..keys import validate_part
from .errors import IntegrityError, KeyDestroyed, KeyUnavailable

__all__ = [
    "KeyProvider",
    "LocalKeyProvider",
    "KeyRing",
    "FileKeyRing",
    "KeyManager",
    "TenantKeys",
    "generate_master_key",
]

_KEYRING_FORMAT = "amber-keyring/1"


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - only without the extra
        raise MissingDependency("cryptography", "crypto") from exc
    return AESGCM


def generate_master_key() -> str:
    """A new random AES-256 master key, base64-encoded (what ``AMBER_MASTER_KEY`` holds)."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps data keys with a master key: the hook for a KMS/HSM.

    ``context`` is authenticated (e.g. AES-GCM AAD, or a KMS encryption context): a wrapped key
    only unwraps under the same context, so one tenant's wrapped key cannot be swapped for another's.
    """

    @property
    def current_id(self) -> str:
        """Id of the master key new wraps use."""
        ...

    async def wrap(self, key: bytes, context: bytes) -> tuple[str, bytes]:
        """Return ``(master key id, wrapped key)``."""
        ...

    async def unwrap(self, master_id: str, wrapped: bytes, context: bytes) -> bytes:
        """Return the key; raise :class:`KeyUnavailable` if ``master_id`` is unknown here and
        :class:`IntegrityError` if the wrapped key or context does not authenticate."""
        ...


class LocalKeyProvider:
    """AES-256-GCM key wrapping with master keys held in memory.

    ``keys``: raw 32-byte keys, the first is current (new wraps); the others still unwrap, which is
    how a master-key rotation runs without downtime (see :meth:`KeyManager.rewrap_all`). A key's id
    is a fingerprint of the key, so the keyring records which master wrapped what without holding
    anything secret.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise InvalidInput("LocalKeyProvider needs at least one master key")
        self._keys: dict[str, bytes] = {}
        for k in keys:
            if not isinstance(k, (bytes, bytearray)) or len(k) != 32:
                raise InvalidInput("a master key must be exactly 32 random bytes (AES-256)")
            self._keys[self.fingerprint(bytes(k))] = bytes(k)
        self._current = self.fingerprint(bytes(keys[0]))

    @staticmethod
    def fingerprint(key: bytes) -> str:
        return "local:" + hashlib.sha256(b"amber-master-key-id\x00" + key).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> "LocalKeyProvider":
        """Parse base64 master keys separated by whitespace or commas, current first (the format of
        ``AMBER_MASTER_KEY`` and of a master key file). Errors never echo key material."""
        parts = [p for p in text.replace(",", " ").split() if p]
        keys = []
        for i, p in enumerate(parts):
            try:
                keys.append(base64.b64decode(p, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"master key #{i + 1} is not valid base64") from exc
        if not keys:
            raise InvalidInput("no master key given (expected base64 of 32 random bytes)")
        return cls(keys)

    @property
    def current_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    async def wrap(self, key: bytes, context: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(12)
        return self._current, nonce + _aesgcm()(self._keys[self._current]).encrypt(nonce, key, context)

    async def unwrap(self, master_id: str, wrapped: bytes, context: bytes) -> bytes:
        master = self._keys.get(master_id)
        if master is None:
            raise KeyUnavailable(f"master key {master_id} is not configured; the data keys it wrapped cannot be used")
        from cryptography.exceptions import InvalidTag

        try:
            return _aesgcm()(master).decrypt(wrapped[:12], wrapped[12:], context)
        except InvalidTag as exc:
            raise IntegrityError("a wrapped data key failed authentication (tampered keyring entry?)") from exc

    def __repr__(self) -> str:  # never print key material
        return f"LocalKeyProvider(current={self._current!r}, keys={len(self._keys)})"


class KeyRing(Protocol):
    """Where wrapped data keys live. Entries are plain JSON-able dicts (wrapped keys only)."""

    async def read(self, tenant: str) -> dict[str, Any] | None: ...

    async def modify(
        self, tenant: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Atomically replace the tenant's entry with ``change(current)`` (across processes)."""
        ...

    async def tenants(self) -> list[str]: ...


class FileKeyRing:
    """A JSON keyring file, safe for several processes: every change runs under an exclusive
    ``flock`` on ``<path>.lock``, re-reads the file, and replaces it atomically (write, fsync,
    rename, fsync the directory). Reads re-load the file when it changed on disk, so a key destroyed
    by one process stops working in the others at their next operation."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._stamp: tuple[int, int, int] | None = None
        self._data: dict[str, Any] = {"format": _KEYRING_FORMAT, "tenants": {}}
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"FileKeyRing({str(self.path)!r})"

    def _load_if_changed(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._data = None, {"format": _KEYRING_FORMAT, "tenants": {}}
            return self._data
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with open(self.path, "rb") as fh:
                raw = fh.read()
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise IntegrityError(f"keyring {self.path} is not valid JSON") from exc
            if not isinstance(data, dict) or data.get("format") != _KEYRING_FORMAT:
                raise IntegrityError(f"keyring {self.path} is not an {_KEYRING_FORMAT} file")
            self._stamp, self._data = stamp, data
        return self._data

    def _read_sync(self, tenant: str) -> dict[str, Any] | None:
        with self._mutex:
            entry = self._load_if_changed()["tenants"].get(tenant)
            return None if entry is None else json.loads(json.dumps(entry))

    async def read(self, tenant: str) -> dict[str, Any] | None:
        return self._read_sync(tenant)  # a stat per call; the file is re-read only when it changed

    def _modify_sync(self, tenant: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
                     ) -> dict[str, Any] | None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+b") as lock, self._mutex:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._stamp = None  # always re-read under the lock
                data = json.loads(json.dumps(self._load_if_changed()))
                current = data["tenants"].get(tenant)
                new = change(None if current is None else json.loads(json.dumps(current)))
                if new is None:
                    data["tenants"].pop(tenant, None)
                else:
                    data["tenants"][tenant] = new
                fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(json.dumps(data, indent=1, sort_keys=True).encode())
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.chmod(tmp, 0o600)
                    os.replace(tmp, self.path)
                except BaseException:
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass
                    raise
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                self._stamp = None
                return new
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def modify(
        self, tenant: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._modify_sync, tenant, change)

    async def tenants(self) -> list[str]:
        with self._mutex:
            return sorted(self._load_if_changed()["tenants"])


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """A tenant's unwrapped keys: ``data[version]`` (AES-256) and the HMAC ``index`` key."""

    tenant: str
    current: int
    data: Mapping[int, bytes]
    index: bytes


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _context(tenant: str, purpose: str, version: int) -> bytes:
    return f"amber-key/1\x1f{tenant}\x1f{purpose}\x1f{version}".encode()


class KeyManager:
    """Unwraps and caches tenants' keys from a :class:`KeyRing` with a :class:`KeyProvider`.

    ``auto_create``: an encrypted tenant's first write creates its keys (concurrent creators in
    several processes converge on one entry, under the keyring's lock). A tenant whose keys were
    destroyed is never re-keyed implicitly: see :meth:`create`.
    """

    def __init__(self, provider: KeyProvider, keyring: KeyRing, *, auto_create: bool = True) -> None:
        self.provider = provider
        self.keyring = keyring
        self.auto_create = auto_create
        # (tenant, purpose, version, wrapped) -> key: a changed entry (rotation, re-wrap) misses.
        self._unwrapped: dict[tuple[str, str, int, str], bytes] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _unwrap(self, tenant: str, purpose: str, version: int, item: Mapping[str, str]) -> bytes:
        cache_key = (tenant, purpose, version, item["wrapped"])
        key = self._unwrapped.get(cache_key)
        if key is None:
            key = await self.provider.unwrap(item["master"], base64.b64decode(item["wrapped"]),
                                             _context(tenant, purpose, version))
            self._unwrapped[cache_key] = key
        return key

    async def _entry_keys(self, tenant: str, entry: Mapping[str, Any]) -> TenantKeys:
        if entry.get("destroyed_at"):
            raise KeyDestroyed(
                f"the keys of tenant {tenant!r} were destroyed at {entry['destroyed_at']}; its encrypted "
                "data is unreadable and writes are refused until a new key is created (KeyManager.create)"
            )
        data = {int(v): await self._unwrap(tenant, "data", int(v), item) for v, item in entry["data"].items()}
        index = await self._unwrap(tenant, "index", 0, entry["index"])
        return TenantKeys(tenant, int(entry["current"]), data, index)

    async def keys(self, tenant: str, *, create: bool = False) -> TenantKeys:
        """The tenant's keys. ``create``: make them if the tenant has none yet (and auto_create is on)."""
        entry = await self.keyring.read(tenant)
        if entry is None:
            if not (create and self.auto_create):
                raise KeyUnavailable(f"tenant {tenant!r} has no data key in the keyring")
            entry = await self._create(tenant, replace_destroyed=False)
        return await self._entry_keys(tenant, entry)

    async def has_keys(self, tenant: str) -> bool:
        entry = await self.keyring.read(tenant)
        return entry is not None and not entry.get("destroyed_at")

    async def _new_item(self, tenant: str, purpose: str, version: int) -> dict[str, str]:
        master, wrapped = await self.provider.wrap(os.urandom(32), _context(tenant, purpose, version))
        return {"master": master, "wrapped": base64.b64encode(wrapped).decode(), "created_at": _now()}

    async def _create(self, tenant: str, *, replace_destroyed: bool) -> dict[str, Any]:
        validate_part("tenant", tenant)
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            fresh = {"current": 1, "created_at": _now(), "data": {"1": await self._new_item(tenant, "data", 1)},
                     "index": await self._new_item(tenant, "index", 0)}

            def change(current: dict[str, Any] | None) -> dict[str, Any]:
                if current is not None and not (replace_destroyed and current.get("destroyed_at")):
                    return current  # another process (or task) created it first: use theirs
                return fresh

            entry = await self.keyring.modify(tenant, change)
            assert entry is not None
            return entry

    async def create(self, tenant: str) -> None:
        """Create keys for ``tenant`` now; also the explicit way to re-enable a destroyed tenant
        (its old data stays unreadable: the new keys are unrelated)."""
        await self._create(tenant, replace_destroyed=True)

    async def rotate(self, tenant: str) -> int:
        """A new data key version for the tenant's new writes; older versions keep decrypting.
        Returns the new version. Online: writers pick the new version up at their next write."""
        item_holder: dict[str, Any] = {}
        entry = await self.keyring.read(tenant)
        if entry is None or entry.get("destroyed_at"):
            raise KeyUnavailable(f"tenant {tenant!r} has no live keys to rotate")
        version = max(int(v) for v in entry["data"]) + 1
        item_holder["item"] = await self._new_item(tenant, "data", version)

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None or current.get("destroyed_at"):
                raise KeyUnavailable(f"tenant {tenant!r} has no live keys to rotate")
            if str(version) in current["data"]:  # a concurrent rotation took this number
                raise KeyUnavailable(f"tenant {tenant!r} was rotated concurrently; retry")
            current["data"][str(version)] = item_holder["item"]
            current["current"] = version
            return current

        await self.keyring.modify(tenant, change)
        return version

    async def rewrap_all(self) -> int:
        """Re-wrap every tenant's keys under the provider's current master key (master-key rotation:
        configure the new master first and the old one second, run this, then drop the old one).
        Data is untouched. Returns how many tenants were re-wrapped."""
        count = 0
        for tenant in await self.keyring.tenants():
            entry = await self.keyring.read(tenant)
            if entry is None or entry.get("destroyed_at"):
                continue
            items: dict[tuple[str, int], dict[str, str]] = {}
            for v, item in entry["data"].items():
                key = await self._unwrap(tenant, "data", int(v), item)
                master, wrapped = await self.provider.wrap(key, _context(tenant, "data", int(v)))
                items[("data", int(v))] = {**item, "master": master, "wrapped": base64.b64encode(wrapped).decode()}
            key = await self._unwrap(tenant, "index", 0, entry["index"])
            master, wrapped = await self.provider.wrap(key, _context(tenant, "index", 0))
            items[("index", 0)] = {**entry["index"], "master": master, "wrapped": base64.b64encode(wrapped).decode()}

            def change(current: dict[str, Any] | None, items: dict[tuple[str, int], dict[str, str]] = items
                       ) -> dict[str, Any] | None:
                if current is None or current.get("destroyed_at"):
                    return current
                for v in list(current["data"]):
                    if ("data", int(v)) in items:  # a version added meanwhile keeps its own wrap
                        current["data"][v] = items[("data", int(v))]
                current["index"] = items[("index", 0)]
                return current

            await self.keyring.modify(tenant, change)
            count += 1
        return count

    async def destroy(self, tenant: str) -> None:
        """Crypto-shred: remove every wrapped key of ``tenant`` from the keyring, leaving a tombstone
        so later writes are refused rather than silently re-keyed. Irreversible by design."""
        validate_part("tenant", tenant)
        await self.keyring.modify(tenant, lambda _current: {"destroyed_at": _now()})
        self._unwrapped = {k: v for k, v in self._unwrapped.items() if k[0] != tenant}

    async def versions_in_keyring(self, tenant: str) -> list[int]:
        entry = await self.keyring.read(tenant)
        if entry is None or entry.get("destroyed_at"):
            return []
        return sorted(int(v) for v in entry["data"])

    async def retire(self, tenant: str, version: int) -> None:
        """Drop one old data key version (after a re-encrypt pass moved everything off it): records
        still under it become unreadable. The current version cannot be retired."""

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None or current.get("destroyed_at"):
                raise KeyUnavailable(f"tenant {tenant!r} has no live keys")
            if int(current["current"]) == version:
                raise InvalidInput("the current data key version cannot be retired; rotate first")
            current["data"].pop(str(version), None)
            return current

        await self.keyring.modify(tenant, change)
        self._unwrapped = {k: v for k, v in self._unwrapped.items() if not (k[0] == tenant and k[2] == version)}
