"""The memory inspector (`/ui`) against a live `amber serve` subprocess over a SQLite file, with data
seeded through the REST API and facts learned by the real ``Learner`` in another process (rule
extractor, the model-free ``hash`` embedder, so no model is needed).

* the JSON routes the page uses, over HTTP: tenant scoping, doctor's random-key heuristic, the exact
  memory block (compared with ``render_block`` computed in this process), admin-only routes;
* the page itself in Debian's headless Chromium (``tests/ui/e2e.mjs`` driven by playwright-core):
  sign in, live follow of a message written by another process, fact -> source message, recall
  block, tenant isolation, admin views, keyboard-only navigation. Screenshots go to
  ``test-artifacts/ui/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from conftest import start_amber_serve

pytest.importorskip("fastapi")
pytest.importorskip("amber.store.sqlite", reason="the inspector tests run over a SQLite file")

ROOT = Path(__file__).resolve().parent.parent
UI_TESTS = ROOT / "tests" / "ui"
STATIC = ROOT / "src" / "amber" / "server" / "static"
ADMIN = "admin-" + secrets.token_hex(16)
CHROMIUM = "/usr/bin/chromium"

# Appends one user message from a separate process, straight through the Store API (not the server).
WRITER = """
import asyncio, sys
import amber

async def main(url, tenant, user, thread, text):
    store = await amber.open_store(url)
    try:
        await store.append(amber.SessionKey(tenant, user, thread), [amber.NewMessage(role="user", content=text)])
    finally:
        await store.close()

asyncio.run(main(*sys.argv[1:]))
"""


# What `amber worker` does, once: the real Learner (rule extractor) with the model-free hash embedder.
LEARN = """
import asyncio, sys
import amber
from amber.embed import open_embedder
from amber.learn import Learner

async def main(url):
    store = await amber.open_store(url)
    try:
        print(await Learner(store, embedder=open_embedder("hash")).drain())
    finally:
        await store.close()

