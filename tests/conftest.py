"""Shared fixtures. Backends under test are real: SQLite files in tmp_path, the PostgreSQL and Redis
servers named by AMBER_TEST_POSTGRES_URL / AMBER_TEST_REDIS_URL (started by scripts/test.sh).

A test whose server is unreachable FAILS, so a green CI run means every backend was exercised.
Set AMBER_TEST_ALLOW_SKIP=1 to skip them instead (local runs without the services)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import pytest

POSTGRES_URL = os.environ.get("AMBER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AMBER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ALLOW_SKIP = os.environ.get("AMBER_TEST_ALLOW_SKIP") == "1"
AMBER = os.path.join(os.path.dirname(sys.executable), "amber")  # the installed console script


def unreachable(what: str, exc: BaseException) -> None:
    message = f"{what} is unreachable ({exc!r}); start it (scripts/test.sh does) or set AMBER_TEST_ALLOW_SKIP=1"
    if ALLOW_SKIP:
        pytest.skip(message)
    pytest.fail(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_amber_serve(args: Sequence[str], env: Mapping[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """``amber serve --port <free port> *args`` in a subprocess logging to ``log_path``; returns the
    process and its base URL once /healthz answers. If it does not come up within a minute, it is
    killed and the error carries its log."""
    import httpx

    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([AMBER, "serve", "--port", str(port), *args], env=dict(env),
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError("amber serve did not start:\n" + log_path.read_text())
        time.sleep(0.1)


async def fill_common_and_rare_terms(store, crowd: int = 0) -> None:
    """One user ("t", "u") with 3,001 rows holding "policy" (a common term for every backend's
    bounded lexical path) and one old row that also holds "zebra"; ``crowd`` rows of another tenant
    with the same user id and the same words."""
    from amber.keys import SessionKey
    from amber.records import NewMessage

    key = SessionKey("t", "u", "many")
    await store.append_one(key, NewMessage("user", "policy zebra noted long ago"))
    for b in range(3):
        await store.append(key, [NewMessage("user", f"policy renewal {b}-{i}") for i in range(1000)])
    for b in range(0, crowd, 1000):
        await store.append(SessionKey("other", "u", f"c{b}"),
                           [NewMessage("user", f"policy zebra elsewhere {i}") for i in range(1000)])


async def check_common_and_rare_terms(store) -> None:
    """After fill_common_and_rare_terms: the rare term still finds its one old row first, a common
    term alone fills the limit, and no row of another tenant ever comes back."""
    hits = await store.search_text("t", "u", "policy zebra", limit=5)
    assert hits[0].text == "policy zebra noted long ago"
    common = await store.search_text("t", "u", "policy", limit=7)
    assert len(common) == 7 and all(0.0 <= h.score <= 1.0 for h in hits + common)
    assert all(h.tenant == "t" and h.user == "u" and "elsewhere" not in h.text for h in hits + common)
    assert await store.search_text("t", "u", "elsewhere") == []
