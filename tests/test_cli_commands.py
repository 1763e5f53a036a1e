"""The `amber` CLI against real stores: in-process (click's CliRunner) on a named memory store, and
as real subprocesses on a SQLite file for the cross-process cases (history --follow); `amber jobs`
runs on a real SQLite file both ways."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
from click.testing import CliRunner

import amber
from amber import NewFact, NewMessage, SessionKey
from amber.cli import main

AMBER = os.path.join(os.path.dirname(sys.executable), "amber")  # the installed console script


@pytest.fixture
def url() -> str:
    return f"memory://cli-{uuid.uuid4().hex}"


def run(url: str, *args: str, input: str | None = None, tenant: str = "acme"):
    result = CliRunner().invoke(main, ["--store", url, "--tenant", tenant, *args], input=input,
                                catch_exceptions=False)
    return result


def seed(url: str, tenant: str = "acme") -> list[amber.Message]:
    async def go():
        store = await amber.open_store(url)
        key = SessionKey(tenant, "u-42", "claim-7788")
        msgs = await store.append(key, [NewMessage("user", "my policy number is P-12345", idempotency_key="1"),
                                        NewMessage("assistant", "Thanks, noted.", idempotency_key="2")])
        await store.append_one(SessionKey(tenant, "u-7", "t"), NewMessage("user", "other user"))
        await store.record_fact(tenant, "u-42", NewFact("policy_number", "P-12345", "policy number P-12345",
                                                        source_message_ids=(msgs[0].id,)))
        await store.put_state(key, "team", {"turn": 2})
        return msgs

    return asyncio.run(go())


def test_sessions_history_facts_search_audit_json(url: str) -> None:
    msgs = seed(url)
    r = run(url, "--json", "sessions")
    assert r.exit_code == 0
    assert {s["key"] for s in json.loads(r.output)} == {"acme/u-42/claim-7788", "acme/u-7/t"}
    r = run(url, "--json", "sessions", "--user", "u-42")
    assert [s["message_count"] for s in json.loads(r.output)] == [2]

    r = run(url, "--json", "history", "u-42/claim-7788")
    hist = json.loads(r.output)
    assert [m["content"] for m in hist] == ["my policy number is P-12345", "Thanks, noted."]
    assert hist[0]["id"] == msgs[0].id and hist[0]["seq"] == 1
    assert [m["seq"] for m in json.loads(run(url, "--json", "history", "u-42/claim-7788", "--last", "1").output)] == [2]
    assert [m["seq"] for m in json.loads(run(url, "--json", "history", "acme/u-42/claim-7788", "--since", "1").output)] == [2]
    # another tenant sees nothing of acme's
    assert json.loads(run(url, "--json", "history", "u-42/claim-7788", tenant="other").output) == []

    facts = json.loads(run(url, "--json", "facts", "u-42").output)
    assert [(f["attribute"], f["value"]) for f in facts] == [("policy_number", "P-12345")]
    assert facts[0]["source_message_ids"] == [msgs[0].id]

    hits = json.loads(run(url, "--json", "search", "u-42", "policy number").output)
    assert hits and all(0 <= h["score"] <= 1 for h in hits)
    assert any("P-12345" in h["text"] for h in hits)
    assert json.loads(run(url, "--json", "search", "u-7", "policy").output) == []

    events = json.loads(run(url, "--json", "audit", "--operation", "message.append").output)
    assert events and all(e["operation"] == "message.append" for e in events)
    assert "P-12345" not in json.dumps(events)


def test_tables_render_for_humans(url: str) -> None:
    seed(url)
    out = run(url, "sessions").output
    assert "acme/u-42/claim-7788" in out and "messages" in out
    out = run(url, "history", "u-42/claim-7788").output
    assert "#1" in out and "P-12345" in out
    assert "policy_number" in run(url, "facts", "u-42").output


def test_export_forget_import_through_the_cli(url: str, tmp_path) -> None:
    seed(url)
    dump = tmp_path / "acme.jsonl"
    r = run(url, "--json", "export", "-o", str(dump))
    assert r.exit_code == 0 and json.loads(r.output)["counts"]["messages"] == 3
    assert not (tmp_path / "acme.jsonl.partial").exists()

    r = run(url, "--json", "forget", "--user", "u-42", "--yes")
    receipt = json.loads(r.output)
    assert receipt["operation"] == "user.delete" and receipt["counts"]["messages"] == 2
    assert receipt["counts"]["facts"] == 1
    assert json.loads(run(url, "--json", "history", "u-42/claim-7788").output) == []

    r = run(url, "--json", "import", str(dump))
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["counts"]["messages"] == 2  # u-7's message was still there: deduped by idempotency key
    assert [m["content"] for m in json.loads(run(url, "--json", "history", "u-42/claim-7788").output)] == [
        "my policy number is P-12345", "Thanks, noted."]

    stdout = run(url, "export", "--user", "u-42").output.splitlines()
    assert json.loads(stdout[0])["type"] == "header" and json.loads(stdout[-1])["type"] == "end"


def test_forget_session_asks_and_prints_receipt(url: str) -> None:
    seed(url)
    r = run(url, "forget", "--session", "u-42/claim-7788", input="n\n")
    assert r.exit_code != 0  # declined
    assert len(json.loads(run(url, "--json", "history", "u-42/claim-7788").output)) == 2
    r = run(url, "forget", "--session", "u-42/claim-7788", input="y\n")
    assert r.exit_code == 0 and "session.delete acme/u-42/claim-7788" in r.output and "2 messages" in r.output
    assert run(url, "forget").exit_code == 2  # neither --session nor --user: usage error


def test_forget_one_message_keeps_the_others(url: str) -> None:
    msgs = seed(url)
    r = run(url, "forget", "--session", "u-42/claim-7788", "--message", msgs[0].id, "--yes")
    assert r.exit_code == 0 and f"message.delete acme/u-42/claim-7788: {msgs[0].id}" in r.output
    left = json.loads(run(url, "--json", "history", "u-42/claim-7788").output)
    assert [m["id"] for m in left] == [msgs[1].id]
    assert run(url, "forget", "--session", "u-42/claim-7788", "--message", msgs[0].id, "--yes").exit_code == 1
    assert run(url, "forget", "--user", "u-42", "--message", msgs[1].id, "--yes").exit_code == 2


def test_bad_input_gets_a_clean_error(url: str, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header", "format": "amber.export/1"}\n{"type": "message"}\n')
    r = run(url, "import", str(bad))
    assert r.exit_code == 2 and "import line 2" in r.output
    r = run(url, "history", "not a key")
    assert r.exit_code == 2 and "invalid" in r.output
    r = CliRunner().invoke(main, ["--tenant", "bad tenant!", "sessions"])
    assert r.exit_code == 2 and "--tenant" in r.output


def test_backup_restore_never_resurrects_erased(url: str, tmp_path) -> None:
    seed(url)
    backup = tmp_path / "backup.jsonl"
    assert run(url, "backup", "-o", str(backup)).exit_code == 0
    assert run(url, "forget", "--user", "u-42", "--yes").exit_code == 0  # erased after the backup
    assert run(url, "forget", "--user", "u-7", "--yes").exit_code == 0
    asyncio.run(_append_after(url))
    r = run(url, "--json", "restore", str(backup))
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["counts"]["withheld_erased"] > 0
    assert json.loads(run(url, "--json", "history", "u-42/claim-7788").output) == []
    assert json.loads(run(url, "--json", "facts", "u-42").output) == []


async def _append_after(url: str) -> None:
    store = await amber.open_store(url)
    await store.append_one(SessionKey("acme", "u-9", "new"), NewMessage("user", "after the backup"))


def test_migrate_and_worker_report(url: str) -> None:
    r = run(url, "--json", "migrate")
    assert r.exit_code == 0 and json.loads(r.output)["backend"] == "memory"


def test_serve_refuses_memory_store_with_several_workers(url: str) -> None:
    r = run(url, "serve", "--workers", "2")
    assert r.exit_code != 0 and "cannot share a memory:// store" in r.output


# -- cross-process: a real `amber history --follow` subprocess watching a SQLite file ----------------

def test_history_follow_sees_writes_from_another_process(tmp_path) -> None:
    pytest.importorskip("amber.store.sqlite", reason="the SQLite backend has not landed yet")
    db = f"sqlite:///{tmp_path / 'live.db'}"
    key = SessionKey("acme", "u", "live")

    async def write(text: str) -> None:
        async with await amber.open_store(db) as store:
            await store.append_one(key, NewMessage("user", text))

    asyncio.run(write("before"))
    proc = subprocess.Popen(
        [AMBER, "--store", db, "--tenant", "acme", "--json", "history", "u/live",
         "--follow", "--interval", "0.1", "--max-polls", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = json.loads(proc.stdout.readline())
        assert first["content"] == "before"
        asyncio.run(write("live one"))
        asyncio.run(write("live two"))
        seen = [json.loads(proc.stdout.readline())["content"] for _ in range(2)]
        assert seen == ["live one", "live two"]
    finally:
        proc.kill()
        proc.wait()


# -- dead learn jobs: `amber jobs dead` / `amber jobs requeue` on a real SQLite file -----------------

def _kill_jobs(db: str, errors: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per tenant, one message per error whose learn job is failed for good with that error: job ids."""
    async def go() -> dict[str, list[str]]:
        async with await amber.open_store(db) as store:
            out: dict[str, list[str]] = {}
            for tenant, errs in errors.items():
                key = SessionKey(tenant, "u-1", "claim")
                await store.append(key, [NewMessage("user", e) for e in errs])
                jobs = sorted(await store.claim_learn_jobs(tenant=tenant), key=lambda j: j.seq)
                for job, error in zip(jobs, errs):
                    await store.fail_learn_job(job.id, error, retry_in=None)
                out[tenant] = [j.id for j in jobs]
            return out

    return asyncio.run(go())


