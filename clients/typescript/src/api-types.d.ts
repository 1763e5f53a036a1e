// Generated from docs/openapi.json by scripts/generate-types.mjs. Do not edit.

export interface AppendIn {
  "messages": Array<MessageIn>;
}

export interface AppendOut {
  "messages": Array<MessageOut>;
  /** True when every message was already stored (a retried request). */
  "replayed": boolean;
}

export interface AuditHeadOut {
  "position": number;
  "hash": string;
}

export interface AuditOut {
  "id": number;
  "at": string;
  "actor": string;
  "operation": string;
  "user": string | null;
  "thread": string | null;
  "count": number;
  "record_ids": Array<string>;
  "digests": Array<string>;
  /** Position in the tenant's hash chain; null until chained. */
  "chain_seq"?: number | null;
  /** sha256(previous chain_hash || canonical entry). */
  "chain_hash"?: string | null;
}

export interface AuditPage {
  "items": Array<AuditOut>;
  "next_after_id": number | null;
}

export interface AuditProblemOut {
  /** changed | missing | duplicate | head | expected-head */
  "kind": string;
  "position": number | null;
  "id": number | null;
  "detail": string;
}

export interface AuditVerifyOut {
  "tenant": string;
  "ok": boolean;
  "entries": number;
  "chained": number;
  "unchained": number;
  "head": AuditHeadOut;
  "problems": Array<AuditProblemOut>;
}

export interface DoctorOut {
  /** The store URL, secrets redacted. */
  "store": string;
  "tenant": string;
  "ok": boolean;
  "findings": Array<FindingOut>;
}

export interface ErrorBody {
  /** Stable machine-readable code, e.g. not_found, version_conflict. */
  "code": string;
  "message": string;
  "status": number;
}

export interface ErrorEnvelope {
  "error": ErrorBody;
}

export interface FactIn {
  "attribute": string;
  "value": string;
  "text": string;
  "kind"?: string;
  "source_message_ids"?: Array<string>;
  "thread"?: string | null;
  "confidence"?: number;
  "valid_from"?: string | null;
  "metadata"?: Record<string, unknown>;
  /** Ids of current facts this one replaces. */
  "supersedes"?: Array<string>;
}

export interface FactList {
  "items": Array<FactOut>;
}

export interface FactOut {
  "id": string;
  "user": string;
  "attribute": string;
  "value": string;
  "text": string;
  "kind": string;
  "source_message_ids": Array<string>;
  "thread": string | null;
  "confidence": number;
  "valid_from": string;
  "valid_to": string | null;
  "superseded_by": string | null;
  "created_at": string;
  "metadata": Record<string, unknown>;
}

export interface FindingOut {
  "code": string;
  "severity": "problem" | "warning" | "info";
  "title": string;
  "detail": string;
  "fix": string;
}

export interface Health {
  "status": string;
  "pid": number;
}

export interface HitOut {
  "kind": "message" | "fact";
  "id": string;
  "score": number;
  "text": string;
  "user": string;
  "thread": string | null;
  "seq": number | null;
  "created_at": string;
  "source_message_ids": Array<string>;
  "valid_from": string | null;
  "valid_to": string | null;
  "paths": Record<string, number>;
  /** A turn's role (user, assistant, ...); null for facts. */
  "role": string | null;
  /** Who said a turn (its author, e.g. a participant's or agent's name), if the message named one; null for facts. */
  "author": string | null;
}

export interface ImportOut {
  "counts": Record<string, number>;
  "warnings": Array<string>;
  "ids_remapped": number;
}

export interface InspectSession {
  "key": string;
  "user": string;
  "thread": string;
  "message_count": number;
  "last_seq": number;
  "created_at": string;
  "updated_at": string;
  /** The user's sessions look keyed per request and this one is a one-turn or uuid-like session (the `amber doctor` heuristic). */
  "looks_random": boolean;
  /** Why the user's session keys look random, if they do. */
  "random_reason": string | null;
}

export interface InspectSessionPage {
  "items": Array<InspectSession>;
  "next_offset": number | null;
  /** Users whose session keys look random per request -> why (over the tenant's most recent sessions). */
  "flagged_users": Record<string, string>;
}

