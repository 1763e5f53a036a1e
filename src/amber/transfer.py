"""Export and import a tenant's memory as JSON Lines, over the public Store contract only.

One document per line, in this order::

    {"type": "header", "format": "amber.export/1", "scope": {...}, "exported_at": ...}
    {"type": "session", "user": ..., "thread": ..., ...}      then that session's
    {"type": "message", "seq": 1, "idempotency_key": ..., ...} messages, oldest first, and
    {"type": "state", "name": ..., "version": ..., "data": ...} its state blobs
    {"type": "fact", "id": ..., "valid_to": ..., "superseded_by": ..., ...}   (history included)
    {"type": "end", "counts": {...}}

Records carry no tenant: an import lands in the tenant it is given (for the server, the caller's).
The trailing ``end`` record lets an import refuse a truncated file before writing anything.

Import into an empty target is exact: each session goes in through ``Store.restore_session`` and
each user's facts through ``Store.restore_facts``, which write the records with their exported
identity -- message ids, seqs, created_at, content hashes and idempotency keys (so a retried append
after the restore is still a no-op), state versions and updated_at, session created_at/updated_at/
last_seq, fact ids, validity, supersession and created_at. Re-exporting gives the same lines, byte
for byte, but the header's ``exported_at``. :data:`NOT_PRESERVED` is therefore empty for such an
import. Vectors are not exported: the restored messages are queued for the learner like appended
ones, and it re-embeds them (their facts, restored with the same source ids, are not learned twice).

Where the target already holds the session (or the user's facts), the import merges instead, as
before: messages are appended (deduplicated by idempotency key, numbered after what is there),
existing state is not overwritten, facts are recorded anew unless the same fact exists; new ids are
reported in ``ImportReport.id_map`` and provenance is rewritten with them. The same happens, with a
warning, when an empty target cannot take the exported ids (e.g. a copy into another tenant of the
same SQLite file, where ids are unique file-wide). ``exact=True`` refuses instead of merging.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, AsyncIterable, AsyncIterator, Iterable, Mapping

from .errors import AmberError, Conflict, InvalidInput
from .keys import SessionKey, validate_part
from .records import Fact, Message, NewFact, NewMessage, StateBlob, utcnow
from .store.base import Store, prepare_fact, prepare_message

__all__ = ["FORMAT", "NOT_PRESERVED", "ImportReport", "export_jsonl", "import_jsonl", "export_records", "jsonable", "restore_jsonl"]

FORMAT = "amber.export/1"
# What an import into an empty target cannot keep: nothing (see the module docstring). A merge into
# a non-empty target assigns new ids, versions and times, as ImportReport.id_map and warnings tell.
NOT_PRESERVED: dict[str, tuple[str, ...]] = {}
_PAGE = 500


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _message(m: Message) -> dict[str, Any]:
    return {
        "type": "message", "user": m.key.user, "thread": m.key.thread, "seq": m.seq, "id": m.id,
        "role": m.role, "content": m.content, "payload": m.payload, "payload_format": m.payload_format,
        "author": m.author, "idempotency_key": m.idempotency_key, "created_at": _ts(m.created_at),
        "metadata": dict(m.metadata), "tokens": m.tokens, "content_hash": m.content_hash,
    }


def _state(b: StateBlob) -> dict[str, Any]:
    return {"type": "state", "user": b.key.user, "thread": b.key.thread, "name": b.name,
            "version": b.version, "data": dict(b.data), "updated_at": _ts(b.updated_at)}


def _fact(f: Fact) -> dict[str, Any]:
    return {
        "type": "fact", "user": f.user, "id": f.id, "attribute": f.attribute, "value": f.value,
        "text": f.text, "kind": f.kind, "source_message_ids": list(f.source_message_ids),
        "thread": f.thread, "confidence": f.confidence, "valid_from": _ts(f.valid_from),
        "valid_to": _ts(f.valid_to), "superseded_by": f.superseded_by, "created_at": _ts(f.created_at),
        "metadata": dict(f.metadata),
    }


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


async def _users(store: Store, tenant: str) -> list[str]:
    users: list[str] = []
    while True:
        page = await store.list_users(tenant, limit=_PAGE, offset=len(users))
        users.extend(page)
        if len(page) < _PAGE:
            return users


async def _sessions(store: Store, tenant: str, user: str) -> list[SessionKey]:
    keys: list[SessionKey] = []
    while True:
        page = await store.list_sessions(tenant, user, limit=_PAGE, offset=len(keys))
        keys.extend(s.key for s in page)
        if len(page) < _PAGE:
            # Oldest activity first is not guaranteed across pages; sort for a stable export.
            return sorted(set(keys), key=lambda k: k.thread)


async def _state_keys(store: Store, tenant: str, user: str | None) -> set[SessionKey]:
    keys: set[SessionKey] = set()
    for operation in ("state.put", "session.restore"):
        after = 0
        while True:
            events = await store.list_audit(tenant, user=user, operation=operation, limit=1000, after_id=after)
            keys.update(SessionKey(tenant, e.user, e.thread) for e in events if e.user and e.thread)
            if len(events) < 1000:
                break
            after = events[-1].id
    return keys


async def export_records(
    store: Store, tenant: str, *, user: str | None = None, thread: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The export as dicts (see :func:`export_jsonl` for the serialised form)."""
    validate_part("tenant", tenant)
    if user is not None:
        validate_part("user", user)
    if thread is not None:
        if user is None:
            raise InvalidInput("exporting one thread needs its user too")
        validate_part("thread", thread)
    yield {"type": "header", "format": FORMAT, "scope": {"user": user, "thread": thread},
           "exported_at": _ts(utcnow())}
    counts: dict[str, int] = defaultdict(int)
    # A session may hold state blobs and no messages yet; only the audit trail names those.
    state_only = await _state_keys(store, tenant, user)
    users = [user] if user is not None else sorted(set(await _users(store, tenant)) | {k.user for k in state_only})
    for u in users:
        if thread is not None:
            keys = [SessionKey(tenant, u, thread)]
        else:
            keys = await _sessions(store, tenant, u)
            keys = sorted(set(keys) | {k for k in state_only if k.user == u}, key=lambda k: k.thread)
        for key in keys:
            info = await store.get_session(key)
            if info is not None:
                yield {"type": "session", "user": key.user, "thread": key.thread,
                       "message_count": info.message_count, "last_seq": info.last_seq,
                       "created_at": _ts(info.created_at), "updated_at": _ts(info.updated_at)}
                counts["sessions"] += 1
            after = 0
            while True:
                page = await store.read_since(key, after, limit=_PAGE)
                for m in page:
                    yield _message(m)
                counts["messages"] += len(page)
                if len(page) < _PAGE:
                    break
                after = page[-1].seq
            for name in await store.list_states(key):
                blob = await store.get_state(key, name)
                if blob is not None:
                    yield _state(blob)
                    counts["states"] += 1
        facts = await store.list_facts(tenant, u, include_superseded=True)
        for f in sorted(facts, key=lambda f: (f.created_at, f.valid_from, f.id)):
            if thread is None or f.thread == thread:
                yield _fact(f)
                counts["facts"] += 1
    yield {"type": "end", "counts": dict(counts)}


