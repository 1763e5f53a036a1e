"""Telemetry off: no data leaves the process except to the configured stores and models.

A fresh interpreter installs a socket guard BEFORE importing anything, imports every ``amber``
module (so import-time telemetry of any dependency would show), then runs a store + learn + recall
round trip with the real offline MiniLM embedder and the encryption and redaction layers. Any
non-loopback connect, DNS lookup of a non-local name, or UDP send is recorded and fails the test.
The hub "offline" variables are removed from the child's environment on purpose: the embedder must
not need them to stay offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent(r'''
    import ipaddress, json, socket, sys

    attempts = []
    _LOCAL = {"localhost", "localhost.localdomain", "", None}

    def _local(host):
        if host in _LOCAL:
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def _check(what, address):
        host = address[0] if isinstance(address, tuple) else None
        if isinstance(address, (str, bytes)):  # AF_UNIX path: local by construction
            return
        if not _local(host):
            attempts.append(f"{what} {address!r}")
            raise OSError(f"network access blocked by the test: {what} {address!r}")

    _connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    _getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        _check("connect", address)
        return _connect(self, address)

    def connect_ex(self, address):
        _check("connect_ex", address)
        return _connect_ex(self, address)

    def sendto(self, data, *args):
        _check("sendto", args[-1])
        return _sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host if not isinstance(host, bytes) else host.decode()):
            attempts.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(f"DNS blocked by the test: {host!r}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
    socket.getaddrinfo = getaddrinfo

    # The guard itself works: a connect to a documentation address and a public DNS name are refused.
    for probe in (lambda: socket.create_connection(("192.0.2.1", 80), timeout=1),
                  lambda: socket.getaddrinfo("huggingface.co", 443)):
        try:
            probe()
        except OSError:
            pass
    assert len(attempts) == 2, attempts
    attempts.clear()

    import asyncio, importlib, os, pkgutil, tempfile
    import amber

    imported, failed = [], []
    for mod in pkgutil.walk_packages(amber.__path__, "amber."):
        try:
            importlib.import_module(mod.name)
            imported.append(mod.name)
        except Exception as exc:  # reported, and asserted on below
            failed.append(f"{mod.name}: {exc!r}")

    async def round_trip(tmp):
        from amber.embed import open_embedder
        from amber.governance import EncryptionConfig, FileKeyRing, LocalKeyProvider, Redactor
        from amber.learn import Learner
        from amber.recall import Recall

        enc = EncryptionConfig(provider=LocalKeyProvider([os.urandom(32)]),
                               keyring=FileKeyRing(os.path.join(tmp, "keyring.json")), vectors="plaintext")
        store = await amber.open_store(f"sqlite:///{tmp}/amber.db", encryption=enc, redaction=Redactor())
        embedder = open_embedder("minilm")
        key = amber.SessionKey("bank", "u", "t")
        try:
            await store.append(key, [amber.NewMessage("user", "My policy number is P-4471 and my email is a@b.io"),
                                     amber.NewMessage("user", "The weather was fine in Leiden.")])
            await Learner(store, embedder=embedder).drain()
            hits = await Recall(store, embedder=embedder).search("bank", "u", "what is my policy number?")
            return [h.text for h in hits]
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        texts = asyncio.run(round_trip(tmp))
    print(json.dumps({"attempts": attempts, "imported": len(imported), "failed": failed, "texts": texts}))
''')


def test_no_network_access_on_import_or_round_trip(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}
    env["HOME"] = str(tmp_path)  # no cached hub tokens or settings from the developer's home
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=540,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [], report["attempts"]
    assert report["failed"] == [], report["failed"]
    assert report["imported"] > 40
    assert any("P-4471" in t for t in report["texts"])
    assert not any("a@b.io" in t for t in report["texts"])  # redacted before storage
