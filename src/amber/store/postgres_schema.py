"""PostgreSQL schema migrations: versioned, ordered, append-only, applied under an advisory lock.

Two tracks, each a list that only ever grows (never edit a shipped migration; add the next one):

* ``core``: the tables every install has.
* ``pgvector``: applied only where the ``vector`` extension exists; moves vectors from ``real[]``
  to pgvector's ``vector`` type and adds the registry of per-model HNSW indexes.

Every table's key leads with ``tenant_id`` (see docs/storage-postgres.md for sharding by tenant).
``{s}`` is the quoted Amber schema, ``{vs}`` the quoted schema the ``vector`` extension lives in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Migration", "CORE", "PGVECTOR", "LEDGER_SQL", "TEXT_SEARCH_CONFIG", "INDEXED_CHARS"]

# 'simple' lower-cases without stemming or stop words: language neutral, and the same terms the
# reference backend matches. Only the first INDEXED_CHARS characters are indexed, so a maximal
# message can never overflow tsvector's 1 MB limit and be refused.
TEXT_SEARCH_CONFIG = "simple"
INDEXED_CHARS = 65_536


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
    track      text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text        NOT NULL DEFAULT current_user,
    PRIMARY KEY (track, version)
)
"""

_TSV = f"to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, left({{col}}, {INDEXED_CHARS}))"

