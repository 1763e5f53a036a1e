"""PII redaction before anything is stored, embedded or sent to an extraction model.

:class:`RedactingStore` is the outermost Store layer: it rewrites message content, payload and
metadata strings, fact fields and (by default) state blobs at ``append`` / ``record_fact`` /
``put_state``. Everything downstream -- the backend, the cache, the learner and its extraction
model, the embedder -- reads the store, so it only ever sees redacted text. The one input that
does not pass through the store is a recall *query*: wrap the query embedder with
:func:`redacting_embedder` (and search queries are redacted by the layer itself, so a keyed
``hash`` action still finds the same value).

Built-in detectors (each validated, so near-misses are left alone):

=========  =========================================================================
EMAIL      addresses with a dotted domain and an alphabetic TLD
PHONE      +country numbers, (area) numbers, US 3-3-4, and national numbers with a
           trunk 0; 8-15 digits; no checksum exists, so this is the least precise one
CARD       13-19 digit payment card numbers with a known issuer prefix, Luhn-checked
IBAN       country code + check digits + BBAN, length per country, ISO 7064 mod-97
US_SSN     AAA-GG-SSSS with the SSA rules (no 000/666/9xx area, 00 group, 0000 serial)
UK_NINO    two-letter prefix with HMRC's excluded letters and pairs, six digits, A-D
NL_BSN     nine digits passing the "11-test", only next to a BSN/sofinummer keyword
           (one random number in eleven passes the test, so the keyword is required)
=========  =========================================================================

Actions per entity, per tenant: ``redact`` ("[EMAIL]"), ``mask`` (last four characters kept:
"**** **** **** 4242", "j***@example.com"), ``hash`` (a keyed HMAC token, "[EMAIL:k4f...]": the
same value always gives the same token, so it can still be matched, but not reversed without the
key) or ``keep``. Plug in another detector (e.g. :class:`PresidioDetector`) with ``detectors=``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Iterable, Literal, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import InvalidInput, MissingDependency
from ..keys import SessionKey
from ..records import Fact, Message, NewFact, NewMessage, SessionInfo, StateBlob
from ..store.base import Store, digest, encode_json
from ..store.delegating import DelegatingStore

__all__ = [
    "Finding",
    "Detector",
    "Redactor",
    "RedactingStore",
    "redacting_embedder",
    "default_detectors",
    "PresidioDetector",
    "luhn_valid",
    "iban_valid",
    "bsn_valid",
    "ENTITIES",
]

Action = Literal["redact", "mask", "hash", "keep"]
ACTIONS = ("redact", "mask", "hash", "keep")
ENTITIES = ("EMAIL", "PHONE", "CARD", "IBAN", "US_SSN", "UK_NINO", "NL_BSN")


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str
    start: int
    end: int
    priority: int = 50  # higher wins when findings overlap (checksummed beats pattern-only)


@runtime_checkable
class Detector(Protocol):
    def find(self, text: str) -> Iterable[Finding]: ...


# -- checksums -----------------------------------------------------------------------------------
def luhn_valid(digits: str) -> bool:
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# IBAN lengths (SWIFT registry) of the countries most likely in our users' data; others: 15-34.
IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26,
    "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28,
    "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26,
}


def iban_valid(iban: str) -> bool:
    iban = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def bsn_valid(digits: str) -> bool:
    """The Dutch BSN "11-test": 9*d1 + 8*d2 + ... + 2*d8 - 1*d9 is divisible by 11 (and not 0)."""
    if len(digits) != 9 or not digits.isdigit() or digits == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1))) - int(digits[8])
    return total % 11 == 0


# -- detectors -----------------------------------------------------------------------------------
class RegexDetector:
    """Findings of ``pattern`` (group ``group``) that ``check`` accepts."""

    def __init__(self, entity: str, pattern: str, *, check: Any = None, group: int = 0, priority: int = 50,
                 flags: int = 0) -> None:
        self.entity = entity
        self.pattern = re.compile(pattern, flags)
        self.check = check
        self.group = group
        self.priority = priority

    def find(self, text: str) -> Iterable[Finding]:
        for m in self.pattern.finditer(text):
            value = m.group(self.group)
            if self.check is None or self.check(value):
                yield Finding(self.entity, m.start(self.group), m.end(self.group), self.priority)


_CARD_PREFIX = re.compile(r"^(4|5[1-5]|2[2-7]|3[47]|3[0689]|35|6011|64[4-9]|65|62)")


def _card_ok(raw: str) -> bool:
    digits = re.sub(r"[ -]", "", raw)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_valid(digits)


class IbanDetector:
    """IBANs, compact or printed in groups of four; the length is taken from the country table, so
    a following word is never swallowed into the candidate."""

    _START = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})(\d{2})")

    def find(self, text: str) -> Iterable[Finding]:
        for m in self._START.finditer(text):
            country = m.group(1).upper()
            # collect up to 30 BBAN characters, allowing single spaces between them
            chars: list[tuple[str, int]] = []
            i = m.end()
            while i < len(text) and len(chars) < 30:
                ch = text[i]
                if ch.isascii() and ch.isalnum():
                    chars.append((ch, i))
                    i += 1
                elif ch == " " and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum():
                    i += 1
                else:
                    break
            lengths = [IBAN_LENGTHS[country] - 4] if country in IBAN_LENGTHS else range(min(30, len(chars)), 10, -1)
            for n in lengths:
                if n > len(chars):
                    continue
                end = chars[n - 1][1] + 1
                if end < len(text) and text[end].isascii() and text[end].isalnum():
                    continue  # the candidate would stop in the middle of a word
                if iban_valid(m.group(0) + "".join(c for c, _ in chars[:n])):
                    yield Finding("IBAN", m.start(), end, 90)
                    break


def _ssn_ok(raw: str) -> bool:
    area, group, serial = re.split(r"[- ]", raw)
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


_NINO_BAD_PAIRS = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _nino_ok(raw: str) -> bool:
    return raw[:2].upper() not in _NINO_BAD_PAIRS


def default_detectors() -> list[Detector]:
    return [
        RegexDetector("EMAIL", r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                               r"[A-Za-z]{2,24}(?![\w-])", priority=80),
        RegexDetector("CARD", r"(?<![\w-])(?<!\d[ .-])\d(?:[ -]?\d){12,18}(?![\d])", check=_card_ok, priority=90),
        IbanDetector(),
        RegexDetector("US_SSN", r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])", check=_ssn_ok, priority=85),
        RegexDetector("UK_NINO", r"(?<![A-Za-z0-9])[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
                                 r"(?![A-Za-z0-9])", check=_nino_ok, priority=85),
        RegexDetector("NL_BSN", r"(?i:\b(?:bsn|burgerservicenummer|sofi-?nummer)\b)\D{0,20}?(\d{9}|\d{4}\.\d{2}\.\d{3})"
                                r"(?!\d)", check=lambda v: bsn_valid(v.replace(".", "")), group=1, priority=85),
        RegexDetector("PHONE", r"(?<![\w+])(?<!\w[.-])(?<!\d )(?<![A-Z0-9]{4} )(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
                               r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
                               r"|\d{3}[.-]\d{3}[.-]\d{4}"
                               r"|0\d{1,4}(?:[ .-]?\d{2,4}){2,4}|0\d{8,10})(?![\w])",
                      check=lambda v: 8 <= sum(c.isdigit() for c in v) <= 15 and not re.fullmatch(
                          r"\d{4}-\d{2}-\d{2}", v), priority=40),
    ]


class PresidioDetector:
    """Findings from a Microsoft Presidio ``AnalyzerEngine`` you construct (extra ``[presidio]``).

    Presidio's NER needs a spaCy language model that is downloaded separately; Amber never
    downloads, so the engine (and its model) is yours to build and pass in.
    """

    def __init__(self, analyzer: Any = None, *, entities: Mapping[str, str] | None = None,
                 language: str = "en", score_threshold: float = 0.5) -> None:
        if analyzer is None:
            try:
                from presidio_analyzer import AnalyzerEngine
            except ImportError as exc:
                raise MissingDependency("presidio-analyzer", "presidio") from exc
            analyzer = AnalyzerEngine()
        self.analyzer = analyzer
        # Presidio entity -> Amber entity name (others keep Presidio's name)
        self.entities = dict(entities or {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE",
                                          "CREDIT_CARD": "CARD", "IBAN_CODE": "IBAN", "US_SSN": "US_SSN"})
        self.language = language
        self.score_threshold = score_threshold

    def find(self, text: str) -> Iterable[Finding]:
        for r in self.analyzer.analyze(text=text, language=self.language, score_threshold=self.score_threshold):
            yield Finding(self.entities.get(r.entity_type, r.entity_type), r.start, r.end, 30)


# -- the redactor ----------------------------------------------------------------------------------
def _mask(entity: str, value: str) -> str:
    if entity == "EMAIL":
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    alnum = [i for i, c in enumerate(value) if c.isalnum()]
    keep = set(alnum[-4:])
    return "".join(c if (i in keep or not c.isalnum()) else "*" for i, c in enumerate(value))


def _normalise(entity: str, value: str) -> str:
    if entity == "EMAIL":
        return value.lower()
    return re.sub(r"[^0-9A-Za-z]", "", value).upper()


class Redactor:
    """Finds PII with ``detectors`` and applies an action per entity: ``policy`` for every tenant,
    overridden per tenant by ``tenants`` (``{"acme": {"EMAIL": "hash"}}``). Entities a policy does
    not name get ``default``. ``hash_key`` (32+ random bytes) is required for the ``hash`` action.
    """

    def __init__(
        self,
        policy: Mapping[str, Action] | None = None,
        *,
        tenants: Mapping[str, Mapping[str, Action]] | None = None,
        default: Action = "redact",
        detectors: Sequence[Detector] | None = None,
        hash_key: bytes | None = None,
        redact_state: bool = True,
    ) -> None:
        self.policy = dict(policy or {})
        self.tenants = {t: dict(p) for t, p in (tenants or {}).items()}
        self.default = default
        self.detectors = list(detectors) if detectors is not None else default_detectors()
        self.hash_key = hash_key
        self.redact_state = redact_state
        for p in [self.policy, *self.tenants.values(), {"*": default}]:
            for entity, action in p.items():
                if action not in ACTIONS:
                    raise InvalidInput(f"unknown redaction action {action!r} for {entity}; use one of {ACTIONS}")
                if action == "hash" and not hash_key:
                    raise InvalidInput("the 'hash' action needs hash_key (random bytes kept secret): "
                                       "an unkeyed hash of a card number or email is trivially reversed")
        if hash_key is not None and len(hash_key) < 16:
            raise InvalidInput("hash_key must be at least 16 random bytes")

    def action(self, entity: str, tenant: str | None = None) -> Action:
        if tenant is not None and entity in self.tenants.get(tenant, {}):
            return self.tenants[tenant][entity]  # type: ignore[return-value]
        return self.policy.get(entity, self.default)  # type: ignore[return-value]

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings, higher priority first on overlap, in text order."""
        found = [f for d in self.detectors for f in d.find(text) if f.end > f.start]
        found.sort(key=lambda f: (-f.priority, f.start, -(f.end - f.start)))
        taken: list[Finding] = []
        for f in found:
            if all(f.end <= t.start or f.start >= t.end for t in taken):
                taken.append(f)
        return sorted(taken, key=lambda f: f.start)

    def _replacement(self, entity: str, value: str, action: Action) -> str:
        if action == "keep":
            return value
        if action == "mask":
            return _mask(entity, value)
        if action == "hash":
            assert self.hash_key is not None
            mac = hmac.new(self.hash_key, f"{entity}\x1f{_normalise(entity, value)}".encode(), hashlib.sha256)
            return f"[{entity}:{base64.b32encode(mac.digest()[:10]).decode().lower()}]"
        return f"[{entity}]"

    def redact(self, text: str, tenant: str | None = None) -> str:
        if not isinstance(text, str) or not text:
            return text
        out: list[str] = []
        pos = 0
        for f in self.find(text):
            out.append(text[pos:f.start])
            out.append(self._replacement(f.entity, text[f.start:f.end], self.action(f.entity, tenant)))
            pos = f.end
        out.append(text[pos:])
        return "".join(out)

    def redact_json(self, value: Any, tenant: str | None = None) -> Any:
        """Every string in a JSON value redacted (keys included: they may be user-provided too)."""
        if isinstance(value, str):
            return self.redact(value, tenant)
        if isinstance(value, Mapping):
            return {self.redact(str(k), tenant): self.redact_json(v, tenant) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_json(v, tenant) for v in value]
        return value


