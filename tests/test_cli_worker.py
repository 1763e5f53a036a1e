"""`amber worker --once` runs the real learner (rule extractor, no model) over a named memory store."""

from __future__ import annotations

import asyncio
import json
import uuid

from click.testing import CliRunner

import amber
from amber import NewMessage, SessionKey
from amber.cli import main


def test_worker_once_learns_facts_from_new_messages() -> None:
    url = f"memory://worker-{uuid.uuid4().hex}"

    async def seed() -> None:
        store = await amber.open_store(url)
        await store.append_one(SessionKey("acme", "u-42", "claim"), NewMessage("user", "My policy number is P-12345."))

    asyncio.run(seed())
    r = CliRunner().invoke(main, ["--store", url, "--tenant", "acme", "--json", "worker", "--once"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["processed"] >= 1

    async def check() -> list:
        store = await amber.open_store(url)
        return [f for f in await store.list_facts("acme", "u-42")]

    facts = asyncio.run(check())
    assert any("12345" in f.value for f in facts), facts
    again = CliRunner().invoke(main, ["--store", url, "--json", "worker", "--once"])
    assert json.loads(again.output)["processed"] == 0  # nothing left: jobs were completed
