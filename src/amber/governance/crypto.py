"""Encryption at rest as a Store layer: :class:`EncryptedStore` over any backend (or cache).

What is encrypted (AES-256-GCM, a fresh 96-bit nonce per field, per-tenant data keys):

* messages: ``content``, ``payload``, ``metadata`` (and the caller's idempotency key, kept inside
  the encrypted metadata; the backend sees only a keyed HMAC of it, so it still dedupes retries);
* facts: ``text``, ``value``, ``metadata`` (and the attribute, stored as a keyed HMAC so equality
  filters and supersession still work);
* state blobs: ``data``.

The AAD of every field binds it to ``tenant / user / thread / record kind / field / key version``:
a ciphertext copied to another tenant, user, thread, kind or field fails authentication. (It does
not bind to a record id, which the backend assigns after encryption; swapping two ciphertexts of
the same field between records of one thread is not detected.)

Stays in plaintext, by design: tenant, user and thread ids, roles, authors, payload formats, fact
kinds, timestamps, sizes (ciphertext length follows plaintext length), sequence numbers, ids, state
names, and the audit trail (whose digests are hashes *of the ciphertext*, so they are not a
plaintext oracle).

Search for an encrypted tenant:

* lexical (``lexical="blind"``, default): a blind index -- each distinct word of a message or fact
  is stored as a truncated keyed HMAC token next to the ciphertext, and queries are tokenised the
  same way. The backend's own full-text index then works unchanged. It leaks which records share a
  word (and how many distinct words a record has), never the word. ``lexical="off"`` stores no
  tokens and drops the LEXICAL_SEARCH capability.
* vectors (``vectors="off"``, default): embeddings are a lossy copy of the text (they can be
  inverted to a useful degree), so they are not stored for encrypted tenants: ``put_vectors`` is
  refused with a logged warning (once per tenant) and ``search_vectors`` returns nothing, and the
  VECTOR_SEARCH capability is dropped. ``vectors="plaintext"`` is the explicit opt-in to store them
  as they are.

Never a silent plaintext fallback: a read whose key is missing or destroyed raises
:class:`KeyUnavailable` / :class:`KeyDestroyed`; a write to an encrypted tenant without a usable key
raises; a plaintext record found in an encrypted tenant raises :class:`IntegrityError` (unless
``allow_plaintext_reads``, for migrating a tenant that was not encrypted before).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import struct
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Collection, Literal, Mapping, Sequence

from ..errors import InvalidInput
from ..keys import SessionKey, validate_part
from ..records import Fact, Hit, Message, NewFact, NewMessage, SessionInfo, StateBlob, VectorItem
from ..store.base import (
    CORRECTION_KEYS,
    Capability,
    Store,
    new_id,
    prepare_correction,
    prepare_fact,
    prepare_message,
    prepare_restore,
    prepare_restored_facts,
    select_window,
    validate_limit,
)
from ..store.delegating import DelegatingStore
from ..store.memory import lexical_terms
from ..tokens import estimate_tokens
from .errors import IntegrityError
from .keys import FileKeyRing, KeyManager, KeyProvider, KeyRing, LocalKeyProvider, TenantKeys, _aesgcm

__all__ = ["EncryptionConfig", "EncryptedStore", "MARKER"]

log = logging.getLogger("amber.governance.crypto")

MARKER = "amberenc1"  # prefix of every encrypted string field; '1' is not a base32 digit
_JSON_FIELD = "amber.enc"  # the single key of an encrypted JSON object
_FORMAT = 1
_MAX_INDEX_TERMS = 2048  # bounds the blind index of a huge message (and PostgreSQL indexes only 64 KiB)


@dataclass(frozen=True)
class EncryptionConfig:
    """How :func:`amber.open_store` encrypts (``open_store(url, encryption=EncryptionConfig(...))``).

    ``provider``: the master key(s) (:class:`LocalKeyProvider` or a KMS hook). ``keyring``: where
    wrapped data keys live (:class:`FileKeyRing`; keep it apart from the database and its backups).
    ``tenants``: which tenants are encrypted -- None for all, a collection of ids, or a predicate.
    ``lexical``: "blind" (keyed-token index) or "off". ``vectors``: "off" or "plaintext" (explicit
    opt-in to store embeddings, which leak meaning). ``auto_create``: an encrypted tenant's first
    write creates its keys. ``allow_plaintext_reads``: accept records stored before encryption was
    turned on (default: such a record raises IntegrityError).
    """

    provider: KeyProvider
    keyring: KeyRing
    tenants: Collection[str] | Callable[[str], bool] | None = None
    lexical: Literal["blind", "off"] = "blind"
    vectors: Literal["off", "plaintext"] = "off"
    auto_create: bool = True
    allow_plaintext_reads: bool = False

    def __post_init__(self) -> None:
        if self.lexical not in ("blind", "off"):
            raise InvalidInput(f"lexical must be 'blind' or 'off', got {self.lexical!r}")
        if self.vectors not in ("off", "plaintext"):
            raise InvalidInput(f"vectors must be 'off' or 'plaintext', got {self.vectors!r}")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **options: Any) -> "EncryptionConfig | None":
        """For the CLI and server (the library never reads the environment itself):
        ``AMBER_MASTER_KEY`` (base64 keys, current first) or ``AMBER_MASTER_KEY_FILE`` (a file with
        the same), and ``AMBER_KEYRING`` (the keyring file path). None if no master key is set."""
        text = environ.get("AMBER_MASTER_KEY")
        path = environ.get("AMBER_MASTER_KEY_FILE")
        if not text and path:
            with open(path, encoding="ascii") as fh:
                text = fh.read()
        if not text:
            return None
        keyring = environ.get("AMBER_KEYRING")
        if not keyring:
            raise InvalidInput("AMBER_KEYRING (the keyring file path) is required with a master key")
        return cls(provider=LocalKeyProvider.from_text(text), keyring=FileKeyRing(keyring), **options)

    def encrypts(self, tenant: str) -> bool:
        if self.tenants is None:
            return True
        if callable(self.tenants):
            return bool(self.tenants(tenant))
        return tenant in self.tenants


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _unb32(text: str) -> bytes:
    text = text.upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


class _Cipher:
    """Field encryption for one tenant's keys."""

    def __init__(self, keys: TenantKeys) -> None:
        self.keys = keys

    @staticmethod
    def aad(tenant: str, user: str, thread: str | None, kind: str, field: str, version: int) -> bytes:
        return "\x1f".join(("amber-aad/1", tenant, user, thread or "", kind, field, str(version))).encode()

    def seal(self, plain: bytes, where: tuple[str, str, str | None, str, str]) -> bytes:
        version = self.keys.current
        nonce = os.urandom(12)
        ct = _aesgcm()(self.keys.data[version]).encrypt(nonce, plain, self.aad(*where, version))
        return struct.pack(">BI", _FORMAT, version) + nonce + ct

    def open(self, blob: bytes, where: tuple[str, str, str | None, str, str]) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(blob) < 5 + 12 + 16:
            raise IntegrityError(f"truncated ciphertext in {'/'.join(str(p) for p in where)}")
        fmt, version = struct.unpack(">BI", blob[:5])
        if fmt != _FORMAT:
            raise IntegrityError(f"unknown ciphertext format {fmt} in {'/'.join(str(p) for p in where)}")
        key = self.keys.data.get(version)
        if key is None:
            from .errors import KeyUnavailable

            raise KeyUnavailable(f"data key version {version} of tenant {where[0]!r} is not in the keyring "
                                 "(retired or never created)")
        try:
            return _aesgcm()(key).decrypt(blob[5:17], blob[17:], self.aad(*where, version))
        except InvalidTag as exc:
            raise IntegrityError(
                f"ciphertext of {where[3]} {where[4]} in {where[0]}/{where[1]}/{where[2] or '-'} failed "
                "authentication: it was modified or moved from elsewhere"
            ) from exc

    # -- string fields: "<blind tokens> amberenc1<base32>" ----------------------------------------
    def blind(self, term: str, purpose: str = "t") -> str:
        return _b32(hmac.new(self.keys.index, f"{purpose}\x1f{term}".encode(), hashlib.sha256).digest()[:10])

    def index_tokens(self, text: str) -> list[str]:
        terms = list(dict.fromkeys(lexical_terms(text)))[:_MAX_INDEX_TERMS]
        return sorted({self.blind(t) for t in terms})  # sorted: no word order or frequency leaks

    def seal_text(self, text: str, where: tuple[str, str, str | None, str, str], *, index: bool) -> str:
        sealed = MARKER + _b32(self.seal(text.encode("utf-8"), where))
        return " ".join([*self.index_tokens(text), sealed]) if index else sealed

    def seal_json(self, value: Any, where: tuple[str, str, str | None, str, str]) -> dict[str, str]:
        import json

        plain = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
        return {_JSON_FIELD: base64.b64encode(self.seal(plain, where)).decode("ascii")}

    def open_json(self, value: Any, where: tuple[str, str, str | None, str, str]) -> Any:
        import json

        return json.loads(self.open(base64.b64decode(value[_JSON_FIELD]), where))


