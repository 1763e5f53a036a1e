"""PII redaction: a generated corpus of valid card numbers (Luhn), IBANs (mod-97), emails and national
identifiers, mixed with near-misses that fail their checksum and must be left alone. With the
redaction layer on, none of the valid values reaches the SQLite file, the embedder, or the
extraction model (a real ``amber.learn.Learner`` with AutoGen's ReplayChatCompletionClient standing
in for the model -- no LLM is reachable here -- and a real ``amber.recall.Recall``)."""

from __future__ import annotations

import os
import random
import string

import pytest

import amber
from amber import NewFact, NewMessage, SessionKey
from amber.governance import EncryptionConfig, FileKeyRing, LocalKeyProvider, Redactor, redacting_embedder
from amber.governance.redact import bsn_valid, iban_valid, luhn_valid

# -- the generator -------------------------------------------------------------------------------
_CARD_PREFIXES = ["4", "51", "55", "2221", "34", "37", "6011"]


def _luhn_check_digit(body: str) -> str:
    for d in "0123456789":
        if luhn_valid(body + d):
            return d
    raise AssertionError


def card(rng: random.Random, *, valid: bool = True) -> str:
    prefix = rng.choice(_CARD_PREFIXES)
    length = 15 if prefix in ("34", "37") else 16
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = _luhn_check_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    number = body + check
    sep = rng.choice(["", " ", "-"])
    return sep.join(number[i:i + 4] for i in range(0, len(number), 4)) if sep else number


_IBAN_FORMATS = {"NL": ("A4", "N10"), "DE": ("N18",), "GB": ("A4", "N14"), "FR": ("N23",), "BE": ("N12",)}


def iban(rng: random.Random, *, valid: bool = True) -> str:
    country = rng.choice(sorted(_IBAN_FORMATS))
    bban = "".join(
        "".join(rng.choice(string.ascii_uppercase if part[0] == "A" else string.digits) for _ in range(int(part[1:])))
        for part in _IBAN_FORMATS[country]
    )
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = (check + rng.randint(1, 96)) % 97 or 1
        if iban_valid(f"{country}{check:02d}{bban}"):
            check = (check % 96) + 1
    value = f"{country}{check:02d}{bban}"
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value


def email(rng: random.Random) -> str:
    local = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
    return f"{local}.{rng.choice(['x', 'jr', 'de'])}@{rng.choice(['example.com', 'bank.co.uk', 'mail.nl'])}"


def near_miss_email(rng: random.Random) -> str:
    local = "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
    return rng.choice([f"{local}@localhost", f"{local} at example dot com", f"@{local}"])


def bsn(rng: random.Random, *, valid: bool = True) -> str:
    while True:
        digits = "".join(rng.choice(string.digits) for _ in range(9))
        if bsn_valid(digits) == valid and digits[0] != "0":
            return digits


def corpus(n: int, seed: int = 7) -> tuple[list[str], set[str], set[str]]:
    """``n`` sentences; the PII values that must be redacted; the near-misses that must survive."""
    rng = random.Random(seed)
    texts, secrets, near = [], set(), set()
    for i in range(n):
        c, ib, e = card(rng), iban(rng), email(rng)
        bad_c, bad_ib, bad_e = card(rng, valid=False), iban(rng, valid=False), near_miss_email(rng)
        secrets.update({c, ib, e})
        near.update({bad_c, bad_ib})
        template = rng.choice([
            "Please charge my card {c} and refund to {ib}; mail me at {e}. Old card {bad_c}, ref {bad_ib}, {bad_e}.",
            "My email is {e}, my IBAN {ib}. The number {bad_c} is an order id, not a card. Card: {c}. {bad_ib}",
            "{e} here: card number {c}, account {ib} (the reference {bad_ib} and {bad_c} are unrelated)",
        ])
        texts.append(template.format(c=c, ib=ib, e=e, bad_c=bad_c, bad_ib=bad_ib, bad_e=bad_e))
    return texts, secrets, near


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isalnum()).upper()


def _leaks(blob: str, secrets: set[str]) -> list[str]:
    """Secrets found in ``blob``, in any spacing (a card reformatted without spaces still counts)."""
    compact = _digits(blob)
    lowered = blob.lower()
    return [s for s in secrets if ("@" in s and s.lower() in lowered) or ("@" not in s and _digits(s) in compact)]