asyncio.run(main(sys.argv[1]))
"""


def _issue(admin: httpx.Client, tenant: str) -> str:
    assert admin.post("/v1/admin/tenants", json={"tenant": tenant}).status_code in (200, 201)
    r = admin.post(f"/v1/admin/tenants/{tenant}/keys", json={"label": "inspector test"})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


def _append(client: httpx.Client, user: str, thread: str, *turns: tuple[str, str], days_ago: float = 0) -> None:
    """Append turns dated ``days_ago`` (so learned facts have a history worth a timeline)."""
    at = (datetime.now(timezone.utc) - timedelta(days=days_ago)).isoformat()
    r = client.post(f"/v1/users/{user}/sessions/{thread}/messages",
                    json={"messages": [{"role": role, "content": text, "created_at": at} for role, text in turns]})
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def inspector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspector")
    url = f"sqlite:///{tmp / 'amber.db'}"
    log_path = tmp / "server.log"
    env = {**os.environ, "AMBER_ADMIN_KEY": ADMIN, "AMBER_STORE": url, "AMBER_EMBEDDER": "hash"}
    env.pop("WEB_CONCURRENCY", None)
    proc, base = start_amber_serve([], env, log_path)
    try:
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
        key_a, key_b = _issue(admin, "acme"), _issue(admin, "globex")
        a = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key_a}"}, timeout=60)
        b = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key_b}"}, timeout=60)
        _append(a, "u-42", "claim-7788",
                ("user", "Hi, my policy number is P-1234 and I prefer email."),
                ("assistant", "Thanks, I noted policy P-1234."), days_ago=40)
        _append(a, "u-42", "billing", ("user", "I live in Lisbon. I work at Harbor Logistics."), days_ago=25)
        _append(a, "u-42", "claim-7788",
                ("user", "Update: my policy number is now P-9999 after the renewal."),
                ("assistant", "Updated: your policy is P-9999."), days_ago=10)
        for _ in range(6):  # an app that keys every request with a fresh uuid
            _append(a, "anon", uuid.uuid4().hex, ("user", "what are your opening hours?"))
        _append(b, "bob", "vault", ("user", "The vault code is TENANT-B-SECRET-7731, my policy number is B-5555."))
        learner = subprocess.run([sys.executable, "-c", LEARN, url], env=env, capture_output=True, text=True,
                                 timeout=300)
        assert learner.returncode == 0 and int(learner.stdout) >= 10, learner.stdout + learner.stderr
        yield {"base": base, "url": url, "admin": admin, "a": a, "b": b, "key_a": key_a, "key_b": key_b,
               "log": log_path}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- the page and its assets -----------------------------------------------------------------------------


def test_page_and_assets_are_served_with_a_self_only_policy(inspector) -> None:
    r = httpx.get(inspector["base"] + "/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert '<script type="module" src="/ui/static/app.js">' in r.text
    for name, kind in (("app.js", "javascript"), ("app.css", "css"), ("favicon.svg", "svg")):
        asset = httpx.get(f"{inspector['base']}/ui/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"], name
    for bad in ("index.html.bak", "..%2Fapp.py", "ui.py"):
        assert httpx.get(f"{inspector['base']}/ui/static/{bad}").status_code == 404
    assert httpx.get(inspector["base"] + "/ui/", follow_redirects=False).status_code == 308


def test_assets_reference_nothing_outside_the_server() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        outside = [u for u in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)
                   if "www.w3.org/2000/svg" not in u]
        assert not outside, (path.name, outside)
        assert "@import" not in text and "fonts.googleapis" not in text


# -- JSON routes ---------------------------------------------------------------------------------------------


def test_sessions_are_flagged_by_doctors_heuristic(inspector) -> None:
    page = inspector["a"].get("/v1/inspect/sessions").json()
    by_thread = {s["thread"]: s for s in page["items"]}
    assert by_thread["claim-7788"]["message_count"] >= 4 and not by_thread["claim-7788"]["looks_random"]
    anon = [s for s in page["items"] if s["user"] == "anon"]
    assert len(anon) == 6 and all(s["looks_random"] for s in anon)
    assert set(page["flagged_users"]) == {"anon"} and "6 of 6 sessions" in page["flagged_users"]["anon"]
    assert all(s["user"] != "bob" for s in page["items"])
    only = inspector["a"].get("/v1/inspect/sessions", params={"user": "u-42"}).json()["items"]
    assert {s["thread"] for s in only} == {"claim-7788", "billing"}


def test_learning_queue_is_per_tenant(inspector) -> None:
    q = inspector["a"].get("/v1/inspect/learning").json()
    assert q["tenant"] == "acme" and set(q["counts"]) >= {"pending", "leased", "dead"}
    assert q["counts"]["dead"] == 0
    all_q = inspector["admin"].get("/v1/admin/learning").json()
    assert all_q["tenant"] is None and set(all_q["counts"]) >= {"pending", "leased", "dead"}
    assert inspector["a"].get("/v1/admin/learning").status_code == 401


def test_fact_sources_are_located_only_in_the_callers_tenant(inspector) -> None:
    facts = inspector["a"].get("/v1/users/u-42/facts", params={"include_superseded": "true"}).json()["items"]
    policy = [f for f in facts if f["value"] == "P-9999"]
    assert policy and any(f["value"] == "P-1234" and f["superseded_by"] for f in facts)
    source = policy[0]["source_message_ids"][0]
    found = inspector["a"].get(f"/v1/users/u-42/messages/{source}").json()
    assert found["thread"] == "claim-7788" and "P-9999" in found["message"]["content"]
    hinted = inspector["a"].get(f"/v1/users/u-42/messages/{source}", params={"thread": "billing"}).json()
    assert hinted["thread"] == "claim-7788"
    bob_facts = inspector["b"].get("/v1/users/bob/facts").json()["items"]
    bob_source = bob_facts[0]["source_message_ids"][0]
    r = inspector["a"].get(f"/v1/users/bob/messages/{bob_source}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert inspector["a"].get(f"/v1/users/u-42/messages/{bob_source}").status_code == 404


async def test_recall_preview_returns_the_exact_block_render_block_makes(inspector) -> None:
    from amber import open_store
    from amber.embed import open_embedder
    from amber.recall import Recall, render_block

    body = {"query": "what is my policy number", "limit": 6, "max_tokens": 300}
    out = inspector["a"].post("/v1/users/u-42/recall/preview", json=body).json()
    assert out["modes"] == ["lexical", "vector"] and out["embedder"] == "hash-256"
    assert out["items"] and all(0.0 <= h["score"] <= 1.0 and "fused" in h["paths"] for h in out["items"])
    assert any("vector" in h["paths"] for h in out["items"]) and any("lexical" in h["paths"] for h in out["items"])
    block = out["block"]
    assert block["text"].startswith("<amber-memory>") and "P-9999" in block["text"] and block["tokens"] <= 300
    store = await open_store(inspector["url"])
    try:
        hits = await Recall(store, embedder=open_embedder("hash")).search("acme", "u-42", body["query"], limit=6)
        expected = render_block(hits, max_tokens=300)
    finally:
        await store.close()
    assert block["text"] == expected.text and block["tokens"] == expected.tokens
    assert block["hit_ids"] == [h.id for h in expected.hits]
    lexical = inspector["a"].post("/v1/users/u-42/recall/preview", json={**body, "modes": ["lexical"]}).json()
    assert lexical["modes"] == ["lexical"] and all("vector" not in h["paths"] for h in lexical["items"])
    assert inspector["a"].post("/v1/users/bob/recall/preview", json=body).status_code == 404
    assert inspector["a"].post("/v1/users/u-42/recall/preview", json={**body, "max_tokens": 10}).status_code == 422


def test_admin_routes_show_doctor_findings_and_refuse_tenant_keys(inspector) -> None:
    admin, a = inspector["admin"], inspector["a"]
    doc = admin.get("/v1/admin/doctor", params={"tenant": "acme"}).json()
    codes = {f["code"] for f in doc["findings"]}
    assert doc["ok"] is False and {"ephemeral_location", "random_session_keys"} <= codes
    assert doc["store"].startswith("sqlite:")
    assert "random_session_keys" not in {f["code"] for f in admin.get(
        "/v1/admin/doctor", params={"tenant": "globex"}).json()["findings"]}
    for path in ("/v1/admin/doctor", "/v1/admin/learning"):
        assert a.get(path).status_code == 401
    assert httpx.get(inspector["base"] + "/v1/inspect/sessions").status_code == 401
    assert admin.get("/v1/admin/doctor", params={"tenant": "no such/tenant"}).status_code == 400


def test_committed_openapi_documents_the_inspector_routes() -> None:
    spec = json.loads((ROOT / "docs" / "openapi.json").read_text())
    for path in ("/v1/inspect/sessions", "/v1/inspect/learning", "/v1/users/{user}/messages/{message_id}",
                 "/v1/users/{user}/recall/preview", "/v1/admin/doctor", "/v1/admin/learning"):
        assert path in spec["paths"], path
    assert "/ui" not in spec["paths"]
    types = (ROOT / "clients" / "typescript" / "src" / "api-types.d.ts").read_text()
    assert "export interface RecallPreviewOut" in types and "export interface InspectSession " in types


# -- the page in a real browser --------------------------------------------------------------------------------


def test_inspector_end_to_end_in_headless_chromium(inspector) -> None:
    node = shutil.which("node")
    if node is None or not os.path.exists(CHROMIUM):
        pytest.fail("the inspector's browser test needs node and Debian's chromium: run scripts/bootstrap.sh")
    if not (UI_TESTS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is not installed in tests/ui: run scripts/bootstrap.sh (npm ci there)")
    artifacts = ROOT / "test-artifacts" / "ui"
    shutil.rmtree(artifacts, ignore_errors=True)
    writer = [sys.executable, "-c", WRITER, inspector["url"], "acme", "u-42", "claim-7788"]
    env = {**os.environ, "AMBER_UI_BASE": inspector["base"], "AMBER_UI_KEY_A": inspector["key_a"],
           "AMBER_UI_KEY_B": inspector["key_b"], "AMBER_UI_ADMIN": ADMIN, "AMBER_UI_WRITER": json.dumps(writer),
           "AMBER_UI_ARTIFACTS": str(artifacts), "AMBER_UI_CHROMIUM": CHROMIUM}
    r = subprocess.run([node, "e2e.mjs"], cwd=UI_TESTS, env=env, capture_output=True, text=True, timeout=420)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    checks = {c["name"]: c for c in result["checks"]}
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
    assert not failed, "\n".join(failed)
    expected = {"login", "login_refuses_a_wrong_key", "sessions", "live_follow", "facts_timeline", "fact_provenance", "recall_block",
                "audit_tenant", "tenant_isolation", "tenant_b_control", "admin", "keyboard",
                "no_outside_requests", "no_page_errors"}
    assert expected <= set(checks), expected - set(checks)
    assert len(result["screenshots"]) >= 12 and all(Path(p).stat().st_size > 5000 for p in result["screenshots"])
    # The message the other process wrote is really stored, after the ones seeded.
    msgs = inspector["a"].get("/v1/users/u-42/sessions/claim-7788/messages").json()["items"]
    assert msgs[-1]["content"].startswith("Live note from another process")