class RedactingStore(DelegatingStore):
    """Redacts what is written; reads pass through (they can only return what was redacted)."""

    def __init__(self, inner: Store, redactor: Redactor, *, close_inner: bool = True) -> None:
        super().__init__(inner, close_inner=close_inner)
        self.redactor = redactor

    @classmethod
    async def wrap(cls, inner: Store, redactor: Redactor, **options: Any) -> "RedactingStore":
        return cls(inner, redactor, **options)

    def _message(self, tenant: str, m: NewMessage) -> NewMessage:
        if not isinstance(m, NewMessage) or not isinstance(m.content, str):
            return m  # the layer below refuses it with the usual error
        r = self.redactor
        return replace(
            m,
            content=r.redact(m.content, tenant),
            payload=None if m.payload is None else r.redact_json(m.payload, tenant),
            metadata=r.redact_json(m.metadata, tenant) if isinstance(m.metadata, Mapping) else m.metadata,
        )

    async def append(self, key: SessionKey, messages: Sequence[NewMessage]) -> list[Message]:
        return await self._inner.append(key, [self._message(key.tenant, m) for m in messages])

    def _fact(self, tenant: str, fact: Any) -> Any:
        r = self.redactor
        return replace(
            fact,
            attribute=r.redact(fact.attribute, tenant),
            value=r.redact(fact.value, tenant),
            text=r.redact(fact.text, tenant),
            metadata=r.redact_json(fact.metadata, tenant) if isinstance(fact.metadata, Mapping) else fact.metadata,
        )

    async def record_fact(self, tenant: str, user: str, fact: NewFact, *, supersedes: Sequence[str] = (),
                          expect_current: Sequence[str] | None = None, superseded_by: str | None = None) -> Fact:
        if isinstance(fact, NewFact):
            fact = self._fact(tenant, fact)
        return await self._inner.record_fact(tenant, user, fact, supersedes=supersedes, expect_current=expect_current,
                                             superseded_by=superseded_by)

    async def correct_message(
        self, key: SessionKey, message_id: str, content: str, *, reason: str | None = None
    ) -> Message:
        """A correction is a write like append: its content and reason are redacted."""
        if isinstance(content, str):
            content = self.redactor.redact(content, key.tenant)
        if isinstance(reason, str):
            reason = self.redactor.redact(reason, key.tenant)
        return await self._inner.correct_message(key, message_id, content, reason=reason)

    # A restore is a write like any other: the policy applies to it (no bypass by export/import).
    # Redacting text that was redacted already changes nothing, so a round trip of this store's own
    # export stays exact; where it does change a message, its content hash is recomputed, so the
    # audit trail never keeps a hash of the unredacted text.
    async def restore_session(
        self, key: SessionKey, messages: Sequence[Message], states: Sequence[StateBlob] = (), *,
        created_at: datetime | None = None, updated_at: datetime | None = None, last_seq: int | None = None,
    ) -> SessionInfo | None:
        redacted = []
        for m in messages:
            if isinstance(m, Message) and isinstance(m.content, str):
                new = self._message(key.tenant, NewMessage(
                    role=m.role, content=m.content, payload=m.payload, payload_format=m.payload_format,
                    author=m.author, idempotency_key=m.idempotency_key, created_at=m.created_at, metadata=m.metadata))
                changed = (new.content, new.payload, new.metadata) != (m.content, m.payload, m.metadata)
                m = replace(m, content=new.content, payload=new.payload, metadata=new.metadata)
                if changed:
                    payload = None if m.payload is None else encode_json(dict(m.payload), "payload")
                    m = replace(m, content_hash=digest(m.role, m.content, payload))
            redacted.append(m)
        if self.redactor.redact_state:
            states = [replace(b, data=self.redactor.redact_json(b.data, key.tenant))
                      if isinstance(b, StateBlob) and isinstance(b.data, Mapping) else b for b in states]
        return await self._inner.restore_session(key, redacted, states, created_at=created_at,
                                                 updated_at=updated_at, last_seq=last_seq)

    async def restore_facts(self, tenant: str, user: str, facts: Sequence[Fact]) -> None:
        await self._inner.restore_facts(tenant, user, [self._fact(tenant, f) if isinstance(f, Fact) else f
                                                       for f in facts])

    async def put_state(
        self, key: SessionKey, name: str, data: Mapping[str, Any], *, expected_version: int | None = None
    ) -> StateBlob:
        if self.redactor.redact_state and isinstance(data, Mapping):
            data = self.redactor.redact_json(data, key.tenant)
        return await self._inner.put_state(key, name, data, expected_version=expected_version)

    async def search_text(self, tenant: str, user: str, query: str, *, limit: int = 20,
                          kinds: Sequence[str] = ("message", "fact")) -> list[Any]:
        # Redacted the same way as the stored text, so a hashed value still matches its token.
        q = self.redactor.redact(query, tenant) if isinstance(query, str) else query
        return await self._inner.search_text(tenant, user, q, limit=limit, kinds=kinds)


class _RedactingEmbedder:
    def __init__(self, embedder: Any, redactor: Redactor, tenant: str | None) -> None:
        self._embedder = embedder
        self._redactor = redactor
        self._tenant = tenant
        self.name = embedder.name
        self.dim = getattr(embedder, "dim", 0)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await self._embedder.embed([self._redactor.redact(t, self._tenant) for t in texts])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


def redacting_embedder(embedder: Any, redactor: Redactor, *, tenant: str | None = None) -> Any:
    """``embedder`` with every text redacted first (same ``name``, so vectors stay comparable). For
    the recall query path, which embeds the caller's query without passing through the store."""
    return _RedactingEmbedder(embedder, redactor, tenant)
