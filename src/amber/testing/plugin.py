"""pytest plugin (entry point ``pytest11: amber``): registers Amber's markers so a third-party
backend's test run knows them when it imports :class:`amber.testing.StoreConformance`."""

from __future__ import annotations


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    for marker in (
        "amber_conformance: a clause of Amber's store conformance suite",
        "slow: long-running fault-injection tests",
        "postgres: needs the PostgreSQL server",
        "redis: needs the Redis server",
        "pgvector: needs a pgvector-enabled PostgreSQL",
    ):
        config.addinivalue_line("markers", marker)
