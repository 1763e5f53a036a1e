"""`amber bench scale` (the CLI face of ``python -m amber.bench.scale``) on real SQLite files.

Uses the ``hash:64`` embedder (feature hashing, no model) so the run is short; the numbers it
prints are real measurements of this run, not checked against any threshold (no timed asserts).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

AMBER = os.path.join(os.path.dirname(sys.executable), "amber")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AMBER_")}


def test_bench_scale_prints_numbers_on_a_temporary_store() -> None:
    r = subprocess.run([AMBER, "bench", "scale", "--memories", "300", "--users", "3", "--queries", "12",
                        "--embedder", "hash:64"], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["benchmark"] == "scale" and doc["store_backend"] == "sqlite"
    assert doc["memories"] == 300 and doc["users"] == 3 and doc["per_user"] == {"messages": 90, "facts": 10}
    assert doc["queries"] == 12 and doc["query_ms"]["n"] == 12 and doc["query_ms"]["p50"] > 0
    assert doc["mean_hits"] > 0 and "NOT embeddings" in doc["vectors"]["source"]
    assert "query p50" in r.stdout  # the human summary line before the JSON
    stages = doc["stages_ms"]  # where the time goes: the recall path's store calls and the rest, clocked
    assert stages["total"]["n"] == 12
    assert {"embed", "lexical", "vector", "rank", "audit"} <= set(stages) and stages["lexical"]["p50"] > 0
    assert stages["audit_flush"]["batches"] >= 1  # the read entries were written (audit trail on)
    assert "stages p50/p95 ms:" in r.stdout


def test_bench_scale_uses_the_global_store_and_cleans_up(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'real.db'}"
    r = subprocess.run([AMBER, "--store", url, "bench", "scale", "--memories", "120", "--users", "2", "--queries",
                        "5", "--embedder", "hash:32"], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["store"] == url and doc["tenant"].startswith("scale-")

    async def users_left() -> list[str]:
        import amber

        store = await amber.open_store(url)
        try:
            return await store.list_users(doc["tenant"])
        finally:
            await store.close()

    assert asyncio.run(users_left()) == []  # the benchmark's users were deleted (audited) afterwards
    # One deferred scrub after the deletions, awaited before the command returned: nothing is owed.
    assert doc["cleanup"]["users"] == 2 and "one scrub" in doc["cleanup"]["scrub"]
    assert "cleanup: deleted 2 users" in r.stdout
    import sqlite3

    conn = sqlite3.connect(tmp_path / "real.db")
    try:
        assert conn.execute("SELECT count(*) FROM fts_scrub_owed").fetchone()[0] == 0
        erasures = conn.execute("SELECT count(*) FROM audit WHERE operation = 'user.delete'").fetchone()[0]
    finally:
        conn.close()
    assert erasures == 2


def test_bench_scale_refuses_bad_input_cleanly() -> None:
    r = subprocess.run([AMBER, "bench", "scale", "--memories", "1", "--users", "2", "--embedder", "hash:16"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([AMBER, "bench", "scale", "--fact-share", "1.5"], env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "fact-share" in r.stderr
