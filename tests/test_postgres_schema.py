"""The schema keeps the promise docs/storage-postgres.md makes for sharding by tenant: every
primary key and unique index of a data table leads with tenant_id (metadata tables excepted)."""

from __future__ import annotations

import psycopg
import pytest

import amber
from conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres

METADATA_TABLES = {"schema_migrations", "vector_indexes"}


async def test_every_key_leads_with_tenant_id() -> None:
    await (await amber.open_store(f"{POSTGRES_URL}?schema=amber_conformance")).close()
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            """
            SELECT c.relname, i.relname, a.attname
            FROM pg_index x
            JOIN pg_class c ON c.oid = x.indrelid
            JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.indkey[0]
            WHERE n.nspname = 'amber_conformance' AND (x.indisunique OR x.indisprimary)
            """
        ).fetchall()
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'amber_conformance'").fetchall()}
    data_tables = tables - METADATA_TABLES
    assert {"sessions", "messages", "states", "facts", "vectors", "learn_jobs", "audit"} <= data_tables
    keyed = {table for table, _, _ in rows}
    assert data_tables <= keyed  # every data table has a primary key
    for table, index, first_column in rows:
        if table not in METADATA_TABLES:
            assert first_column == "tenant_id", f"{table}.{index} does not lead with tenant_id"
