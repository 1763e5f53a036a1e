"""The store conformance suite against PostgreSQL: the shared server (PostgreSQL 15, no pgvector:
vectors as real[], searched exactly) and a private PostgreSQL 18 + pgvector server (native HNSW path).

Every clause uses a random tenant, so the shared server needs no cleanup. Each class uses its own
schema so a developer's local ``amber`` schema is never touched."""

from __future__ import annotations

import pytest

import amber
from amber.errors import StoreUnavailable
from amber.store.base import Capability
from amber.testing import StoreConformance
from conftest import POSTGRES_URL, unreachable
from pgservers import pgvector_server  # noqa: F401 - session fixture

pytestmark = pytest.mark.postgres

CONFORMANCE_SCHEMA = "amber_conformance"


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    async def open_handle(self):
        url = _with_schema(POSTGRES_URL, CONFORMANCE_SCHEMA)

        async def open_() -> amber.Store:
            store = await amber.open_store(url)
            assert Capability.VECTOR_INDEX_NATIVE not in store.capabilities  # the shared server has no pgvector
            return store

        try:
            await (await open_()).close()
        except StoreUnavailable as exc:
            unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
        return open_


@pytest.mark.pgvector
class TestPostgresPgvectorStore(StoreConformance):
    @pytest.fixture
    async def open_handle(self, pgvector_server):  # noqa: F811
        url = _with_schema(pgvector_server.url, CONFORMANCE_SCHEMA)

        async def open_() -> amber.Store:
            store = await amber.open_store(url, require_native_vectors=True)
            assert Capability.VECTOR_INDEX_NATIVE in store.capabilities
            return store

        return open_
