"""Request and response bodies of the REST API (the OpenAPI schema, and the TypeScript types, come from here)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..keys import MAX_PART_LENGTH, PART_PATTERN

JSONObject = dict[str, Any]

# Rules the store enforces (400 invalid_input / invalid_session_key), stated in the schema so clients
# know them up front. Documented only (json_schema_extra): the store stays the one place that checks.
KEY_PART_SCHEMA = {"pattern": PART_PATTERN, "minLength": 1, "maxLength": MAX_PART_LENGTH}
_NO_NUL = {"pattern": "^[^\\x00]*$"}
# Not blank and no NUL; "blank" is Python's str.isspace(), spelled out because JSON Schema's \s differs.
_WS = "\\t-\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_NOT_BLANK = {"pattern": f"^[^\\x00]*[^\\x00{_WS}][^\\x00]*$"}


_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)?")


def _date_time_text(value: Any) -> Any:
    # Pydantic would also take 0, "0" or 1.5 as Unix times; the schema says RFC 3339 text. A missing
    # offset passes here so the store can refuse it with its own message (timezone-aware only).
    if isinstance(value, str) and _DATE_TIME.fullmatch(value):
        return value
    raise ValueError("expected an RFC 3339 date-time such as 2024-05-01T12:00:00Z")


DateTimeIn = Annotated[datetime, BeforeValidator(_date_time_text)]


def _json_integer(value: Any) -> Any:
    # JSON Schema's "integer" is any number with no fractional part (10.0 included); true and "10"
    # are not numbers at all. Pydantic's lax int would take true, its strict int refuses 10.0.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Model):
    code: str = Field(description="Stable machine-readable code, e.g. not_found, version_conflict.")
    message: str
    status: int


class ErrorEnvelope(_Model):
    error: ErrorBody


class MessageIn(_Model):
    role: Literal["system", "user", "assistant", "tool", "event"]
    content: str = Field(json_schema_extra=_NO_NUL)
    payload: Optional[JSONObject] = None
    payload_format: str = Field("text/1", min_length=1)
    author: Optional[str] = Field(None, max_length=256, json_schema_extra=_NO_NUL)
    idempotency_key: Optional[str] = Field(
        None, min_length=1, max_length=256, json_schema_extra=_NO_NUL,
        description="Identifies the message: a retried append with the same key stores one message.")
    created_at: Optional[DateTimeIn] = Field(None, description="Timezone-aware; defaults to the time of the append.")
    metadata: JSONObject = Field(default_factory=dict)


class AppendIn(_Model):
    messages: list[MessageIn] = Field(min_length=1, max_length=1000)


class MessageOut(_Model):
    key: str
    seq: int
    id: str
    role: str
    content: str
    payload: Optional[JSONObject]
    payload_format: str
    author: Optional[str]
    idempotency_key: str
    created_at: datetime
    metadata: JSONObject
    tokens: int
    content_hash: str


class MessageCorrectionIn(_Model):
    content: str = Field(json_schema_extra=_NO_NUL, description="The corrected text; id and seq stay.")
    reason: Optional[str] = Field(None, max_length=1000, json_schema_extra=_NO_NUL,
                                  description="Kept in the message metadata as correction_reason.")


class MessagePage(_Model):
    items: list[MessageOut]
    next_after_seq: Optional[int] = Field(description="Pass as after_seq for the next page; null at the end.")


class AppendOut(_Model):
    messages: list[MessageOut]
    replayed: bool = Field(description="True when every message was already stored (a retried request).")


class WindowOut(_Model):
    items: list[MessageOut]


class SessionOut(_Model):
    key: str
    user: str
    thread: str
    message_count: int
    last_seq: int
    created_at: datetime
    updated_at: datetime


class SessionPage(_Model):
    items: list[SessionOut]
    next_offset: Optional[int]


class UserPage(_Model):
    items: list[str]
    next_offset: Optional[int]


class StateIn(_Model):
    data: JSONObject


class StateOut(_Model):
    name: str
    version: int
    data: JSONObject
    updated_at: datetime


class StateNames(_Model):
    items: list[str]


class FactIn(_Model):
    attribute: str = Field(json_schema_extra=_NOT_BLANK)
    value: str = Field(json_schema_extra=_NOT_BLANK)
    text: str = Field(json_schema_extra=_NOT_BLANK)
    kind: str = Field("statement", json_schema_extra=_NOT_BLANK)
    source_message_ids: list[str] = Field(default_factory=list)
    thread: Optional[str] = Field(None, json_schema_extra=KEY_PART_SCHEMA)
    confidence: float = Field(1.0, ge=0.0, le=1.0, strict=True)  # strict: false is not 0.0
    valid_from: Optional[DateTimeIn] = None
    metadata: JSONObject = Field(default_factory=dict)
    supersedes: list[str] = Field(default_factory=list, description="Ids of current facts this one replaces.")


class FactOut(_Model):
    id: str
    user: str
    attribute: str
    value: str
    text: str
    kind: str
    source_message_ids: list[str]
    thread: Optional[str]
    confidence: float
    valid_from: datetime
    valid_to: Optional[datetime]
    superseded_by: Optional[str]
    created_at: datetime
    metadata: JSONObject


class FactList(_Model):
    items: list[FactOut]


class RecallIn(_Model):
    query: str = Field(min_length=1, max_length=4000)
    limit: JsonInt = Field(10, ge=1, le=200)
    kinds: list[Literal["message", "fact"]] = Field(default_factory=lambda: ["message", "fact"], min_length=1)


class HitOut(_Model):
    kind: Literal["message", "fact"]
    id: str
    score: float = Field(ge=0.0, le=1.0)
    text: str
    user: str
    thread: Optional[str]
    seq: Optional[int]
    created_at: datetime
    source_message_ids: list[str]
    valid_from: Optional[datetime]
    valid_to: Optional[datetime]
    paths: dict[str, float]
    role: Optional[str] = Field(description="A turn's role (user, assistant, ...); null for facts.")
    author: Optional[str] = Field(description="Who said a turn (its author, e.g. a participant's or agent's "
                                  "name), if the message named one; null for facts.")


class RecallOut(_Model):
    items: list[HitOut]


class ReceiptOut(_Model):
    operation: str
    user: str
    thread: Optional[str]
    counts: dict[str, int]
    at: datetime


class AuditOut(_Model):
    id: int
    at: datetime
    actor: str
    operation: str
    user: Optional[str]
    thread: Optional[str]
    count: int
    record_ids: list[str]
    digests: list[str]
    chain_seq: Optional[int] = Field(None, description="Position in the tenant's hash chain; null until chained.")
    chain_hash: Optional[str] = Field(None, description="sha256(previous chain_hash || canonical entry).")


class AuditPage(_Model):
    items: list[AuditOut]
    next_after_id: Optional[int]


class AuditProblemOut(_Model):
    kind: str = Field(description="changed | missing | duplicate | head | expected-head")
    position: Optional[int]
    id: Optional[int]
    detail: str


class AuditHeadOut(_Model):
    position: int
    hash: str


class AuditVerifyOut(_Model):
    tenant: str
    ok: bool
    entries: int
    chained: int
    unchained: int
    head: AuditHeadOut
    problems: list[AuditProblemOut]


class ImportOut(_Model):
    counts: dict[str, int]
    warnings: list[str]
    ids_remapped: int


class TenantIn(_Model):
    tenant: str = Field(json_schema_extra=KEY_PART_SCHEMA)


class TenantOut(_Model):
    tenant: str
    created: bool


class TenantList(_Model):
    items: list[str]


class KeyIn(_Model):
    label: str = Field("", max_length=200)


class KeyOut(_Model):
    key_id: str
    tenant: str
    label: str
    created_at: str
    revoked_at: Optional[str]


class KeyCreated(KeyOut):
    api_key: str = Field(description="The key itself. Shown once: only its hash is stored.")


class KeyList(_Model):
    items: list[KeyOut]


class Health(_Model):
    status: str
    pid: int


class Ready(_Model):
    status: str
    backend: str