def _sealed_part(text: str) -> str | None:
    last = text.rsplit(" ", 1)[-1]
    return last if last.startswith(MARKER) else None


def _is_sealed_json(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {_JSON_FIELD}


class EncryptedStore(DelegatingStore):
    """Encrypts what the configured tenants store; everything else passes through unchanged."""

    def __init__(self, inner: Store, config: EncryptionConfig, *, close_inner: bool = True) -> None:
        super().__init__(inner, close_inner=close_inner)
        self.config = config
        self.keys = KeyManager(config.provider, config.keyring, auto_create=config.auto_create)
        caps = set(inner.capabilities)
        if config.lexical == "off":
            caps.discard(Capability.LEXICAL_SEARCH)
        if config.vectors == "off":
            caps.discard(Capability.VECTOR_SEARCH)
            caps.discard(Capability.VECTOR_INDEX_NATIVE)
        # The store-wide flags describe the least capable tenant (an encrypted one); plaintext
        # tenants keep the backend's: see tenant_capabilities.
        self.capabilities = frozenset(caps)
        self._warned_vectors: set[str] = set()

    @classmethod
    async def wrap(cls, inner: Store, config: EncryptionConfig, **options: Any) -> "EncryptedStore":
        return cls(inner, config, **options)

    def tenant_capabilities(self, tenant: str) -> frozenset[Capability]:
        """What this store can do for ``tenant`` (plaintext tenants keep every backend capability)."""
        return self.capabilities if self.config.encrypts(tenant) else self._inner.capabilities

    async def describe(self) -> Mapping[str, Any]:
        info = dict(await self._inner.describe())
        info["encryption"] = {
            "cipher": "AES-256-GCM", "master_key": self.config.provider.current_id,
            "keyring": repr(self.config.keyring), "lexical": self.config.lexical, "vectors": self.config.vectors,
            "tenants": "all" if self.config.tenants is None else "some",
        }
        return info

    async def _cipher(self, tenant: str, *, write: bool) -> _Cipher | None:
        if not self.config.encrypts(tenant):
            return None
        return _Cipher(await self.keys.keys(tenant, create=write))

    # -- messages ---------------------------------------------------------------------------------
    def _seal_message(self, c: _Cipher, key: SessionKey, m: NewMessage) -> NewMessage:
        where = (key.tenant, key.user, key.thread, "message")
        # Name the message here when the caller did not (as the backend would), so the key handed
        # back can be retried: the backend only ever sees its keyed HMAC.
        idem = m.idempotency_key if m.idempotency_key is not None else new_id("auto")
        meta = {"m": dict(m.metadata or {}), "i": idem}
        return replace(
            m,
            content=c.seal_text(m.content, (*where, "content"), index=self.config.lexical == "blind"),
            payload=None if m.payload is None else c.seal_json(dict(m.payload), (*where, "payload")),
            # The backend dedupes on a keyed HMAC of the key: deterministic, but no content oracle
            # (adapters derive idempotency keys from a plain hash of the content).
            idempotency_key="enc:" + c.blind(idem, "i"),
            metadata=c.seal_json(meta, (*where, "metadata")),
        )

    def _open_message(self, c: _Cipher | None, m: Message) -> Message:
        sealed = _sealed_part(m.content)
        if c is None or sealed is None:
            if c is not None and not self.config.allow_plaintext_reads:
                raise IntegrityError(f"plaintext message {m.id} in encrypted tenant {m.key.tenant!r}")
            return m
        where = (m.key.tenant, m.key.user, m.key.thread, "message")
        content = c.open(_unb32(sealed[len(MARKER):]), (*where, "content")).decode("utf-8")
        payload = None if m.payload is None else c.open_json(m.payload, (*where, "payload"))
        # A correction adds corrected_at (plaintext, like created_at) and a sealed correction_reason
        # next to the sealed metadata (see correct_message).
        extra = {k: v for k, v in m.metadata.items() if k in CORRECTION_KEYS} if isinstance(m.metadata, Mapping) else {}
        sealed_meta = {k: v for k, v in m.metadata.items() if k not in extra} if extra else m.metadata
        if not _is_sealed_json(sealed_meta):
            raise IntegrityError(f"message {m.id} in encrypted tenant {m.key.tenant!r} has plaintext metadata")
        meta = c.open_json(sealed_meta, (*where, "metadata"))
        metadata = meta["m"]
        if extra:
            metadata = dict(metadata)
            if "corrected_at" in extra:
                metadata["corrected_at"] = extra["corrected_at"]
            reason = _sealed_part(str(extra.get("correction_reason", "")))
            if reason is not None:
                metadata["correction_reason"] = c.open(_unb32(reason[len(MARKER):]),
                                                       (*where, "correction_reason")).decode("utf-8")
        return replace(m, content=content, payload=payload, metadata=metadata,
                       idempotency_key=meta["i"] or m.idempotency_key, tokens=estimate_tokens(content))

    async def _open_messages(self, key: SessionKey, msgs: list[Message]) -> list[Message]:
        if not msgs or not self.config.encrypts(key.tenant):
            return msgs
        if self.config.allow_plaintext_reads and not any(_sealed_part(m.content) for m in msgs):
            return msgs  # legacy rows of a tenant that was not encrypted before: no key needed
        c = await self._cipher(key.tenant, write=False)
        return [self._open_message(c, m) for m in msgs]

    async def append(self, key: SessionKey, messages: Sequence[NewMessage]) -> list[Message]:
        if not self.config.encrypts(key.tenant):
            return await self._inner.append(key, messages)
        if len(messages) > self.limits.max_batch:
            raise InvalidInput(f"at most {self.limits.max_batch} messages per append")
        for m in messages:  # the whole batch is validated in plaintext before any key is touched
            prepare_message(m, self.limits)
        c = await self._cipher(key.tenant, write=True)
        assert c is not None
        stored = await self._inner.append(key, [self._seal_message(c, key, m) for m in messages])
        return [self._open_message(c, m) for m in stored]

    async def read_since(self, key: SessionKey, after_seq: int = 0, *, limit: int | None = None) -> list[Message]:
        return await self._open_messages(key, await self._inner.read_since(key, after_seq, limit=limit))

    async def read_window(
        self, key: SessionKey, *, last: int | None = None, max_tokens: int | None = None
    ) -> list[Message]:
        if not self.config.encrypts(key.tenant):
            return await self._inner.read_window(key, last=last, max_tokens=max_tokens)
        validate_limit(last, "last")
        validate_limit(max_tokens, "max_tokens")
        if max_tokens is None:
            return await self._open_messages(key, await self._inner.read_window(key, last=last))
        # The backend counted tokens of the ciphertext: budget on the plaintext here, reading a
        # growing tail until the budget is spent or the session is exhausted.
        want = 64 if last is None else min(last, 64)
        while True:
            msgs = await self._open_messages(key, await self._inner.read_window(key, last=want))
            keep = select_window([m.tokens for m in reversed(msgs)], last, max_tokens)
            exhausted = len(msgs) < want or (last is not None and want >= last)
            if keep < len(msgs) or exhausted:
                return msgs[len(msgs) - keep:] if keep else []
            want = want * 4 if last is None else min(last, want * 4)

    async def correct_message(
        self, key: SessionKey, message_id: str, content: str, *, reason: str | None = None
    ) -> Message:
        """The new content is sealed as append seals it (blind index tokens per the lexical
        setting), and so is the reason; the store below records the correction on the ciphertext."""
        if not self.config.encrypts(key.tenant):
            return await self._inner.correct_message(key, message_id, content, reason=reason)
        prepare_correction(message_id, content, reason, self.limits)  # validated in plaintext first
        c = await self._cipher(key.tenant, write=True)
        assert c is not None
        where = (key.tenant, key.user, key.thread, "message")
        sealed = c.seal_text(content, (*where, "content"), index=self.config.lexical == "blind")
        sealed_reason = None if reason is None else c.seal_text(reason, (*where, "correction_reason"), index=False)
        stored = await self._inner.correct_message(key, message_id, sealed, reason=sealed_reason)
        return self._open_message(c, stored)

    # -- restore ----------------------------------------------------------------------------------
    async def restore_session(
        self, key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob] = (), *,
        created_at: datetime | None = None, updated_at: datetime | None = None, last_seq: int | None = None,
    ) -> SessionInfo | None:
        """Sealed as append and put_state seal (fresh nonces); ids, seqs, times, versions and the
        given content hashes pass through unchanged."""
        if not self.config.encrypts(key.tenant):
            return await self._inner.restore_session(key, messages, states, created_at=created_at,
                                                     updated_at=updated_at, last_seq=last_seq)
        # the whole call is validated in plaintext before any key is touched
        prepare_restore(key, messages, states, created_at=created_at, updated_at=updated_at, last_seq=last_seq,
                        limits=self.limits)
        c = await self._cipher(key.tenant, write=True)
        assert c is not None
        sealed_messages = []
        for m in messages:
            s = self._seal_message(c, key, NewMessage(
                role=m.role, content=m.content, payload=m.payload, payload_format=m.payload_format, author=m.author,
                idempotency_key=m.idempotency_key, created_at=m.created_at, metadata=m.metadata))
            sealed_messages.append(replace(m, content=s.content, payload=s.payload, idempotency_key=s.idempotency_key,
                                           metadata=s.metadata))
        sealed_states = [replace(b, data=c.seal_json(dict(b.data), (key.tenant, key.user, key.thread, "state", b.name)))
                         for b in states]
        return await self._inner.restore_session(key, sealed_messages, sealed_states, created_at=created_at,
                                                 updated_at=updated_at, last_seq=last_seq)

    async def restore_facts(self, tenant: str, user: str, facts: Sequence[Fact]) -> None:
        if not self.config.encrypts(tenant):
            return await self._inner.restore_facts(tenant, user, facts)
        plain = prepare_restored_facts(tenant, user, facts, self.limits)
        c = await self._cipher(tenant, write=True)
        assert c is not None
        await self._inner.restore_facts(tenant, user, [self._seal_fact(c, tenant, user, f) for f in plain])

    def _seal_fact(self, c: _Cipher, tenant: str, user: str, fact: Any) -> Any:
        """A NewFact or Fact with its content sealed (the attribute as a keyed HMAC)."""
        where = (tenant, user, fact.thread, "fact")
        return replace(
            fact,
            attribute="enc:" + c.blind(fact.attribute, "a"),
            value=c.seal_text(fact.value, (*where, "value"), index=False),
            text=c.seal_text(fact.text, (*where, "text"), index=self.config.lexical == "blind"),
            metadata=c.seal_json({"m": dict(fact.metadata), "a": fact.attribute}, (*where, "metadata")),
        )

    # -- state ------------------------------------------------------------------------------------
    async def put_state(
        self, key: SessionKey, name: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> StateBlob:
        if not self.config.encrypts(key.tenant):
            return await self._inner.put_state(key, name, data, expected_version=expected_version)
        from ..store.base import encode_json, validate_state_name

        validate_state_name(name)
        validate_limit(expected_version, "expected_version")
        text = encode_json(dict(data), "state")
        if len(text.encode()) > self.limits.max_state_bytes:
            from ..errors import MessageTooLarge

            raise MessageTooLarge(f"state is larger than {self.limits.max_state_bytes} bytes")
        c = await self._cipher(key.tenant, write=True)
        assert c is not None
        sealed = c.seal_json(dict(data), (key.tenant, key.user, key.thread, "state", name))
        blob = await self._inner.put_state(key, name, sealed, expected_version=expected_version)
        return replace(blob, data=dict(data))

    async def get_state(self, key: SessionKey, name: str) -> StateBlob | None:
        blob = await self._inner.get_state(key, name)
        if blob is None or not self.config.encrypts(key.tenant):
            return blob
        if not _is_sealed_json(blob.data):
            if self.config.allow_plaintext_reads:
                return blob
            raise IntegrityError(f"plaintext state {name!r} in encrypted tenant {key.tenant!r}")
        c = await self._cipher(key.tenant, write=False)
        assert c is not None
        return replace(blob, data=c.open_json(blob.data, (key.tenant, key.user, key.thread, "state", name)))

    # -- facts ------------------------------------------------------------------------------------
    async def record_fact(self, tenant: str, user: str, fact: NewFact, *, supersedes: Sequence[str] = (),
                          expect_current: Sequence[str] | None = None, superseded_by: str | None = None) -> Fact:
        if not self.config.encrypts(tenant):
            return await self._inner.record_fact(tenant, user, fact, supersedes=supersedes,
                                                 expect_current=expect_current, superseded_by=superseded_by)
        validate_part("tenant", tenant)
        validate_part("user", user)
        prepare_fact(fact, self.limits)
        c = await self._cipher(tenant, write=True)
        assert c is not None
        sealed = self._seal_fact(c, tenant, user, fact)
        # The attribute is blinded deterministically, so the store below compares the same set of
        # current facts that list_facts(attribute=...) showed the caller.
        return self._open_fact(c, await self._inner.record_fact(tenant, user, sealed, supersedes=supersedes,
                                                                expect_current=expect_current,
                                                                superseded_by=superseded_by))

    def _open_fact(self, c: _Cipher | None, f: Fact) -> Fact:
        text, value = _sealed_part(f.text), _sealed_part(f.value)
        if c is None or text is None or value is None or not _is_sealed_json(f.metadata):
            if c is not None and not self.config.allow_plaintext_reads:
                raise IntegrityError(f"plaintext fact {f.id} in encrypted tenant {f.tenant!r}")
            return f
        where = (f.tenant, f.user, f.thread, "fact")
        meta = c.open_json(f.metadata, (*where, "metadata"))
        return replace(
            f,
            attribute=meta["a"],
            value=c.open(_unb32(value[len(MARKER):]), (*where, "value")).decode("utf-8"),
            text=c.open(_unb32(text[len(MARKER):]), (*where, "text")).decode("utf-8"),
            metadata=meta["m"],
        )

    async def list_facts(self, tenant: str, user: str, *, attribute: str | None = None,
                         include_superseded: bool = False, limit: int | None = None) -> list[Fact]:
        if not self.config.encrypts(tenant):
            return await self._inner.list_facts(tenant, user, attribute=attribute,
                                                include_superseded=include_superseded, limit=limit)
        c: _Cipher | None = None
        if await self.keys.has_keys(tenant):
            c = await self._cipher(tenant, write=False)
        elif attribute is not None:
            # No key to blind the attribute with: a user without facts has none of it either (as for
            # a tenant that never wrote); any fact there needs the key, which raises why it is missing.
            if not await self._inner.list_facts(tenant, user, include_superseded=True, limit=1):
                return []
            c = await self._cipher(tenant, write=False)
        if attribute is not None:
            assert c is not None
            attribute = "enc:" + c.blind(attribute, "a")
        facts = await self._inner.list_facts(tenant, user, attribute=attribute,
                                             include_superseded=include_superseded, limit=limit)
        if facts and c is None:
            c = await self._cipher(tenant, write=False)  # raises: data without a key
        return [self._open_fact(c, f) for f in facts]

    async def get_fact(self, tenant: str, user: str, fact_id: str) -> Fact | None:
        f = await self._inner.get_fact(tenant, user, fact_id)
        if f is None or not self.config.encrypts(tenant):
            return f
        return self._open_fact(await self._cipher(tenant, write=False), f)

    # -- search -----------------------------------------------------------------------------------
    def _open_hit(self, c: _Cipher, h: Hit) -> Hit:
        sealed = _sealed_part(h.text)
        if sealed is None:
            if not self.config.allow_plaintext_reads:
                raise IntegrityError(f"plaintext {h.kind} {h.id} in encrypted tenant {h.tenant!r}")
            return h
        where = (h.tenant, h.user, h.thread, h.kind, "content" if h.kind == "message" else "text")
        return replace(h, text=c.open(_unb32(sealed[len(MARKER):]), where).decode("utf-8"))

    async def search_text(self, tenant: str, user: str, query: str, *, limit: int = 20,
                          kinds: Sequence[str] = ("message", "fact")) -> list[Hit]:
        if not self.config.encrypts(tenant):
            return await self._inner.search_text(tenant, user, query, limit=limit, kinds=kinds)
        validate_part("tenant", tenant)
        validate_part("user", user)
        validate_limit(limit, allow_none=False)
        if not isinstance(query, str):
            raise InvalidInput("query must be a string")
        if await self.keys.keyring.read(tenant) is None:
            return []  # never written: nothing to find
        c = await self._cipher(tenant, write=False)  # a destroyed key raises here
        if self.config.lexical == "off":
            return []
        assert c is not None
        tokens = c.index_tokens(query)
        if not tokens:
            return []
        hits = await self._inner.search_text(tenant, user, " ".join(tokens), limit=limit, kinds=kinds)
        return [self._open_hit(c, h) for h in hits]

    async def put_vectors(self, tenant: str, user: str, model: str, items: Sequence[VectorItem]) -> None:
        if self.config.encrypts(tenant) and self.config.vectors == "off":
            if tenant not in self._warned_vectors:
                self._warned_vectors.add(tenant)
                log.warning("not storing embeddings for encrypted tenant %r: vectors leak content "
                            "(EncryptionConfig(vectors='plaintext') opts in)", tenant)
            return
        await self._inner.put_vectors(tenant, user, model, items)

    async def search_vectors(self, tenant: str, user: str, model: str, vector: Sequence[float], *,
                             limit: int = 20, kinds: Sequence[str] = ("message", "fact")) -> list[Hit]:
        if not self.config.encrypts(tenant):
            return await self._inner.search_vectors(tenant, user, model, vector, limit=limit, kinds=kinds)
        if self.config.vectors == "off":
            validate_part("tenant", tenant)
            validate_part("user", user)
            return []
        hits = await self._inner.search_vectors(tenant, user, model, vector, limit=limit, kinds=kinds)
        if not hits:
            return hits
        c = await self._cipher(tenant, write=False)
        assert c is not None
        return [self._open_hit(c, h) for h in hits]

    # -- maintenance ------------------------------------------------------------------------------
    async def reencrypt_states(self, tenant: str) -> dict[str, int]:
        """Re-encrypt every state blob of ``tenant`` under its current data key version (compare-and-
        set, so a concurrent writer wins and its fresh write is already current). Messages and facts
        are immutable in the store contract and cannot be rewritten in place: :meth:`key_versions`
        reports which versions they still need, so an old version is retired only when unused."""
        counts = {"states": 0, "skipped": 0}
        c = await self._cipher(tenant, write=False)
        if c is None:
            return counts
        offset = 0
        while True:
            sessions = await self._inner.list_sessions(tenant, limit=500, offset=offset)
            for info in sessions:
                for name in await self._inner.list_states(info.key):
                    raw = await self._inner.get_state(info.key, name)
                    if raw is None or not _is_sealed_json(raw.data):
                        continue
                    version = struct.unpack(">BI", base64.b64decode(raw.data[_JSON_FIELD])[:5])[1]
                    if version == c.keys.current:
                        continue
                    plain = await self.get_state(info.key, name)
                    assert plain is not None
                    from ..errors import VersionConflict

                    try:
                        await self.put_state(info.key, name, plain.data, expected_version=raw.version)
                        counts["states"] += 1
                    except VersionConflict:
                        counts["skipped"] += 1
            if len(sessions) < 500:
                return counts
            offset += 500

    async def key_versions(self, tenant: str) -> dict[int, int]:
        """How many stored fields of ``tenant`` each data key version encrypts (a full scan: for
        maintenance, not the hot path)."""
        used: dict[int, int] = {}

        def note(blob: bytes) -> None:
            v = struct.unpack(">BI", blob[:5])[1]
            used[v] = used.get(v, 0) + 1

        offset = 0
        users: set[str] = set()
        while True:
            sessions = await self._inner.list_sessions(tenant, limit=500, offset=offset)
            for info in sessions:
                users.add(info.key.user)
                after = 0
                while True:
                    batch = await self._inner.read_since(info.key, after, limit=1000)
                    for m in batch:
                        s = _sealed_part(m.content)
                        if s:
                            note(_unb32(s[len(MARKER):]))
                    if len(batch) < 1000:
                        break
                    after = batch[-1].seq
                for name in await self._inner.list_states(info.key):
                    raw = await self._inner.get_state(info.key, name)
                    if raw is not None and _is_sealed_json(raw.data):
                        note(base64.b64decode(raw.data[_JSON_FIELD]))
            if len(sessions) < 500:
                break
            offset += 500
        users.update(await self._inner.list_users(tenant, limit=1_000_000))
        for user in users:
            for f in await self._inner.list_facts(tenant, user, include_superseded=True):
                s = _sealed_part(f.text)
                if s:
                    note(_unb32(s[len(MARKER):]))
        return dict(sorted(used.items()))