export interface KeyCreated {
  "key_id": string;
  "tenant": string;
  "label": string;
  "created_at": string;
  "revoked_at": string | null;
  /** The key itself. Shown once: only its hash is stored. */
  "api_key": string;
}

export interface KeyIn {
  "label"?: string;
}

export interface KeyList {
  "items": Array<KeyOut>;
}

export interface KeyOut {
  "key_id": string;
  "tenant": string;
  "label": string;
  "created_at": string;
  "revoked_at": string | null;
}

export interface LearnQueueOut {
  /** The tenant counted; null for all tenants (admin). */
  "tenant": string | null;
  /** Jobs by state: pending, leased, dead (failed too often). */
  "counts": Record<string, number>;
}

export interface LocatedMessage {
  "user": string;
  "thread": string;
  "message": MessageOut;
}

export interface MemoryBlockOut {
  /** Exactly what would be injected into the model's context ('' when empty). */
  "text": string;
  "tokens": number;
  "max_tokens": number;
  /** Ids of the hits that fit in the block, in order. */
  "hit_ids": Array<string>;
}

export interface MessageCorrectionIn {
  /** The corrected text; id and seq stay. */
  "content": string;
  /** Kept in the message metadata as correction_reason. */
  "reason"?: string | null;
}

export interface MessageIn {
  "role": "system" | "user" | "assistant" | "tool" | "event";
  "content": string;
  "payload"?: Record<string, unknown> | null;
  "payload_format"?: string;
  "author"?: string | null;
  /** Identifies the message: a retried append with the same key stores one message. */
  "idempotency_key"?: string | null;
  /** Timezone-aware; defaults to the time of the append. */
  "created_at"?: string | null;
  "metadata"?: Record<string, unknown>;
}

export interface MessageOut {
  "key": string;
  "seq": number;
  "id": string;
  "role": string;
  "content": string;
  "payload": Record<string, unknown> | null;
  "payload_format": string;
  "author": string | null;
  "idempotency_key": string;
  "created_at": string;
  "metadata": Record<string, unknown>;
  "tokens": number;
  "content_hash": string;
}

export interface MessagePage {
  "items": Array<MessageOut>;
  /** Pass as after_seq for the next page; null at the end. */
  "next_after_seq": number | null;
}

export interface Ready {
  "status": string;
  "backend": string;
}

export interface RecallIn {
  "query": string;
  "limit"?: number;
  "kinds"?: Array<"message" | "fact">;
}

export interface RecallOut {
  "items": Array<HitOut>;
}

export interface RecallPreviewIn {
  "query": string;
  "limit"?: number;
  /** Token budget of the memory block. */
  "max_tokens"?: number;
  "kinds"?: Array<"message" | "fact">;
  /** Retrieval paths; vector needs an embedder on the server (AMBER_EMBEDDER). */
  "modes"?: Array<"lexical" | "vector">;
}

export interface RecallPreviewOut {
  /** The paths that ran. */
  "modes": Array<string>;
  /** The server's embedder name; null means lexical only. */
  "embedder": string | null;
  /** Fused hits, best first; `paths` holds each path's own score. */
  "items": Array<HitOut>;
  "block": MemoryBlockOut;
}

export interface ReceiptOut {
  "operation": string;
  "user": string;
  "thread": string | null;
  "counts": Record<string, number>;
  "at": string;
}

export interface SessionOut {
  "key": string;
  "user": string;
  "thread": string;
  "message_count": number;
  "last_seq": number;
  "created_at": string;
  "updated_at": string;
}

export interface SessionPage {
  "items": Array<SessionOut>;
  "next_offset": number | null;
}

export interface StateIn {
  "data": Record<string, unknown>;
}

export interface StateNames {
  "items": Array<string>;
}

export interface StateOut {
  "name": string;
  "version": number;
  "data": Record<string, unknown>;
  "updated_at": string;
}

export interface TenantIn {
  "tenant": string;
}

export interface TenantList {
  "items": Array<string>;
}

export interface TenantOut {
  "tenant": string;
  "created": boolean;
}

export interface UserPage {
  "items": Array<string>;
  "next_offset": number | null;
}

export interface WindowOut {
  "items": Array<MessageOut>;
}

