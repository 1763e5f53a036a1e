"""Encryption and redaction configured the one documented way (environment / global ``amber`` options,
:mod:`amber.cli.options`) reach both ``amber serve`` and every ``amber`` command.

A real ``amber serve`` subprocess on a loopback port over a SQLite file, started with a master key,
a keyring and ``AMBER_REDACT=on``: its tenant reads plaintext back over HTTP, while the database
files (db + WAL) hold no byte of the sentinel; raw emails never reach them either. ``amber history``
on that file shows the plaintext only when given the key (env or ``--master-key-file``/``--keyring``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("cryptography")

from amber.cli.options import governance_from_environ, parse_redaction  # noqa: E402
from amber.errors import InvalidInput  # noqa: E402
from amber.governance import EncryptionConfig, Redactor, generate_master_key  # noqa: E402

from conftest import AMBER, start_amber_serve  # noqa: E402

ADMIN = "admin-" + secrets.token_hex(16)
SENTINEL = "ZEBRA-SENTINEL-" + secrets.token_hex(6).upper()
EMAIL = f"claims.{secrets.token_hex(4)}@example-insurer.com"
_GOV_VARS = ("AMBER_MASTER_KEY", "AMBER_MASTER_KEY_FILE", "AMBER_KEYRING", "AMBER_ENCRYPT_TENANTS",
             "AMBER_REDACT", "AMBER_REDACT_HASH_KEY", "AMBER_STORE", "AMBER_TENANT", "WEB_CONCURRENCY")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GOV_VARS}
    env.update(extra)
    return env


def _hits(paths: list[Path], needle: str) -> int:
    return sum(p.read_bytes().count(needle.encode()) for p in paths if p.exists())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("governed")
    db = tmp / "amber.db"
    master = generate_master_key()
    keyring = tmp / "keys" / "keyring.json"  # apart from the database, as the docs ask
    keyring.parent.mkdir()
    env = _clean_env(AMBER_ADMIN_KEY=ADMIN, AMBER_STORE=f"sqlite:///{db}", AMBER_MASTER_KEY=master,
                     AMBER_KEYRING=str(keyring), AMBER_REDACT="on")
    log_path = tmp / "server.log"
    proc, base = start_amber_serve([], env, log_path)
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert httpx.post(base + "/v1/admin/tenants", json={"tenant": "bank"}, headers=admin).status_code == 201
        r = httpx.post(base + "/v1/admin/tenants/bank/keys", json={"label": "agent"}, headers=admin)
        assert r.status_code == 201, r.text
        tenant = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {r.json()['api_key']}"}, timeout=30)
        s = "/v1/users/alice/sessions/claim-1"
        r = tenant.post(s + "/messages", json={"messages": [
            {"role": "user", "content": f"my reference is {SENTINEL}"},
            {"role": "user", "content": f"write to {EMAIL} about {SENTINEL}"}]})
        assert r.status_code == 201, r.text
        assert tenant.put(s + "/state/team", json={"data": {"note": SENTINEL}}).status_code == 200
        assert tenant.post("/v1/users/alice/facts", json={
            "attribute": "reference", "value": SENTINEL, "text": f"reference is {SENTINEL}"}).status_code == 201
        # What the tenant reads back over HTTP, while the server runs.
        reads = {
            "messages": [m["content"] for m in tenant.get(s + "/messages").json()["items"]],
            "state": tenant.get(s + "/state/team").json()["data"],
            "facts": [f["value"] for f in tenant.get("/v1/users/alice/facts").json()["items"]],
            "export": tenant.get("/v1/export", params={"user": "alice"}).text,
        }
        tenant.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    yield {"db": db, "files": files, "keyring": keyring, "master": master, "reads": reads, "tmp": tmp}


def test_server_serves_plaintext_to_its_tenant(served) -> None:
    reads = served["reads"]
    assert reads["messages"] == [f"my reference is {SENTINEL}", f"write to [EMAIL] about {SENTINEL}"]
    assert reads["state"] == {"note": SENTINEL}
    assert reads["facts"] == [SENTINEL]
    assert SENTINEL in reads["export"] and EMAIL not in reads["export"]


def test_database_files_hold_only_ciphertext(served) -> None:
    files = served["files"]
    assert files[0].stat().st_size > 0
    assert _hits(files, SENTINEL) == 0
    assert _hits(files, EMAIL) == 0 and _hits(files, EMAIL.split("@")[0]) == 0
    # The scan does read the files: ids are plaintext (they key every query) and are found.
    assert _hits(files, "claim-1") > 0
    assert _hits(files, "amberenc1") > 0  # the ciphertext marker
    assert served["keyring"].exists() and SENTINEL not in served["keyring"].read_text()


def _history(served, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AMBER, "--store", f"sqlite:///{served['db']}", "--tenant", "bank", "--json", *args,
                           "history", "alice/claim-1"], env=_clean_env(**env), capture_output=True, text=True,
                          timeout=120)


def test_cli_history_reads_plaintext_only_with_the_key(served) -> None:
    without = _history(served, {})
    assert without.returncode == 0, without.stderr
    assert SENTINEL not in without.stdout and "amberenc1" in without.stdout  # ciphertext, as stored

    with_env = _history(served, {"AMBER_MASTER_KEY": served["master"], "AMBER_KEYRING": str(served["keyring"])})
    assert with_env.returncode == 0, with_env.stderr
    contents = [m["content"] for m in json.loads(with_env.stdout)]
    assert contents == [f"my reference is {SENTINEL}", f"write to [EMAIL] about {SENTINEL}"]

    key_file = served["tmp"] / "master.key"
    key_file.write_text(served["master"] + "\n")
    with_flags = _history(served, {}, "--master-key-file", str(key_file), "--keyring", str(served["keyring"]))
    assert with_flags.returncode == 0, with_flags.stderr
    assert [m["content"] for m in json.loads(with_flags.stdout)] == contents

    wrong = _history(served, {"AMBER_MASTER_KEY": generate_master_key(), "AMBER_KEYRING": str(served["keyring"])})
    assert wrong.returncode == 2 and SENTINEL not in wrong.stdout  # an unknown master key: refused, not plaintext
    assert "error:" in wrong.stderr


def test_a_keyring_without_a_master_key_is_refused(served) -> None:
    r = _history(served, {"AMBER_KEYRING": str(served["keyring"])})
    assert r.returncode == 2 and "no master key" in r.stderr and SENTINEL not in r.stdout


def test_cli_writes_through_the_same_layers(tmp_path) -> None:
    """`amber import` with the options on encrypts and redacts what it writes, like the server."""
    db = tmp_path / "cli.db"
    keyring = tmp_path / "keyring.json"
    master = generate_master_key()
    export = tmp_path / "in.jsonl"
    env = _clean_env(AMBER_MASTER_KEY=master)
    store = f"sqlite:///{db}"
    # Build an export with the library's own writer (a plain memory store), then import it governed.
    src = tmp_path / "src.db"
    code = ("import asyncio, amber, sys\n"
            "from amber.keys import SessionKey\nfrom amber.records import NewMessage\n"
            "from amber.transfer import export_jsonl\n"
            "async def main():\n"
            f"    s = await amber.open_store('sqlite:///{src}')\n"
            f"    await s.append(SessionKey('bank', 'bob', 't'), [NewMessage(role='user', content='{SENTINEL} {EMAIL}')])\n"
            "    lines = [l async for l in export_jsonl(s, 'bank')]\n"
            "    await s.close()\n"
            f"    open({str(export)!r}, 'w').write(''.join(l if l.endswith('\\n') else l + '\\n' for l in lines))\n"
            "asyncio.run(main())\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    r = subprocess.run([AMBER, "--store", store, "--tenant", "bank", "--keyring", str(keyring), "--redact",
                        "EMAIL=mask", "import", str(export)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    files = [db, Path(f"{db}-wal")]
    assert _hits(files, SENTINEL) == 0 and _hits(files, EMAIL) == 0 and _hits(files, "bob") > 0
    shown = subprocess.run([AMBER, "--store", store, "--tenant", "bank", "--keyring", str(keyring), "--json",
                            "history", "bob/t"], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    (content,) = [m["content"] for m in json.loads(shown.stdout)]
    assert content.startswith(SENTINEL) and EMAIL not in content and "@example-insurer.com" in content  # masked


def test_environment_parsing() -> None:
    assert governance_from_environ({}) == {"encryption": None, "redaction": None}
    gov = governance_from_environ({"AMBER_MASTER_KEY": generate_master_key(), "AMBER_KEYRING": "keyring.json",
                                   "AMBER_ENCRYPT_TENANTS": "bank, insurer", "AMBER_REDACT": "EMAIL=mask,*=keep"})
    assert isinstance(gov["encryption"], EncryptionConfig)
    assert gov["encryption"].encrypts("bank") and not gov["encryption"].encrypts("other")
    redactor = gov["redaction"]
    assert isinstance(redactor, Redactor) and redactor.action("EMAIL") == "mask" and redactor.action("CARD") == "keep"
    assert parse_redaction("off") is None and isinstance(parse_redaction("on"), Redactor)
    for bad in ("EMAIL", "EMAIL=shred", "SHOE_SIZE=redact", "EMAIL=hash", "@no-such-policy.json"):
        with pytest.raises(InvalidInput):
            parse_redaction(bad)
    assert parse_redaction("EMAIL=hash", hash_key="k" * 32).action("EMAIL") == "hash"
    with pytest.raises(InvalidInput):
        governance_from_environ({"AMBER_KEYRING": "keyring.json"})  # a keyring and no key: refuse, never plaintext
    with pytest.raises(InvalidInput):
        governance_from_environ({"AMBER_MASTER_KEY": generate_master_key()})  # a key and no keyring


def test_policy_file(tmp_path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"policy": {"EMAIL": "mask"}, "default": "redact", "tenants": {"acme": {"EMAIL": "keep"}}}))
    redactor = parse_redaction(f"@{policy}")
    assert redactor.action("EMAIL") == "mask" and redactor.action("EMAIL", "acme") == "keep"
    assert redactor.action("CARD") == "redact"
    policy.write_text(json.dumps({"polcy": {}}))
    with pytest.raises(InvalidInput, match="policy file"):
        parse_redaction(f"@{policy}")
