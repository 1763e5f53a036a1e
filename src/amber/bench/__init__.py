"""Benchmarks: commands that print numbers (``amber bench store``, ``amber bench recall``).

They measure; they never assert. See :func:`amber.bench.store.run_store_bench`.
"""
