"""The SQLite schema as ordered, append-only, named migrations.

Each migration is a small function of a connection that is already inside ``BEGIN IMMEDIATE``, so
when several processes open the same new file at once, exactly one applies each migration and the
others find it recorded in ``schema_migrations``. Never edit a released migration: append a new one.

Layout rules (shared with the PostgreSQL schema): every key leads with ``tenant_id``; content and
payload columns may hold encrypted bytes later (TEXT affinity keeps BLOBs as BLOBs, and
``enc_key_id`` says which key), so encryption needs no schema rewrite; the audit table has an
integer id and a nullable ``chain_hash`` for a later hash chain.

Times are integer microseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SCOPE_SQL", "applied_versions"]


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute statements one by one: ``executescript`` would COMMIT the migration transaction."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            conn.execute(buffer)
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer[:80]!r}")


def _initial_schema(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE sessions (
            tenant_id     TEXT NOT NULL,
            user_id       TEXT NOT NULL,
            thread_id     TEXT NOT NULL,
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL,
            last_seq      INTEGER NOT NULL DEFAULT 0,   -- seq allocation happens in the write txn
            message_count INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (tenant_id, user_id, thread_id)
        ) WITHOUT ROWID;
        CREATE INDEX sessions_recent ON sessions (tenant_id, updated_at DESC);

        -- rid is a stable integer rowid (INTEGER PRIMARY KEY survives VACUUM) for the FTS5 index;
        -- the logical key (tenant, user, thread, seq) is enforced by a unique constraint.
        CREATE TABLE messages (
            rid             INTEGER PRIMARY KEY,
            tenant_id       TEXT NOT NULL,
            user_id         TEXT NOT NULL,
            thread_id       TEXT NOT NULL,
            seq             INTEGER NOT NULL,
            id              TEXT NOT NULL UNIQUE,
            role            TEXT NOT NULL,
            content         TEXT NOT NULL,
            payload         TEXT,
            payload_format  TEXT NOT NULL,
            author          TEXT,
            idempotency_key TEXT NOT NULL,
            created_at      INTEGER NOT NULL,
            metadata        TEXT NOT NULL,
            tokens          INTEGER NOT NULL,
            content_hash    TEXT NOT NULL,
            enc_key_id      TEXT,
            UNIQUE (tenant_id, user_id, thread_id, seq),
            UNIQUE (tenant_id, user_id, thread_id, idempotency_key)
        );

        CREATE TABLE states (
            tenant_id  TEXT NOT NULL,
            user_id    TEXT NOT NULL,
            thread_id  TEXT NOT NULL,
            name       TEXT NOT NULL,
            version    INTEGER NOT NULL,
            data       TEXT NOT NULL,
            enc_key_id TEXT,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (tenant_id, user_id, thread_id, name)
        ) WITHOUT ROWID;

        CREATE TABLE facts (
            rid           INTEGER PRIMARY KEY,
            tenant_id     TEXT NOT NULL,
            user_id       TEXT NOT NULL,
            id            TEXT NOT NULL UNIQUE,
            attribute     TEXT NOT NULL,
            value         TEXT NOT NULL,
            text          TEXT NOT NULL,
            kind          TEXT NOT NULL,
            source_ids    TEXT NOT NULL,
            thread_id     TEXT,
            confidence    REAL NOT NULL,
            valid_from    INTEGER NOT NULL,
            valid_to      INTEGER,
            superseded_by TEXT,
            created_at    INTEGER NOT NULL,
            metadata      TEXT NOT NULL,
            enc_key_id    TEXT
        );
        CREATE INDEX facts_by_user ON facts (tenant_id, user_id, attribute, valid_to);

        CREATE TABLE vectors (
            tenant_id TEXT NOT NULL,
            user_id   TEXT NOT NULL,
            model     TEXT NOT NULL,
            kind      TEXT NOT NULL,
            item_id   TEXT NOT NULL,
            dim       INTEGER NOT NULL,
            vec       BLOB NOT NULL,               -- float32, little-endian
            PRIMARY KEY (tenant_id, user_id, model, kind, item_id)
        );
        -- bumped in every transaction that changes a user's vectors, so an in-process matrix cache
        -- notices writes from other processes with one indexed read
        CREATE TABLE vector_stamps (
            tenant_id TEXT NOT NULL,
            user_id   TEXT NOT NULL,
            version   INTEGER NOT NULL,
            PRIMARY KEY (tenant_id, user_id)
        ) WITHOUT ROWID;

        CREATE TABLE learn_jobs (
            rid          INTEGER PRIMARY KEY,
            id           TEXT NOT NULL UNIQUE,
            tenant_id    TEXT NOT NULL,
            user_id      TEXT NOT NULL,
            thread_id    TEXT NOT NULL,
            message_id   TEXT NOT NULL,
            seq          INTEGER NOT NULL,
            attempts     INTEGER NOT NULL DEFAULT 0,
            available_at INTEGER NOT NULL,
            leased       INTEGER NOT NULL DEFAULT 0,
            dead         INTEGER NOT NULL DEFAULT 0,
            last_error   TEXT
        );
        CREATE INDEX learn_jobs_due ON learn_jobs (dead, available_at, rid);
        CREATE INDEX learn_jobs_session ON learn_jobs (tenant_id, user_id, thread_id);

        CREATE TABLE audit (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after deletes
            tenant_id  TEXT NOT NULL,
            at         INTEGER NOT NULL,
            actor      TEXT NOT NULL,
            operation  TEXT NOT NULL,
            user_id    TEXT,
            thread_id  TEXT,
            count      INTEGER NOT NULL,
            record_ids TEXT NOT NULL,                       -- JSON array of ids
            digests    TEXT NOT NULL,                       -- JSON array of sha256 hex digests
            chain_hash TEXT                                 -- reserved for a later hash chain
        );
        CREATE INDEX audit_by_tenant ON audit (tenant_id, id);

        -- lexical search: external-content FTS5 tables kept in step by triggers
        CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, content='messages', content_rowid='rid', tokenize='unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, content) VALUES (new.rid, new.content);
        END;
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.rid, old.content);
        END;

        CREATE VIRTUAL TABLE facts_fts USING fts5(
            text, content='facts', content_rowid='rid', tokenize='unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER facts_fts_insert AFTER INSERT ON facts BEGIN
            INSERT INTO facts_fts (rowid, text) VALUES (new.rid, new.text);
        END;
        CREATE TRIGGER facts_fts_delete AFTER DELETE ON facts BEGIN
            INSERT INTO facts_fts (facts_fts, rowid, text) VALUES ('delete', old.rid, old.text);
        END;
        """,
    )



