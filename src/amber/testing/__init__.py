"""The conformance suite every Amber backend runs, shipped so third-party backends can run it too.

Subclass :class:`StoreConformance` in a test module and provide an ``open_handle`` fixture: an async
callable that opens a NEW handle on the SAME underlying store each time it is called (so clauses can
check what another process or a reopened store sees)::

    from amber.testing import StoreConformance

    class TestMyBackend(StoreConformance):
        @pytest.fixture
        async def open_handle(self, tmp_path):
            async def open_():
                return await amber.open_store(f"mine://{tmp_path}")
            return open_

The suite needs the ``test`` extra (pytest, pytest-asyncio, hypothesis). Its model-based clause runs
random operation sequences against the backend and the in-memory reference store; a slow backend can
shrink its budget with ``model_based_settings = settings(MODEL_BASED_SETTINGS, max_examples=10)``
(from :mod:`amber.testing.model_based`).
"""

from .conformance import StoreConformance

__all__ = ["StoreConformance"]
