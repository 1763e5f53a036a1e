from __future__ import annotations

import uuid

import pytest

import amber
from amber.testing import StoreConformance


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def open_handle(self):
        name = f"conf-{uuid.uuid4().hex}"  # a named in-process store: every handle sees the same data

        async def open_() -> amber.Store:
            return await amber.open_store(f"memory://{name}")

        return open_
