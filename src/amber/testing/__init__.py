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
"""

from .conformance import StoreConformance

__all__ = ["StoreConformance"]
