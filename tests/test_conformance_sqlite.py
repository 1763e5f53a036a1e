"""The store conformance suite against real SQLite files (one fresh file per test, in tmp_path)."""

from __future__ import annotations

import pytest

import amber
from amber.testing import StoreConformance


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    def open_handle(self, tmp_path):
        url = f"sqlite:///{tmp_path / 'conformance.db'}"  # absolute tmp path -> sqlite:////tmp/...

        async def open_() -> amber.Store:
            return await amber.open_store(url)

        return open_