CORE: tuple[Migration, ...] = (
    Migration(1, "sessions, messages, state, facts, vectors, learn queue, audit", f"""
CREATE TABLE {{s}}.sessions (
    tenant_id  text        NOT NULL,
    user_id    text        NOT NULL,
    thread_id  text        NOT NULL,
    last_seq   bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, thread_id)
);
CREATE INDEX sessions_recent ON {{s}}.sessions (tenant_id, updated_at DESC);

CREATE TABLE {{s}}.messages (
    tenant_id       text        NOT NULL,
    user_id         text        NOT NULL,
    thread_id       text        NOT NULL,
    seq             bigint      NOT NULL,
    id              text        NOT NULL,
    role            text        NOT NULL,
    content         text        NOT NULL,
    payload         text,
    payload_format  text        NOT NULL,
    author          text,
    idempotency_key text        NOT NULL,
    created_at      timestamptz NOT NULL,
    metadata        text        NOT NULL,
    tokens          integer     NOT NULL,
    content_hash    text        NOT NULL,
    tsv             tsvector    GENERATED ALWAYS AS ({_TSV.format(col="content")}) STORED,
    PRIMARY KEY (tenant_id, user_id, thread_id, seq),
    UNIQUE (tenant_id, user_id, thread_id, idempotency_key)
);
CREATE INDEX messages_by_id ON {{s}}.messages (tenant_id, id);
CREATE INDEX messages_tsv ON {{s}}.messages USING gin (tsv);

CREATE TABLE {{s}}.states (
    tenant_id  text        NOT NULL,
    user_id    text        NOT NULL,
    thread_id  text        NOT NULL,
    name       text        NOT NULL,
    version    bigint      NOT NULL,
    data       text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, thread_id, name)
);

CREATE TABLE {{s}}.facts (
    tenant_id          text             NOT NULL,
    user_id            text             NOT NULL,
    id                 text             NOT NULL,
    attribute          text             NOT NULL,
    value              text             NOT NULL,
    text               text             NOT NULL,
    kind               text             NOT NULL,
    source_message_ids text[]           NOT NULL,
    thread_id          text,
    confidence         double precision NOT NULL,
    valid_from         timestamptz      NOT NULL,
    valid_to           timestamptz,
    superseded_by      text,
    created_at         timestamptz      NOT NULL DEFAULT clock_timestamp(),
    metadata           text             NOT NULL,
    tsv                tsvector         GENERATED ALWAYS AS ({_TSV.format(col="text")}) STORED,
    PRIMARY KEY (tenant_id, user_id, id)
);
CREATE INDEX facts_by_attribute ON {{s}}.facts (tenant_id, user_id, attribute, created_at DESC);
CREATE INDEX facts_tsv ON {{s}}.facts USING gin (tsv) WHERE valid_to IS NULL;

CREATE TABLE {{s}}.vectors (
    tenant_id text    NOT NULL,
    user_id   text    NOT NULL,
    model     text    NOT NULL,
    kind      text    NOT NULL,
    item_id   text    NOT NULL,
    dim       integer NOT NULL,
    embedding real[],
    PRIMARY KEY (tenant_id, user_id, model, kind, item_id)
);

CREATE TABLE {{s}}.learn_jobs (
    tenant_id    text        NOT NULL,
    id           text        NOT NULL,
    user_id      text        NOT NULL,
    thread_id    text        NOT NULL,
    message_id   text        NOT NULL,
    seq          bigint      NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL DEFAULT now(),
    leased       boolean     NOT NULL DEFAULT false,
    dead         boolean     NOT NULL DEFAULT false,
    last_error   text,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX learn_jobs_ready ON {{s}}.learn_jobs (available_at, seq, id) WHERE NOT dead;
CREATE INDEX learn_jobs_tenant_ready ON {{s}}.learn_jobs (tenant_id, available_at, seq, id) WHERE NOT dead;
CREATE INDEX learn_jobs_session ON {{s}}.learn_jobs (tenant_id, user_id, thread_id);
CREATE INDEX learn_jobs_by_id ON {{s}}.learn_jobs (id);

CREATE TABLE {{s}}.audit (
    tenant_id  text        NOT NULL,
    id         bigint      GENERATED ALWAYS AS IDENTITY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text        NOT NULL,
    operation  text        NOT NULL,
    user_id    text,
    thread_id  text,
    count      integer     NOT NULL,
    record_ids text[]      NOT NULL,
    digests    text[]      NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
"""),
    Migration(2, "audit hash chain, chain heads, erasure receipt lookup", """
ALTER TABLE {s}.audit ADD COLUMN chain_seq bigint, ADD COLUMN chain_hash text;
CREATE INDEX audit_unchained ON {s}.audit (tenant_id, id) WHERE chain_seq IS NULL;
CREATE INDEX audit_chain ON {s}.audit (tenant_id, chain_seq) WHERE chain_seq IS NOT NULL;
CREATE INDEX audit_erasures ON {s}.audit (tenant_id, user_id)
    WHERE operation IN ('session.delete', 'user.delete', 'retention.prune');
CREATE TABLE {s}.audit_heads (
    tenant_id  text        NOT NULL,
    chain_seq  bigint      NOT NULL,
    chain_hash text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id)
);
"""),
    Migration(3, "float32 vector copies and per-user vector stamps for client-side exact search", """
ALTER TABLE {s}.vectors ADD COLUMN vec bytea;
UPDATE {s}.vectors SET vec = (SELECT string_agg(float4send(x), ''::bytea ORDER BY o)
                              FROM unnest(embedding) WITH ORDINALITY AS t(x, o))
WHERE embedding IS NOT NULL;
CREATE TABLE {s}.vector_stamps (
    tenant_id text   NOT NULL,
    user_id   text   NOT NULL,
    version   bigint NOT NULL DEFAULT 0,
    n         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, user_id)
);
INSERT INTO {s}.vector_stamps (tenant_id, user_id, version, n)
SELECT tenant_id, user_id, 1, count(*) FROM {s}.vectors GROUP BY tenant_id, user_id;
CREATE FUNCTION {s}.vector_stamps_bump() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {s}.vector_stamps AS st (tenant_id, user_id, version, n)
        SELECT tenant_id, user_id, 1, count(*) FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, user_id) DO UPDATE SET version = st.version + 1, n = st.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {s}.vector_stamps AS st (tenant_id, user_id, version, n)
        SELECT tenant_id, user_id, 1, 0 FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, user_id) DO UPDATE SET version = st.version + 1;
    ELSE
        INSERT INTO {s}.vector_stamps AS st (tenant_id, user_id, version, n)
        SELECT tenant_id, user_id, 1, -count(*) FROM old_rows GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, user_id) DO UPDATE SET version = st.version + 1, n = st.n + excluded.n;
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER vectors_stamp_insert AFTER INSERT ON {s}.vectors REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.vector_stamps_bump();
CREATE TRIGGER vectors_stamp_update AFTER UPDATE ON {s}.vectors REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.vector_stamps_bump();
CREATE TRIGGER vectors_stamp_delete AFTER DELETE ON {s}.vectors REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.vector_stamps_bump();
"""),
    Migration(4, "message.delete is an erasure receipt too (erasure receipt lookup)", """
DROP INDEX {s}.audit_erasures;
CREATE INDEX audit_erasures ON {s}.audit (tenant_id, user_id)
    WHERE operation IN ('session.delete', 'user.delete', 'retention.prune', 'message.delete');
"""),
    # An ordered high-water mark for the client's in-process vector index: put_vectors takes the
    # user's stamp row lock first (bumping its version) and writes that version into every row it
    # stores, so stamps are handed out in commit order per user and a reader holding stamp version
    # V has seen every row with ``stamp <= V``. ``rewrites`` moves when rows were changed in a way
    # that mark cannot show (deletes, updates, rows stored without a stamp): the reader then
    # compares keys instead.
    Migration(5, "vector stamps as an ordered high-water mark (incremental client-side index)", """
ALTER TABLE {s}.vectors ADD COLUMN stamp bigint;
ALTER TABLE {s}.vector_stamps ADD COLUMN rewrites bigint NOT NULL DEFAULT 0;
CREATE INDEX vectors_by_stamp ON {s}.vectors (tenant_id, user_id, stamp);
CREATE OR REPLACE FUNCTION {s}.vector_stamps_bump() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {s}.vector_stamps AS st (tenant_id, user_id, version, n, rewrites)
        SELECT tenant_id, user_id, 1, count(*), (count(*) FILTER (WHERE stamp IS NULL) > 0)::int
        FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, user_id) DO UPDATE
        SET version = st.version + 1, n = st.n + excluded.n, rewrites = st.rewrites + excluded.rewrites;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {s}.vector_stamps AS st (tenant_id, user_id, version, n, rewrites)
        SELECT tenant_id, user_id, 1, 0, 1 FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, user_id) DO UPDATE SET version = st.version + 1, rewrites = st.rewrites + 1;
    ELSE
        INSERT INTO {s}.vector_stamps AS st (tenant_id, user_id, version, n, rewrites)
        SELECT tenant_id, user_id, 1, -count(*), 1 FROM old_rows GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, user_id) DO UPDATE
        SET version = st.version + 1, n = st.n + excluded.n, rewrites = st.rewrites + 1;
    END IF;
    RETURN NULL;
END
$fn$;
"""),
    # Recall asks, for each query, whether the attributes of its candidate facts ever changed. The
    # planner, seeing almost no superseded facts, answered that by reading every fact of the table
    # (5.5 ms at 10,000 facts, linear in the table). This index holds superseded facts only.
    Migration(6, "superseded facts by attribute (recall's stale-turn check without a scan)", """
CREATE INDEX facts_superseded ON {s}.facts (tenant_id, user_id, attribute) WHERE valid_to IS NOT NULL;
"""),
)

PGVECTOR: tuple[Migration, ...] = (
    Migration(1, "pgvector column and per-model HNSW index registry", """
ALTER TABLE {s}.vectors ADD COLUMN embedding_v {vs}.vector;
UPDATE {s}.vectors SET embedding_v = embedding::{vs}.vector, embedding = NULL WHERE embedding IS NOT NULL;
CREATE TABLE {s}.vector_indexes (
    model      text    NOT NULL,
    dim        integer NOT NULL,
    index_name text,
    PRIMARY KEY (model, dim)
);
"""),
    Migration(2, "float32 copies of pgvector vectors (client-side exact search of small users)", """
UPDATE {s}.vectors SET vec = (SELECT string_agg(float4send(x), ''::bytea ORDER BY o)
                              FROM unnest(embedding_v::real[]) WITH ORDINALITY AS t(x, o))
WHERE vec IS NULL AND embedding_v IS NOT NULL;
"""),
)