# -- the detectors -------------------------------------------------------------------------------
def test_generator_makes_what_it_claims() -> None:
    rng = random.Random(1)
    for _ in range(200):
        assert luhn_valid(_digits(card(rng))) and not luhn_valid(_digits(card(rng, valid=False)))
        assert iban_valid(iban(rng)) and not iban_valid(iban(rng, valid=False))
        assert bsn_valid(bsn(rng)) and not bsn_valid(bsn(rng, valid=False))


def test_every_valid_value_is_redacted_and_no_near_miss_is() -> None:
    texts, secrets, near = corpus(300)
    r = Redactor()
    out = [r.redact(t) for t in texts]
    assert _leaks("\n".join(out), secrets) == []
    kept = "\n".join(out)
    assert all(n in kept for n in near), [n for n in near if n not in kept][:5]
    assert sum(o.count("[CARD]") for o in out) == 300 and sum(o.count("[IBAN]") for o in out) == 300
    assert sum(o.count("[EMAIL]") for o in out) == 300


@pytest.mark.parametrize("text, entity", [
    ("ssn 123-45-6789 on file", "US_SSN"),
    ("NINO AB 12 34 56 C please", "UK_NINO"),
    ("mijn BSN is 111222333", "NL_BSN"),
    ("call +44 20 7946 0958 tomorrow", "PHONE"),
    ("call (555) 123-4567 tomorrow", "PHONE"),
    ("bel 06-12345678 vandaag", "PHONE"),
])
def test_national_identifiers_and_phones(text: str, entity: str) -> None:
    assert f"[{entity}]" in Redactor().redact(text)


@pytest.mark.parametrize("text", [
    "ssn 666-45-6789 is not valid", "ssn 123-00-6789 neither", "NINO BG 12 34 56 C is excluded",
    "mijn BSN is 111222334", "order 111222333 shipped",  # valid 11-test but no BSN keyword
    "on 2024-01-15 at 10:30", "version 1.2.3.4", "claim C-7788",
])
def test_near_misses_are_left_alone(text: str) -> None:
    assert Redactor().redact(text) == text


def test_actions_per_entity_and_per_tenant() -> None:
    key = os.urandom(32)
    r = Redactor({"EMAIL": "mask", "CARD": "hash"}, tenants={"acme": {"EMAIL": "keep", "CARD": "redact"}},
                 hash_key=key)
    text = "jane.doe@example.com paid with 4242 4242 4242 4242"
    assert r.redact(text) .startswith("j***@example.com paid with [CARD:")
    assert r.redact("4242424242424242") == r.redact("4242-4242-4242-4242")  # hash of the normalised value
    assert Redactor({"CARD": "hash"}, hash_key=os.urandom(32)).redact("4242424242424242") != r.redact("4242424242424242")
    assert r.redact(text, "acme") == "jane.doe@example.com paid with [CARD]"
    assert Redactor({"CARD": "mask"}).redact("card 4242 4242 4242 4242") == "card **** **** **** 4242"
    with pytest.raises(amber.InvalidInput):
        Redactor({"CARD": "hash"})  # an unkeyed hash of a card number is reversible by enumeration
    with pytest.raises(amber.InvalidInput):
        Redactor({"CARD": "shred"})


# -- end to end: store, learner (extraction model), embedder, recall ------------------------------
class RecordingEmbedder:
    """The real offline hashing embedder, recording every text it is given."""

    def __init__(self) -> None:
        from amber.embed import open_embedder

        self._inner = open_embedder("hash:64")
        self.name, self.dim = self._inner.name, self._inner.dim
        self.seen: list[str] = []

    async def embed(self, texts):
        self.seen.extend(texts)
        return await self._inner.embed(texts)


def _recording_model(n: int):
    """AutoGen's ReplayChatCompletionClient (a deterministic stand-in: no LLM is reachable), recording
    every prompt it is sent."""
    from autogen_ext.models.replay import ReplayChatCompletionClient

    class Recording(ReplayChatCompletionClient):
        seen: list[str] = []

        async def create(self, messages, **kwargs):
            Recording.seen.extend(str(getattr(m, "content", m)) for m in messages)
            return await super().create(messages, **kwargs)

    Recording.seen = []
    return Recording(['{"facts": []}'] * n)