async def export_jsonl(
    store: Store, tenant: str, *, user: str | None = None, thread: str | None = None
) -> AsyncIterator[str]:
    """Yield the tenant's memory (or one user's, or one thread's) as JSON lines, each ending in a newline.

    Facts of a user are exported with the user; with ``thread`` only facts learned in that thread."""
    async for record in export_records(store, tenant, user=user, thread=thread):
        yield _line(record)


# -- import ------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did. ``id_map`` maps the exported message and fact ids that were stored under
    another id (a merge) to the ids now stored; an exact restore keeps every id and adds none."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    warnings: list[str] = field(default_factory=list)
    id_map: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "warnings": list(self.warnings), "ids_remapped": len(self.id_map)}


def _bad(line_no: int, why: str) -> InvalidInput:
    return InvalidInput(f"import line {line_no}: {why}")


def _parse_ts(value: Any, line_no: int, name: str, *, optional: bool = False) -> datetime | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _bad(line_no, f"{name} must be an ISO-8601 timestamp")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _bad(line_no, f"{name} {value[:60]!r} is not an ISO-8601 timestamp") from exc
    if ts.tzinfo is None:
        raise _bad(line_no, f"{name} must carry a UTC offset")
    return ts


def _get(rec: Mapping[str, Any], name: str, kind: type | tuple[type, ...], line_no: int) -> Any:
    value = rec.get(name)
    if not isinstance(value, kind):
        raise _bad(line_no, f"{rec.get('type')} record needs {name!r}")
    return value


