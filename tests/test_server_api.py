"""`amber serve` as a real subprocess on a loopback port, over a SQLite file, exercised over HTTP:
every endpoint, the cross-tenant matrix, forged/revoked/missing keys, limits, the error envelope,
metrics, JSON logs, and the committed OpenAPI document."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import httpx
import pytest

from conftest import start_amber_serve

pytest.importorskip("fastapi")
pytest.importorskip("amber.store.sqlite", reason="the server tests run over a SQLite file")

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "admin-" + secrets.token_hex(16)
S = "/v1/users/{user}/sessions/{thread}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    log_path = tmp / "server.log"
    env = {**os.environ, "AMBER_ADMIN_KEY": ADMIN, "AMBER_STORE": f"sqlite:///{tmp / 'amber.db'}"}
    env.pop("WEB_CONCURRENCY", None)
    proc, base = start_amber_serve(["--max-body", "200000"], env, log_path)
    yield {"base": base, "log": log_path, "pid": proc.pid}
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def admin(server):
    return httpx.Client(base_url=server["base"], headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)


def tenant_client(server, admin, tenant: str) -> tuple[httpx.Client, str]:
    r = admin.post("/v1/admin/tenants", json={"tenant": tenant})
    assert r.status_code in (200, 201), r.text
    r = admin.post(f"/v1/admin/tenants/{tenant}/keys", json={"label": "test"})
    assert r.status_code == 201, r.text
    body = r.json()
    return httpx.Client(base_url=server["base"], headers={"Authorization": f"Bearer {body['api_key']}"},
                        timeout=30), body["key_id"]


@pytest.fixture(scope="module")
def a(server, admin):
    return tenant_client(server, admin, "tenant-a")[0]


@pytest.fixture(scope="module")
def b(server, admin):
    return tenant_client(server, admin, "tenant-b")[0]


def err(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


# -- ops ------------------------------------------------------------------------------------------------

def test_health_ready_metrics(server) -> None:
    h = httpx.get(server["base"] + "/healthz").json()
    assert h["status"] == "ok" and isinstance(h["pid"], int)
    assert httpx.get(server["base"] + "/readyz").json() == {"status": "ready", "backend": "sqlite"}
    text = httpx.get(server["base"] + "/metrics").text
    assert "amber_http_requests_total" in text and 'route="/healthz"' in text


def test_committed_openapi_matches_the_running_server(server) -> None:
    served = httpx.get(server["base"] + "/openapi.json").json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == committed, "docs/openapi.json is stale: run `amber serve --openapi > docs/openapi.json`"


# -- admin and keys ---------------------------------------------------------------------------------------

def test_admin_manages_tenants_and_keys(server, admin) -> None:
    client, key_id = tenant_client(server, admin, "tenant-keys")
    assert "tenant-keys" in admin.get("/v1/admin/tenants").json()["items"]
    assert admin.post("/v1/admin/tenants", json={"tenant": "tenant-keys"}).json()["created"] is False
    keys = admin.get("/v1/admin/tenants/tenant-keys/keys").json()["items"]
    assert [k["key_id"] for k in keys] == [key_id] and "api_key" not in keys[0] and "hash" not in keys[0]
    err(admin.post("/v1/admin/tenants", json={"tenant": "amber-admin"}), 400)
    err(admin.post("/v1/admin/tenants", json={"tenant": "bad tenant"}), 400, "invalid_session_key")
    err(admin.post("/v1/admin/tenants/nope/keys", json={}), 404)
    err(admin.delete("/v1/admin/keys/0000000000000000"), 404)
    # the admin API needs the admin key; a tenant key is not one
    err(httpx.get(server["base"] + "/v1/admin/tenants"), 401, "unauthorized")
    err(client.get("/v1/admin/tenants"), 401)
    # the admin key is not a tenant key either
    err(admin.get("/v1/sessions"), 401)


def test_forged_revoked_and_missing_keys_are_refused(server, admin) -> None:
    client, key_id = tenant_client(server, admin, "tenant-revoke")
    assert client.get("/v1/sessions").status_code == 200
    real = client.headers["Authorization"].split()[1]
    base = server["base"]
    forged = [
        "x",                                            # too short
        "amb_" + key_id + "_" + "A" * 43,               # right id, wrong secret
        "amb_" + "0" * 16 + "_" + real.split("_")[2],   # right secret, other id
        real[:-1] + ("A" if real[-1] != "A" else "B"),  # one character changed
        "not-a-key", real + "x",
    ]
    err(httpx.get(base + "/v1/sessions"), 401, "unauthorized")
    for k in forged:
        err(httpx.get(base + "/v1/sessions", headers={"Authorization": f"Bearer {k}"}), 401, "unauthorized")
    err(httpx.get(base + "/v1/sessions", headers={"Authorization": f"Basic {real}"}), 401)
    revoked = admin.delete(f"/v1/admin/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    err(client.get("/v1/sessions"), 401, "unauthorized")  # at once
    err(client.post(S.format(user="u", thread="t") + "/messages",
                    json={"messages": [{"role": "user", "content": "x"}]}), 401)
    assert "amber_auth_failures_total" in httpx.get(base + "/metrics").text


# -- messages ---------------------------------------------------------------------------------------------

def test_append_with_idempotency_key_stores_one_message(a) -> None:
    url = S.format(user="u-idem", thread="t-1") + "/messages"
    body = {"messages": [{"role": "user", "content": "my claim is C-7788"}]}
    first = a.post(url, json=body, headers={"Idempotency-Key": "req-1"})
    assert first.status_code == 201 and first.json()["replayed"] is False
    retry = a.post(url, json=body, headers={"Idempotency-Key": "req-1"})
    assert retry.status_code == 200 and retry.json()["replayed"] is True
    assert retry.json()["messages"][0]["id"] == first.json()["messages"][0]["id"]
    items = a.get(url).json()["items"]
    assert [m["content"] for m in items] == ["my claim is C-7788"]
    assert items[0]["key"] == "tenant-a/u-idem/t-1" and items[0]["idempotency_key"] == "req-1"
    # batches derive one key per message from the header
    two = {"messages": [{"role": "assistant", "content": "noted"}, {"role": "user", "content": "thanks"}]}
    assert a.post(url, json=two, headers={"Idempotency-Key": "req-2"}).json()["replayed"] is False
    assert a.post(url, json=two, headers={"Idempotency-Key": "req-2"}).json()["replayed"] is True
    assert [m["seq"] for m in a.get(url).json()["items"]] == [1, 2, 3]


def test_window_since_pagination_and_session_listing(a) -> None:
    sess = S.format(user="u-page", thread="t-long")
    msgs = [{"role": "user", "content": f"m{i} " + "word " * 5, "idempotency_key": f"k{i}",
             "payload": {"i": i}, "metadata": {"n": i}, "created_at": f"2024-01-01T00:00:{i:02d}+00:00"}
            for i in range(25)]
    assert a.post(sess + "/messages", json={"messages": msgs}).status_code == 201
    page1 = a.get(sess + "/messages", params={"limit": 10}).json()
    assert [m["seq"] for m in page1["items"]] == list(range(1, 11)) and page1["next_after_seq"] == 10
    page3 = a.get(sess + "/messages", params={"after_seq": 20, "limit": 10}).json()
    assert [m["seq"] for m in page3["items"]] == [21, 22, 23, 24, 25] and page3["next_after_seq"] is None
    assert page3["items"][0]["payload"] == {"i": 20} and page3["items"][0]["created_at"].startswith("2024-01-01")
    win = a.get(sess + "/window", params={"last": 3}).json()["items"]
    assert [m["seq"] for m in win] == [23, 24, 25]
    per = win[0]["tokens"]
    assert len(a.get(sess + "/window", params={"max_tokens": per * 2}).json()["items"]) == 2
    info = a.get(sess).json()
    assert info["message_count"] == 25 and info["user"] == "u-page" and info["thread"] == "t-long"
    listed = a.get("/v1/sessions", params={"user": "u-page"}).json()
    assert [s["thread"] for s in listed["items"]] == ["t-long"] and listed["next_offset"] is None
    assert "u-page" in a.get("/v1/users").json()["items"]
    first = a.get("/v1/sessions", params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["next_offset"] == 1


def test_bad_requests_get_the_envelope_and_write_nothing(a) -> None:
    sess = S.format(user="u-bad", thread="t")
    a.post(sess + "/messages", json={"messages": [{"role": "user", "content": "keep"}]})
    err(a.post(sess + "/messages", json={"messages": [{"role": "wizard", "content": "x"}]}), 422, "invalid_request")
    err(a.post(sess + "/messages", json={"messages": [{"role": "user", "content": "ok"},
                                                      {"role": "user", "content": "nul \u0000"}]}),
        400, "invalid_input")
    err(a.post(sess + "/messages", json={"messages": [{"role": "user", "content": "x",
                                                       "created_at": "2024-01-01T00:00:00"}]}), 400)
    err(a.post(S.format(user="bad user", thread="t") + "/messages",
               json={"messages": [{"role": "user", "content": "x"}]}), 400, "invalid_session_key")
    err(a.post(sess + "/messages", content=b"{not json", headers={"Content-Type": "application/json"}), 422)
    err(a.post(sess + "/messages", json={"messages": [{"role": "user", "content": "x" * 300_000}]}),
        413, "request_too_large")
    err(a.get(sess + "/messages", params={"limit": 0}), 422)
    err(a.get("/v1/nope"), 404, "not_found")
    err(a.put(sess, json={}), 405)
    assert [m["content"] for m in a.get(sess + "/messages").json()["items"]] == ["keep"]


# -- state ----------------------------------------------------------------------------------------------

def test_state_compare_and_set_with_etags(a) -> None:
    url = S.format(user="u-state", thread="t") + "/state/team"
    err(a.get(url), 404, "not_found")
    r = a.put(url, json={"data": {"turn": 1}}, headers={"If-None-Match": "*"})
    assert r.status_code == 200 and r.headers["ETag"] == '"1"' and r.json()["version"] == 1
    err(a.put(url, json={"data": {"turn": 9}}, headers={"If-None-Match": "*"}), 412, "version_conflict")
    got = a.get(url)
    assert got.json()["data"] == {"turn": 1} and got.headers["ETag"] == '"1"'
    r = a.put(url, json={"data": {"turn": 2}}, headers={"If-Match": got.headers["ETag"]})
    assert r.headers["ETag"] == '"2"'
    err(a.put(url, json={"data": {"turn": 3}}, headers={"If-Match": '"1"'}), 412, "version_conflict")
    err(a.put(url, json={"data": {}}, headers={"If-Match": "garbage"}), 400)
    assert a.put(url, json={"data": {"turn": 4}}).json()["version"] == 3  # unconditional
    assert a.get(S.format(user="u-state", thread="t") + "/state").json()["items"] == ["team"]
    err(a.put(S.format(user="u-state", thread="t") + "/state/bad name", json={"data": {}}), 400)


# -- facts and recall -----------------------------------------------------------------------------------

def test_facts_supersede_history_delete_and_recall(a) -> None:
    sess = S.format(user="u-fact", thread="claim")
    m1 = a.post(sess + "/messages", json={"messages": [{"role": "user", "content": "I live at 1 Old Road"}]}
                ).json()["messages"][0]
    old = a.post("/v1/users/u-fact/facts", json={"attribute": "address", "value": "1 Old Road",
                                                  "text": "address: 1 Old Road", "source_message_ids": [m1["id"]]})
    assert old.status_code == 201
    new = a.post("/v1/users/u-fact/facts", json={"attribute": "address", "value": "2 New Street",
                                                  "text": "address: 2 New Street", "supersedes": [old.json()["id"]]})
    assert new.status_code == 201
    err(a.post("/v1/users/u-fact/facts", json={"attribute": "address", "value": "x", "text": "x",
                                                "supersedes": [old.json()["id"]]}), 412)
    current = a.get("/v1/users/u-fact/facts").json()["items"]
    assert [f["value"] for f in current] == ["2 New Street"]
    history = a.get("/v1/users/u-fact/facts", params={"include_superseded": True}).json()["items"]
    closed = next(f for f in history if f["id"] == old.json()["id"])
    assert closed["valid_to"] and closed["superseded_by"] == new.json()["id"]
    assert closed["source_message_ids"] == [m1["id"]]
    assert a.get(f"/v1/users/u-fact/facts/{new.json()['id']}").json()["value"] == "2 New Street"
    hits = a.post("/v1/users/u-fact/recall", json={"query": "New Street address"}).json()["items"]
    assert hits and hits[0]["kind"] == "fact" and "New Street" in hits[0]["text"]
    assert all(0 <= h["score"] <= 1 for h in hits)
    assert a.delete(f"/v1/users/u-fact/facts/{new.json()['id']}").status_code == 204
    err(a.delete(f"/v1/users/u-fact/facts/{new.json()['id']}"), 404)
    err(a.post("/v1/users/u-fact/recall", json={"query": ""}), 422)


def test_one_message_is_deleted_or_corrected_singly(a) -> None:
    sess = S.format(user="u-edit", thread="claim")
    stored = a.post(sess + "/messages", json={"messages": [
        {"role": "user", "content": "my policy is P-1111"}, {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "my card is 4111 1111 1111 1111"}]}).json()["messages"]
    first, second, third = (m["id"] for m in stored)
    fixed = a.patch(f"{sess}/messages/{first}", json={"content": "my policy is P-2222", "reason": "typo"})
    assert fixed.status_code == 200, fixed.text
    body = fixed.json()
    assert (body["id"], body["seq"], body["content"]) == (first, 1, "my policy is P-2222")
    assert body["metadata"]["correction_reason"] == "typo" and body["metadata"]["corrected_at"]
    assert a.delete(f"{sess}/messages/{third}").status_code == 204
    err(a.delete(f"{sess}/messages/{third}"), 404, "not_found")
    err(a.patch(f"{sess}/messages/{third}", json={"content": "x"}), 404, "not_found")
    err(a.patch(f"{sess}/messages/{first}", json={"content": "x", "extra": 1}), 422)
    items = a.get(sess + "/messages").json()["items"]
    assert [(m["seq"], m["content"]) for m in items] == [(1, "my policy is P-2222"), (2, "noted")]
    assert a.get(sess).json()["last_seq"] == 3  # never reused
    hits = a.post("/v1/users/u-edit/recall", json={"query": "policy P-1111 card"}).json()["items"]
    assert not any("P-1111" in h["text"] or "4111" in h["text"] for h in hits)
    audit = a.get("/v1/audit", params={"user": "u-edit"}).json()["items"]
    ops = {e["operation"]: e for e in audit}
    assert ops["message.correct"]["record_ids"] == [first] and ops["message.delete"]["record_ids"] == [third]
    assert "P-2222" not in json.dumps(audit) and "typo" not in json.dumps(audit)
    assert second  # untouched


# -- forget, export, import, audit ------------------------------------------------------------------------

def test_forget_export_import_round_trip_over_http(a, server) -> None:
    sess = S.format(user="u-move", thread="claim-1")
    a.post(sess + "/messages", json={"messages": [{"role": "user", "content": "policy P-1", "idempotency_key": "p1"},
                                                  {"role": "assistant", "content": "ok", "idempotency_key": "p2"}]})
    a.put(sess + "/state/agent", json={"data": {"x": 1}})
    a.post("/v1/users/u-move/facts", json={"attribute": "policy", "value": "P-1", "text": "policy P-1"})
    exported = a.get("/v1/export", params={"user": "u-move"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
    lines = exported.text.splitlines()
    assert json.loads(lines[-1])["counts"] == {"sessions": 1, "messages": 2, "states": 1, "facts": 1}

    receipt = a.delete("/v1/users/u-move").json()
    assert receipt["operation"] == "user.delete" and receipt["counts"]["messages"] == 2
    err(a.get(sess), 404)
    err(a.delete("/v1/users/u-move"), 404)

    r = a.post("/v1/import", content=exported.content, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    assert r.json()["counts"]["messages"] == 2 and r.json()["warnings"] == [] and r.json()["ids_remapped"] == 0
    again = a.get("/v1/export", params={"user": "u-move"}).text.splitlines()
    assert again[1:] == lines[1:]  # exact: the same records, ids and times included, but the header's time
    err(a.post("/v1/import", content=b'{"type":"header","format":"amber.export/1"}\n'), 400, "invalid_input")

    receipt = a.delete(sess).json()
    assert receipt["operation"] == "session.delete" and receipt["counts"]["messages"] == 2
    err(a.delete(sess), 404)

    audit = a.get("/v1/audit", params={"user": "u-move"}).json()["items"]
    ops = [e["operation"] for e in audit]
    assert "user.delete" in ops and "session.delete" in ops
    assert all(e["actor"].startswith("apikey:") for e in audit)
    assert "P-1" not in json.dumps(audit)


# -- cross-tenant isolation -----------------------------------------------------------------------------------

def test_cross_tenant_matrix(a, b) -> None:
    sess = S.format(user="u-secret", thread="claim-9")
    msg = a.post(sess + "/messages", json={"messages": [{"role": "user", "content": "secret P-999"}]}).json()
    a.put(sess + "/state/agent", json={"data": {"secret": True}})
    fact = a.post("/v1/users/u-secret/facts", json={"attribute": "policy", "value": "P-999",
                                                     "text": "policy P-999"}).json()
    before = [l for l in a.get("/v1/export").text.splitlines()[1:]]

    reads = [
        ("GET", sess, None), ("GET", sess + "/messages", None), ("GET", sess + "/window", None),
        ("GET", sess + "/state", None), ("GET", sess + "/state/agent", None),
        ("GET", "/v1/users/u-secret/facts", None), ("GET", f"/v1/users/u-secret/facts/{fact['id']}", None),
        ("POST", "/v1/users/u-secret/recall", {"query": "secret P-999"}),
        ("GET", "/v1/export?user=u-secret", None), ("GET", "/v1/export?user=u-secret&thread=claim-9", None),
        ("DELETE", f"/v1/users/u-secret/facts/{fact['id']}", None), ("DELETE", sess, None),
        ("DELETE", "/v1/users/u-secret", None),
        ("DELETE", sess + f"/messages/{msg['messages'][0]['id']}", None),
        ("PATCH", sess + f"/messages/{msg['messages'][0]['id']}", {"content": "hijacked"}),
        ("POST", "/v1/users/u-secret/facts", {"attribute": "policy", "value": "X", "text": "X",
                                               "supersedes": [fact["id"]]}),
    ]
    for method, url, body in reads:
        r = b.request(method, url, json=body)
        err(r, 404)
        assert "P-999" not in r.text
    assert "u-secret" not in b.get("/v1/users").json()["items"]
    assert b.get("/v1/sessions").json()["items"] == [] or all(
        s["user"] != "u-secret" for s in b.get("/v1/sessions").json()["items"])
    assert "P-999" not in b.get("/v1/export").text and "P-999" not in b.get("/v1/audit").text
    assert msg["messages"][0]["id"] not in b.get("/v1/audit").text

    # a write with the same user and thread lands in B's own tenant
    r = b.post(sess + "/messages", json={"messages": [{"role": "user", "content": "b's own"}]})
    assert r.status_code == 201 and r.json()["messages"][0]["seq"] == 1
    assert r.json()["messages"][0]["key"] == "tenant-b/u-secret/claim-9"
    assert b.put(sess + "/state/agent", json={"data": {"b": 1}}, headers={"If-None-Match": "*"}).status_code == 200

    after = [l for l in a.get("/v1/export").text.splitlines()[1:]]
    assert after == before  # A's data unchanged by anything B did
    assert [m["content"] for m in a.get(sess + "/messages").json()["items"]] == ["secret P-999"]


# -- logs --------------------------------------------------------------------------------------------------

def test_structured_json_logs_carry_session_operation_counts_and_pid(a, server) -> None:
    sess = S.format(user="u-log", thread="t-log")
    a.post(sess + "/messages", json={"messages": [{"role": "user", "content": "hello"}]})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [json.loads(l) for l in server["log"].read_text().splitlines() if l.startswith("{")]
        hits = [r for r in records if r.get("session") == "tenant-a/u-log/t-log" and r.get("message") == "request"]
        if hits:
            break
        time.sleep(0.1)
    rec = hits[0]
    assert rec["operation"] == "message.append" and rec["status"] == 201 and rec["pid"] == server["pid"]
    assert rec["messages_in"] == 1 and rec["messages_before"] == 0 and rec["messages_after"] == 1
    assert rec["tenant"] == "tenant-a" and rec["key_id"] and "hello" not in json.dumps(rec)