# The search scope of a row: one token naming its tenant and user. Lexical search puts it in the
# FTS5 query itself ("scope : <token> AND (terms)"), so FTS5 intersects the term doclists with the
# user's own doclist and ranks only that user's rows, instead of ranking every tenant's matches and
# filtering afterwards. hex() keeps it one token for the unicode61 tokenizer whatever the key's
# punctuation; the separator keeps ("ab", "c") and ("a", "bc") apart. Python computes the same
# token for queries (amber.store.sqlite._scope_token).
SCOPE_SQL = "'s' || hex(tenant_id || char(31) || user_id)"


def _scoped_search(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        f"""
        ALTER TABLE messages ADD COLUMN scope TEXT GENERATED ALWAYS AS ({SCOPE_SQL}) VIRTUAL;
        ALTER TABLE facts ADD COLUMN scope TEXT GENERATED ALWAYS AS ({SCOPE_SQL}) VIRTUAL;

        DROP TRIGGER messages_fts_insert;
        DROP TRIGGER messages_fts_delete;
        DROP TABLE messages_fts;
        DROP TRIGGER facts_fts_insert;
        DROP TRIGGER facts_fts_delete;
        DROP TABLE facts_fts;

        CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, scope, content='messages', content_rowid='rid', tokenize='unicode61 remove_diacritics 2'
        );
        -- rank = bm25 over the text only: the scope column matches every row of the user equally
        INSERT INTO messages_fts (messages_fts, rank) VALUES ('rank', 'bm25(1.0, 0.0)');
        CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, content, scope) VALUES (new.rid, new.content, new.scope);
        END;
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content, scope) VALUES ('delete', old.rid, old.content, old.scope);
        END;
        INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');

        CREATE VIRTUAL TABLE facts_fts USING fts5(
            text, scope, content='facts', content_rowid='rid', tokenize='unicode61 remove_diacritics 2'
        );
        INSERT INTO facts_fts (facts_fts, rank) VALUES ('rank', 'bm25(1.0, 0.0)');
        CREATE TRIGGER facts_fts_insert AFTER INSERT ON facts BEGIN
            INSERT INTO facts_fts (rowid, text, scope) VALUES (new.rid, new.text, new.scope);
        END;
        CREATE TRIGGER facts_fts_delete AFTER DELETE ON facts BEGIN
            INSERT INTO facts_fts (facts_fts, rowid, text, scope) VALUES ('delete', old.rid, old.text, old.scope);
        END;
        INSERT INTO facts_fts (facts_fts) VALUES ('rebuild');
        """,
    )