@pytest.mark.parametrize("encrypted", [False, True])
async def test_no_raw_pii_reaches_store_embedder_or_model(tmp_path, encrypted: bool) -> None:
    from amber.learn import Learner, ModelExtractor, RuleExtractor
    from amber.recall import Recall

    texts, secrets, near = corpus(40, seed=11)
    db = tmp_path / "amber.db"
    encryption = None
    if encrypted:
        encryption = EncryptionConfig(provider=LocalKeyProvider([os.urandom(32)]),
                                      keyring=FileKeyRing(tmp_path / "keyring.json"), vectors="plaintext")
    redactor = Redactor()
    store = await amber.open_store(f"sqlite:///{db}", redaction=redactor, encryption=encryption)
    embedder = RecordingEmbedder()
    model = _recording_model(len(texts))
    key = SessionKey("bank", "cust-1", "t")
    try:
        await store.append(key, [NewMessage("user", t, payload={"content": t}, metadata={"raw": t}) for t in texts])
        await store.record_fact("bank", "cust-1", NewFact("email", texts[0], f"contact: {texts[0]}"))
        await store.put_state(key, "agent", {"history": texts[:5]})
        learner = Learner(store, extractor=ModelExtractor(model), embedder=embedder)
        assert await learner.drain() == len(texts)
        rules = Learner(store, extractor=RuleExtractor(), embedder=embedder)
        await store.append(key, [NewMessage("user", f"my email is {email(random.Random(3))}")])
        await rules.drain()
        recall = Recall(store, embedder=redacting_embedder(embedder, redactor))
        hits = await recall.search("bank", "cust-1", f"what card? {texts[1]}", limit=5)
        assert hits
        assert len(model.seen) >= len(texts) and len(embedder.seen) > len(texts)
        assert _leaks("\n".join(model.seen), secrets) == []
        assert _leaks("\n".join(embedder.seen), secrets) == []
        stored = await store.read_since(key)
        blob = "\n".join(f"{m.content} {m.payload} {m.metadata}" for m in stored)
        blob += "\n".join(f"{f.text} {f.value} {f.attribute}" for f in await store.list_facts("bank", "cust-1"))
        blob += str((await store.get_state(key, "agent")).data) + "\n".join(h.text for h in hits)
        assert _leaks(blob, secrets) == []
        assert sum(n in blob for n in near) == len(near)  # near-misses are kept, not over-redacted
    finally:
        await store.close()
    raw = b"".join(open(p, "rb").read() for p in (str(db), f"{db}-wal") if os.path.exists(p)).decode("latin-1")
    assert _leaks(raw, {s for s in secrets if "@" in s}) == []
    for s in list(secrets)[:50]:  # cards and IBANs in the printed and the compact form
        assert s not in raw and s.replace(" ", "").replace("-", "") not in raw


# -- restore: the policy applies to an import as to any write --------------------------------------
async def test_restore_is_redacted_and_a_redacted_export_round_trips_exactly(tmp_path) -> None:
    from amber.store.base import digest
    from amber.transfer import export_jsonl, import_jsonl

    rng = random.Random(11)
    secret_card, secret_mail = card(rng), email(rng)
    plain = await amber.open_store(f"sqlite:///{tmp_path / 'plain.db'}")
    redacted = await amber.open_store(f"sqlite:///{tmp_path / 'redacted.db'}", redaction=Redactor())
    try:
        key = SessionKey("acme", "u", "t")
        for s in (plain, redacted):
            (m,) = await s.append(key, [NewMessage("user", f"card {secret_card}, mail {secret_mail}",
                                                   metadata={"from": secret_mail}, idempotency_key="k1")])
            await s.record_fact("acme", "u", NewFact("email", secret_mail, f"email is {secret_mail}",
                                                     source_message_ids=(m.id,)))
            await s.put_state(key, "agent", {"note": secret_card})
        # an export of unredacted data imported through the redacting layer: redacted on the way in
        unredacted = [line async for line in export_jsonl(plain, "acme")]
        report = await import_jsonl(redacted, "copy", unredacted)
        assert report.warnings == []
        copy = SessionKey("copy", "u", "t")
        (restored,) = await redacted.read_since(copy)
        assert secret_card not in restored.content and secret_mail not in repr(restored.metadata)
        assert restored.content_hash == digest(restored.role, restored.content, None)  # no hash of the PII
        (fact,) = await redacted.list_facts("copy", "u")
        assert secret_mail not in fact.value + fact.text
        assert secret_card not in repr((await redacted.get_state(copy, "agent")).data)
        # the redacting store's own export (already redacted) comes back byte for byte
        own = [line async for line in export_jsonl(redacted, "acme")]
        await redacted.delete_user("acme", "u")
        assert (await import_jsonl(redacted, "acme", own, exact=True)).id_map == {}
        assert [line async for line in export_jsonl(redacted, "acme")][1:] == own[1:]
    finally:
        await plain.close()
        await redacted.close()
    assert secret_card.encode() not in open(tmp_path / "redacted.db", "rb").read()