@dataclass
class _Parsed:
    # (seq, exported id, the message, exported content hash)
    messages: dict[SessionKey, list[tuple[int, str, NewMessage, str]]] = field(default_factory=lambda: defaultdict(list))
    # (key, name, data, exported version, exported updated_at)
    states: list[tuple[SessionKey, str, dict[str, Any], Any, datetime | None]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[SessionKey] = field(default_factory=list)
    # the exported session row: (created_at, updated_at, last_seq)
    session_rows: dict[SessionKey, tuple[datetime | None, datetime | None, Any]] = field(default_factory=dict)


async def _iterate(lines: Iterable[str | bytes] | AsyncIterable[str | bytes]) -> AsyncIterator[str | bytes]:
    if hasattr(lines, "__aiter__"):
        async for line in lines:  # type: ignore[union-attr]
            yield line
    else:
        for line in lines:  # type: ignore[union-attr]
            yield line


async def _parse(store: Store, tenant: str, lines: Iterable[str | bytes] | AsyncIterable[str | bytes]) -> _Parsed:
    """Read and validate every line before anything is written, so bad input loses nothing."""
    out = _Parsed()
    header = end = None
    line_no = 0
    async for raw in _iterate(lines):
        line_no += 1
        text = raw.decode("utf-8", errors="strict") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        if end is not None:
            raise _bad(line_no, "data after the end record")
        try:
            rec = json.loads(text)
        except ValueError as exc:
            raise _bad(line_no, f"not JSON ({exc.msg})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
            raise _bad(line_no, "expected a JSON object with a 'type'")
        kind = rec["type"]
        if header is None:
            if kind != "header" or rec.get("format") != FORMAT:
                raise _bad(line_no, f"not an Amber export (expected a header with format {FORMAT!r})")
            header = rec
            continue
        try:
            if kind == "session":
                key = SessionKey(tenant, rec.get("user"), rec.get("thread"))  # type: ignore[arg-type]
                out.sessions.append(key)
                out.session_rows[key] = (
                    _parse_ts(rec.get("created_at"), line_no, "created_at", optional=True),
                    _parse_ts(rec.get("updated_at"), line_no, "updated_at", optional=True),
                    rec.get("last_seq"))
            elif kind == "message":
                key = SessionKey(tenant, rec.get("user"), rec.get("thread"))  # type: ignore[arg-type]
                payload = rec.get("payload")
                metadata = rec.get("metadata") or {}
                if payload is not None and not isinstance(payload, dict):
                    raise _bad(line_no, "payload must be an object or null")
                if not isinstance(metadata, dict):
                    raise _bad(line_no, "metadata must be an object")
                msg = NewMessage(
                    role=_get(rec, "role", str, line_no), content=_get(rec, "content", str, line_no),
                    payload=payload, payload_format=_get(rec, "payload_format", str, line_no),
                    author=rec.get("author"), idempotency_key=_get(rec, "idempotency_key", str, line_no),
                    created_at=_parse_ts(rec.get("created_at"), line_no, "created_at"), metadata=metadata,
                )
                prepare_message(msg, store.limits)
                seq = _get(rec, "seq", int, line_no)
                out.messages[key].append((seq, str(rec.get("id") or ""), msg, str(rec.get("content_hash") or "")))
            elif kind == "state":
                key = SessionKey(tenant, rec.get("user"), rec.get("thread"))  # type: ignore[arg-type]
                data = _get(rec, "data", dict, line_no)
                out.states.append((key, _get(rec, "name", str, line_no), data, rec.get("version"),
                                   _parse_ts(rec.get("updated_at"), line_no, "updated_at", optional=True)))
            elif kind == "fact":
                validate_part("user", rec.get("user"))
                rec = dict(rec, _line=line_no,
                           _valid_from=_parse_ts(rec.get("valid_from"), line_no, "valid_from"),
                           _valid_to=_parse_ts(rec.get("valid_to"), line_no, "valid_to", optional=True),
                           _created_at=_parse_ts(rec.get("created_at"), line_no, "created_at", optional=True))
                sources = rec.get("source_message_ids") or []
                if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
                    raise _bad(line_no, "source_message_ids must be a list of strings")
                prepare_fact(_new_fact(rec, sources), store.limits)
                _get(rec, "id", str, line_no)
                out.facts.append(rec)
            elif kind == "end":
                end = rec
            else:
                raise _bad(line_no, f"unknown record type {kind!r}")
        except InvalidInput as exc:
            if exc.message.startswith("import line"):
                raise
            raise _bad(line_no, exc.message) from exc
        except (TypeError, ValueError) as exc:
            raise _bad(line_no, str(exc)) from exc
    if header is None:
        raise InvalidInput("import: empty input (expected an Amber export)")
    if end is None:
        raise InvalidInput("import: the file ends without its end record (truncated?); nothing was imported")
    expected = end.get("counts") or {}
    got = {"sessions": len(out.sessions), "messages": sum(len(v) for v in out.messages.values()),
           "states": len(out.states), "facts": len(out.facts)}
    for name, n in got.items():
        if int(expected.get(name, 0)) != n:
            raise InvalidInput(f"import: the end record promises {expected.get(name, 0)} {name}, the file holds {n}")
    return out


def _new_fact(rec: Mapping[str, Any], sources: list[str]) -> NewFact:
    return NewFact(
        attribute=rec.get("attribute"), value=rec.get("value"), text=rec.get("text"),  # type: ignore[arg-type]
        kind=rec.get("kind") or "statement", source_message_ids=tuple(sources), thread=rec.get("thread"),
        confidence=float(rec.get("confidence", 1.0)), valid_from=rec["_valid_from"],
        metadata=rec.get("metadata") or {},
    )


async def import_jsonl(
    store: Store, tenant: str, lines: Iterable[str | bytes] | AsyncIterable[str | bytes], *, exact: bool = False
) -> ImportReport:
    """Import an export into ``tenant``. Validates the whole input first. A session (or a user's
    facts) the target does not hold yet is restored exactly, with its exported ids, seqs, versions
    and times; one it holds already is merged (messages dedupe by idempotency key, facts by
    (attribute, value, text, valid_from), existing state is never overwritten: a warning says so),
    so re-running an import is a no-op. ``exact=True``: refuse with :class:`~amber.errors.Conflict`,
    before writing anything, if any session or user's facts are already there."""
    validate_part("tenant", tenant)
    parsed = await _parse(store, tenant, lines)
    report = ImportReport()
    keys = list(dict.fromkeys([*parsed.sessions, *parsed.messages, *(k for k, *_ in parsed.states)]))
    states: dict[SessionKey, list[tuple[str, dict[str, Any], Any, datetime | None]]] = defaultdict(list)
    for key, name, data, version, updated in parsed.states:
        states[key].append((name, data, version, updated))
    facts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in parsed.facts:
        facts[f["user"]].append(f)
    empty = {key: await store.get_session(key) is None and not await store.list_states(key) for key in keys}
    no_facts = {user: not await store.list_facts(tenant, user, include_superseded=True) for user in facts}
    if exact:
        held = [str(k) for k, e in empty.items() if not e] + [f"{tenant}/{u} (facts)" for u, e in no_facts.items() if not e]
        if held:
            raise Conflict(f"import --exact refused, nothing was written: the target already holds {', '.join(held[:5])}")
    for key in keys:
        items = sorted(parsed.messages.get(key, []), key=lambda t: t[0])
        if empty[key] and await _restore_session(store, key, items, states[key], parsed.session_rows.get(key),
                                                 report, exact=exact):
            continue
        await _merge_messages(store, key, items, report)
        for name, data, _, _ in states[key]:
            current = await store.get_state(key, name)
            if current is not None:
                if dict(current.data) != data:
                    report.warnings.append(f"{key}: state {name!r} exists with other data; not overwritten")
                continue
            await store.put_state(key, name, data, expected_version=0)
            report.counts["states"] += 1
    report.counts["sessions"] += len(parsed.sessions)
    for user, user_facts in facts.items():
        if no_facts[user] and await _restore_facts(store, tenant, user, user_facts, report, exact=exact):
            continue
        await _import_facts(store, tenant, user_facts, report)
    return report


async def _restore_session(
    store: Store, key: SessionKey, items: list[tuple[int, str, NewMessage, str]],
    states: list[tuple[str, dict[str, Any], Any, datetime | None]],
    row: tuple[datetime | None, datetime | None, Any] | None, report: ImportReport, *, exact: bool,
) -> bool:
    """Write one session with its exported identity; False (nothing written) if the store cannot take
    it as exported -- ids taken, or records an export would not hold -- and the caller merges instead."""
    messages = [Message(key=key, seq=seq, id=mid, role=m.role, content=m.content, payload=m.payload,
                        payload_format=m.payload_format, author=m.author, idempotency_key=m.idempotency_key or "",
                        created_at=m.created_at or utcnow(), metadata=m.metadata, tokens=0, content_hash=chash)
                for seq, mid, m, chash in items]
    blobs = [StateBlob(key, name, version, data, updated) for name, data, version, updated in states]  # type: ignore[arg-type]
    created, updated, last_seq = row or (None, None, None)
    try:
        await store.restore_session(key, messages, blobs, created_at=created, updated_at=updated,
                                    last_seq=last_seq if isinstance(last_seq, int) and last_seq else None)
    except (Conflict, InvalidInput) as exc:
        if exact:
            raise
        report.warnings.append(f"{key}: not restored with its exported ids ({exc.message}); merged with new ids")
        return False
    report.counts["messages"] += len(messages)
    report.counts["states"] += len(blobs)
    return True


async def _merge_messages(store: Store, key: SessionKey, items: list[tuple[int, str, NewMessage, str]],
                          report: ImportReport) -> None:
    for start in range(0, len(items), store.limits.max_batch):
        chunk = items[start: start + store.limits.max_batch]
        info = await store.get_session(key)
        last = info.last_seq if info else 0
        stored = await store.append(key, [m for _, _, m, _ in chunk])
        for (seq, old_id, _, _), new in zip(chunk, stored):
            if old_id and old_id != new.id:
                report.id_map[old_id] = new.id
            if new.seq != seq:
                report.warnings.append(f"{key}: message seq {seq} was stored as {new.seq} (session not empty)")
        fresh = sum(1 for m in stored if m.seq > last)  # the rest were already there (idempotency key)
        report.counts["messages"] += fresh
        if fresh < len(stored):
            report.counts["messages_existing"] += len(stored) - fresh


async def _restore_facts(store: Store, tenant: str, user: str, facts: list[dict[str, Any]], report: ImportReport,
                         *, exact: bool) -> bool:
    """A user's facts with their exported ids, validity and supersession (provenance follows any
    message ids a merge changed); False (nothing written) if the store cannot take them as exported."""
    try:
        restored = [Fact(
            id=f["id"], tenant=tenant, user=user, attribute=f["attribute"], value=f["value"], text=f["text"],
            kind=f.get("kind") or "statement",
            source_message_ids=tuple(report.id_map.get(s, s) for s in f.get("source_message_ids") or []),
            thread=f.get("thread"), confidence=float(f.get("confidence", 1.0)), valid_from=f["_valid_from"],
            valid_to=f["_valid_to"], superseded_by=f.get("superseded_by"),
            created_at=f["_created_at"], metadata=f.get("metadata") or {},
        ) for f in facts]
        await store.restore_facts(tenant, user, restored)
    except (Conflict, InvalidInput) as exc:
        if exact:
            raise
        report.warnings.append(f"facts of {user}: not restored with their exported ids ({exc.message}); merged")
        return False
    report.counts["facts"] += len(restored)
    return True


async def _import_facts(store: Store, tenant: str, facts: list[dict[str, Any]], report: ImportReport) -> None:
    by_id = {f["id"]: f for f in facts}
    superseded_by: dict[str, list[str]] = defaultdict(list)
    for f in facts:
        if f.get("superseded_by"):
            superseded_by[f["superseded_by"]].append(f["id"])
    existing: dict[str, dict[tuple[Any, ...], Fact]] = {}
    stored_as: dict[str, str] = {}  # exported fact id -> the id it has now
    # Creation order: a superseding fact is always recorded after the facts it closes.
    for f in sorted(facts, key=lambda f: (f["_created_at"] or f["_valid_from"], f["_valid_from"])):
        user = f["user"]
        if user not in existing:
            existing[user] = {
                (e.attribute, e.value, e.text, e.valid_from): e
                for e in await store.list_facts(tenant, user, include_superseded=True)
            }
        same = existing[user].get((f["attribute"], f["value"], f["text"], f["_valid_from"]))
        if same is not None:
            stored_as[f["id"]] = same.id
            continue
        if f.get("superseded_by") and f["superseded_by"] not in by_id:
            report.warnings.append(
                f"fact {f['id']} of {user} was superseded by a fact not in this export; skipped rather than "
                "restored as current")
            continue
        sources = [report.id_map.get(s, s) for s in f.get("source_message_ids") or []]
        closes = []
        for old in superseded_by.get(f["id"], []):
            new_old = stored_as.get(old)
            if new_old is None:
                continue
            current = await store.get_fact(tenant, user, new_old)
            if current is not None and current.valid_to is None:
                closes.append(new_old)
        try:
            stored = await store.record_fact(tenant, user, _new_fact(f, sources), supersedes=closes)
        except AmberError as exc:
            raise InvalidInput(f"import line {f['_line']}: {exc.message}") from exc
        stored_as[f["id"]] = stored.id
        existing[user][(stored.attribute, stored.value, stored.text, stored.valid_from)] = stored
        report.counts["facts"] += 1
    report.id_map.update({old: new for old, new in stored_as.items() if old != new})


def jsonable(value: Any) -> Any:
    """Any Amber record (Message, Fact, SessionInfo, Hit, AuditEvent, DeletionReceipt...) as plain JSON
    data: timestamps as ISO-8601, session keys as ``tenant/user/thread``. Used by the CLI and server."""
    import dataclasses
    import enum

    if isinstance(value, SessionKey):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value


async def restore_jsonl(
    store: Store, tenant: str, lines: Iterable[str | bytes] | AsyncIterable[str | bytes]
) -> ImportReport:
    """Import a backup (an export) but never bring back what was erased after the backup was taken:
    users, sessions, single messages and facts whose deletion the audit trail records after the
    export's ``exported_at`` are left out, and the report says how many records were withheld."""
    if hasattr(lines, "__aiter__"):
        lines = [line async for line in lines]  # type: ignore[union-attr]
    lines = [line.decode("utf-8") if isinstance(line, bytes) else line for line in lines]  # type: ignore[union-attr]
    first = next((line for line in lines if line.strip()), None)
    try:
        header = json.loads(first) if first else None
        taken = datetime.fromisoformat(header["exported_at"])  # type: ignore[index]
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInput("restore: the first line is not an Amber export header with exported_at") from exc
    users: set[str] = set()
    sessions: set[tuple[str, str | None]] = set()
    facts: set[str] = set()
    messages: set[str] = set()
    after = 0
    while True:
        events = await store.list_audit(tenant, limit=1000, after_id=after)
        for e in events:
            if e.at < taken or e.user is None:
                continue
            if e.operation == "user.delete":
                users.add(e.user)
            elif e.operation == "session.delete":
                sessions.add((e.user, e.thread))
            elif e.operation == "fact.delete":
                facts.update(e.record_ids)
            elif e.operation == "message.delete":
                messages.update(e.record_ids)
        if len(events) < 1000:
            break
        after = events[-1].id
    kept: list[str] = []
    withheld = 0
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line) if line.lstrip().startswith("{") else None
        if isinstance(rec, dict) and rec.get("type") in ("session", "message", "state", "fact"):
            user, thread = rec.get("user"), rec.get("thread")
            erased = user in users or (rec["type"] == "fact" and rec.get("id") in facts) or (
                rec["type"] == "message" and rec.get("id") in messages) or (
                rec["type"] != "fact" and (user, thread) in sessions)
            if erased:
                withheld += 1
                continue
        elif isinstance(rec, dict) and rec.get("type") == "end":
            rec = dict(rec, counts=_recount(kept))
            line = _line(rec)
        kept.append(line)
    report = await import_jsonl(store, tenant, kept)
    report.counts["withheld_erased"] = withheld
    return report


def _recount(lines: list[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for line in lines:
        kind = json.loads(line).get("type")
        if kind in ("session", "message", "state", "fact"):
            counts[kind + "s"] += 1
    return dict(counts)
