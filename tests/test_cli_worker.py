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


def test_worker_runs_the_model_extractor_from_a_component_config(tmp_path) -> None:
    """`amber worker --extractor model --model-config FILE` calls any AutoGen ChatCompletionClient; here
    AutoGen's own ReplayChatCompletionClient (no LLM is reachable), configured the way a deployment would."""
    from autogen_ext.models.replay import ReplayChatCompletionClient

    url = f"memory://worker-{uuid.uuid4().hex}"
    answer = json.dumps({"facts": [{"attribute": "policy_number", "value": "P-777",
                                    "text": "The user's policy number is P-777.", "kind": "identifier"}]})
    client = ReplayChatCompletionClient([answer], model_info={
        "vision": False, "function_calling": False, "json_output": True, "family": "replay",
        "structured_output": True})
    config = tmp_path / "model.json"
    config.write_text(client.dump_component().model_dump_json())

    async def seed() -> None:
        store = await amber.open_store(url)
        await store.append_one(SessionKey("acme", "u-7", "t"), NewMessage("user", "I'm on policy seven-seven-seven"))

    asyncio.run(seed())
    r = CliRunner().invoke(main, ["--store", url, "--json", "worker", "--once", "--extractor", "model",
                                  "--model-config", str(config)], catch_exceptions=False)
    assert r.exit_code == 0, r.output

    async def facts() -> list:
        return await (await amber.open_store(url)).list_facts("acme", "u-7")

    assert [(f.attribute, f.value) for f in asyncio.run(facts())] == [("policy_number", "P-777")]

    missing = CliRunner().invoke(main, ["--store", url, "worker", "--once", "--extractor", "model"])
    assert missing.exit_code == 2 and "--model-config" in missing.output
    config.write_text('{"provider": "no.such.Client", "config": {}}')
    broken = CliRunner().invoke(main, ["--store", url, "worker", "--once", "--extractor", "model",
                                       "--model-config", str(config)])
    assert broken.exit_code == 1 and "cannot load the model client" in broken.output
