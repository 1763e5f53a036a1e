"""Re-indexing after an embedder change: every session's turns are re-embedded, even when sessions
become active while it runs, and `amber reindex` shows its progress without mixing it into the result."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from click.testing import CliRunner

import amber
from amber import NewMessage, SessionKey
from amber.cli import main
from amber.embed import HashingEmbedder
from amber.learn import reindex

TENANT, USER = "t-reindex", "u-1"


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[amber.Store]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'amber.db'}"
    async with await amber.open_store(url) as s:
        yield s


class _BusyUser(HashingEmbedder):
    """Embeds like HashingEmbedder; on its first call the user writes to an old session, which moves
    it to the front of the "most recently active first" session listing."""

    def __init__(self, store: amber.Store, key: SessionKey) -> None:
        super().__init__(32)
        self._store, self._key, self._fired = store, key, False

    async def embed(self, texts: Any) -> list[list[float]]:
        if not self._fired:
            self._fired = True
            await self._store.append_one(self._key, NewMessage("user", "back to this old thread"))
        return await super().embed(texts)


async def test_a_session_that_becomes_active_during_reindex_is_not_skipped(store: amber.Store) -> None:
    original: set[str] = set()
    for i in range(150):  # two pages of the session listing
        m = await store.append_one(SessionKey(TENANT, USER, f"s{i:03d}"), NewMessage("user", f"turn number {i}"))
        original.add(m.id)
    embedder = _BusyUser(store, SessionKey(TENANT, USER, "s010"))  # on the second page until it moves

    result = await reindex(store, TENANT, embedder, batch_size=16)

    query = (await HashingEmbedder(32).embed(["turn number"]))[0]
    hits = await store.search_vectors(TENANT, USER, embedder.name, query, limit=500, kinds=("message",))
    missing = original - {h.id for h in hits}
    assert not missing, f"{len(missing)} turns were never re-embedded"
    assert result["messages"] >= 150


def test_cli_reindex_reports_progress_on_stderr_and_the_result_on_stdout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'amber.db'}"

    async def seed() -> None:
        async with await amber.open_store(url) as s:
            await s.append(SessionKey(TENANT, USER, "s1"), [NewMessage("user", f"turn {i}") for i in range(40)])

    asyncio.run(seed())
    r = CliRunner().invoke(
        main, ["--store", url, "--tenant", TENANT, "--json", "reindex", "--embedder", "hash:16"],
        catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["messages"] == 40  # stdout is the result alone
    assert "reindexing: 1 users" in r.stderr