def test_jobs_dead_lists_and_requeue_retries_per_tenant(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("AMBER_TENANT", raising=False)  # unscoped means every tenant only without it
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    ids = _kill_jobs(db, {"acme": ["ValueError: bad JSON", "TimeoutError: model"], "other": ["boom"]})

    def cli(*args: str):
        return CliRunner().invoke(main, ["--store", db, *args], catch_exceptions=False)

    r = cli("jobs", "dead", "--tenant", "acme", "--json")
    assert r.exit_code == 0, r.output
    dead = json.loads(r.output)
    assert [(d["id"], d["key"], d["attempts"], d["last_error"]) for d in dead] == [
        (ids["acme"][0], "acme/u-1/claim", 1, "ValueError: bad JSON"),
        (ids["acme"][1], "acme/u-1/claim", 1, "TimeoutError: model")]
    assert all(d["died_at"] and d["message_id"] for d in dead)
    everyone = json.loads(cli("--json", "jobs", "dead").output)  # no tenant given: the whole queue
    assert {d["id"] for d in everyone} == {*ids["acme"], *ids["other"]}
    def dead_ids(*args: str) -> list[str]:
        return [d["id"] for d in json.loads(cli(*args).output)]

    assert dead_ids("--tenant", "other", "--json", "jobs", "dead") == ids["other"]  # the global --tenant
    assert dead_ids("jobs", "dead", "--tenant", "acme", "--limit", "1", "--json") == ids["acme"][:1]
    table = CliRunner().invoke(main, ["--store", db, "jobs", "dead", "--tenant", "acme"],
                               env={"COLUMNS": "200"})  # wide enough for whole ids
    assert table.exit_code == 0 and ids["acme"][0] in table.output and "ValueError: bad JSON" in table.output

    r = cli("--json", "jobs", "requeue", "--tenant", "acme", ids["acme"][1], ids["other"][0], "job-unknown")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"requeued": 1, "skipped": 2, "tenant": "acme"}  # other's is not acme's
    r = cli("jobs", "requeue", "--tenant", "acme", "--all")
    assert r.exit_code == 0 and "requeued 1 dead job(s) of tenant 'acme'" in r.output
    assert json.loads(cli("--json", "jobs", "dead", "--tenant", "acme").output) == []
    assert dead_ids("--json", "jobs", "dead") == ids["other"]

    async def check() -> tuple[dict, dict, list]:
        async with await amber.open_store(db) as store:
            return (dict(await store.learn_queue_stats("acme")), dict(await store.learn_queue_stats("other")),
                    await store.list_audit("acme", operation="learn.requeue"))

    acme, other, audit = asyncio.run(check())
    assert (acme["pending"], acme["dead"], other["dead"]) == (2, 0, 1)
    assert sorted(e.record_ids[0] for e in audit) == sorted(ids["acme"])


def test_jobs_requeue_needs_ids_or_all_and_good_input(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("AMBER_TENANT", raising=False)
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    ids = _kill_jobs(db, {"acme": ["boom"]})
    # the installed console script, as an operator runs it: refused with a clear message, exit 2
    r = subprocess.run([AMBER, "--store", db, "jobs", "requeue"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--all" in r.stderr and "JOB_ID" in r.stderr
    for args in (["jobs", "requeue", "--all", ids["acme"][0]], ["jobs", "dead", "--limit", "0"],
                 ["jobs", "dead", "--tenant", "bad/tenant"],
                 ["jobs", "requeue", "--tenant", "bad/x", "--all"]):
        r = CliRunner().invoke(main, ["--store", db, *args])
        assert r.exit_code == 2, (args, r.output)
    still = json.loads(CliRunner().invoke(main, ["--store", db, "--json", "jobs", "dead"]).output)
    assert [d["id"] for d in still] == ids["acme"]  # nothing refused changed anything