def _incremental_vectors(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        -- version moves on every change of a user's vectors; rewrites only when vectors were replaced
        -- or deleted. A cache that sees only version move loads the rows past its high-water rowid.
        ALTER TABLE vector_stamps ADD COLUMN rewrites INTEGER NOT NULL DEFAULT 0;
        -- every index ends with the rowid: (tenant, user, model, rowid > ?) is one range scan
        CREATE INDEX vectors_by_user ON vectors (tenant_id, user_id, model);
        """,
    )

def _audit_chain(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        -- position in the tenant's hash chain (amber.governance.audit); chain_hash already exists
        ALTER TABLE audit ADD COLUMN chain_seq INTEGER;
        CREATE INDEX audit_unchained ON audit (tenant_id, id) WHERE chain_seq IS NULL;
        CREATE INDEX audit_erasures ON audit (tenant_id, user_id)
            WHERE operation IN ('session.delete', 'user.delete', 'retention.prune');
        CREATE TABLE audit_heads (
            tenant_id  TEXT NOT NULL PRIMARY KEY,
            chain_seq  INTEGER NOT NULL,
            chain_hash TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    )


def _single_message_edits(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        -- correct_message rewrites one message's content: keep its FTS5 entry in step
        CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content, scope) VALUES ('delete', old.rid, old.content, old.scope);
            INSERT INTO messages_fts (rowid, content, scope) VALUES (new.rid, new.content, new.scope);
        END;
        -- delete_message writes an erasure receipt too (a late fact learned from it is refused)
        DROP INDEX audit_erasures;
        CREATE INDEX audit_erasures ON audit (tenant_id, user_id)
            WHERE operation IN ('session.delete', 'user.delete', 'retention.prune', 'message.delete');
        """,
    )


def _scrub_owed(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        -- an FTS5 index whose erased terms still sit in old segments: written in the erasure's own
        -- transaction, deleted in the transaction that merges them out (amber.store.sqlite)
        CREATE TABLE fts_scrub_owed (
            fts_table TEXT NOT NULL PRIMARY KEY,
            since     INTEGER NOT NULL,             -- the first erasure not yet scrubbed
            erasures  INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    )


# (version, name, function): ordered and append-only.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "initial_schema", _initial_schema),
    (2, "scoped_search", _scoped_search),
    (3, "incremental_vectors", _incremental_vectors),
    (4, "audit_chain", _audit_chain),
    (5, "single_message_edits", _single_message_edits),
    (6, "scrub_owed", _scrub_owed),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL, applied_by TEXT NOT NULL)"
    )
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
