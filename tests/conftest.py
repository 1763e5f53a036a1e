"""Shared fixtures. Backends under test are real: SQLite files in tmp_path, the PostgreSQL and Redis
servers named by AMBER_TEST_POSTGRES_URL / AMBER_TEST_REDIS_URL (started by scripts/test.sh).

A test whose server is unreachable FAILS, so a green CI run means every backend was exercised.
Set AMBER_TEST_ALLOW_SKIP=1 to skip them instead (local runs without the services)."""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get("AMBER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AMBER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ALLOW_SKIP = os.environ.get("AMBER_TEST_ALLOW_SKIP") == "1"


def unreachable(what: str, exc: BaseException) -> None:
    message = f"{what} is unreachable ({exc!r}); start it (scripts/test.sh does) or set AMBER_TEST_ALLOW_SKIP=1"
    if ALLOW_SKIP:
        pytest.skip(message)
    pytest.fail(message)
