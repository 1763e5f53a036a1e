"""The multi-worker proof, deployed the way users deploy: ``examples/service/app.py`` served by
``uvicorn --workers 4`` on one loopback port plus a second ``uvicorn --workers 2`` instance on
another, all six worker processes against ONE PostgreSQL (a fresh tenant per run); again with the Redis
layer in front; and once more with one SQLite file shared by the processes of one machine.

The turns of several sessions go round-robin to both instances, each on a new HTTP connection so
the kernel hands them to whichever worker accepts. The model is the example's deterministic
``EchoHistoryModelClient`` (no LLM): its reply reports what it received and the pid that ran it, so
from each reply alone we check that the turn saw every earlier turn of its session, in order, and
nothing of another session -- whichever worker served it. Afterwards the store must hold every
message exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

import amber
from conftest import POSTGRES_URL, REDIS_URL, unreachable

REPO = Path(__file__).resolve().parents[1]
USERS = ("u1", "u2", "u3")
THREADS = ("claim-a", "claim-b")  # 3 users x 2 threads = 6 sessions
TURNS = 8
STARTUP_TIMEOUT = 90.0
MARKER = re.compile(r"\[\[([^\[\]\s]+)\]\]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    """One ``uvicorn examples.service.app:app --workers N`` process tree on a free loopback port."""

    def __init__(self, name: str, workers: int, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.workers, self.port = name, workers, _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.service.app:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers), "--log-level", "info", "--no-access-log"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown can reach every worker
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        return {int(p) for p in re.findall(r"Started server process \[(\d+)\]", self.log())}

    def wait_ready(self) -> None:
        """Every worker has run its lifespan (opened the store) and the port answers."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.log().count("Application startup complete.") >= self.workers:
                try:
                    if httpx.get(f"{self.base}/healthz", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        pytest.fail(f"{self.name} not ready after {STARTUP_TIMEOUT}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: each worker's lifespan closes its store
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group only
                self.proc.wait(timeout=10)
        self._log.close()


def _check_reachable(store_url: str) -> None:
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    if "cache=" in store_url:
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
        except redis.RedisError as exc:
            unreachable(f"Redis at {REDIS_URL}", exc)


def _load_example_app():
    import importlib.util

    spec = importlib.util.spec_from_file_location("amber_example_service_app", REPO / "examples/service/app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


async def _delete_users(store_url: str, tenant: str) -> None:
    async with await amber.open_store(store_url) as store:
        for user in USERS + ("solo",):
            await store.delete_user(tenant, user)


@pytest.fixture(scope="module", params=[
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("postgres+redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    "sqlite",
])
def deployment(request, tmp_path_factory):
    """Both instances against one store and a fresh tenant, shared by this module's tests of one
    variant; torn down (and the tenant's users deleted) whatever happens."""
    log_dir = tmp_path_factory.mktemp("multiworker")
    if request.param == "sqlite":  # one machine: every worker opens the same file (absolute path)
        store_url = f"sqlite:///{log_dir / 'amber.db'}"
    else:
        # Few connections per worker: six workers share a server other test runs use too.
        store_url = _with_query(POSTGRES_URL, pool_max_size="3")
        if request.param == "postgres+redis":
            store_url = _with_query(store_url, cache=REDIS_URL)
        _check_reachable(store_url)
    tenant = f"mw-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "AMBER_STORE": store_url, "AMBER_TENANT": tenant,
           "AMBER_EXAMPLE_MODEL": "echo-history", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("AMBER_LEASE_REDIS", None)
    instances: list[Instance] = []
    try:
        instances.append(Instance("a", 4, env, log_dir))  # started together, then awaited
        instances.append(Instance("b", 2, env, log_dir))
        for instance in instances:
            instance.wait_ready()
        yield request.param, store_url, tenant, instances
    finally:
        for instance in instances:
            instance.stop()
        asyncio.run(_delete_users(store_url, tenant))


async def _turn(instance: Instance, user: str, thread: str, text: str) -> dict:
    # A new client per request = a new TCP connection, so uvicorn's workers share the load.
    async with httpx.AsyncClient(base_url=instance.base, timeout=60) as client:
        response = await client.post(f"/users/{user}/threads/{thread}/turns", json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    body["report"] = json.loads(body["reply"])
    body["instance"] = instance.name
    return body


async def test_every_worker_sees_the_whole_session_and_nothing_else(deployment):
    variant, store_url, tenant, instances = deployment
    sessions = [(u, t) for u in USERS for t in THREADS]
    counter = iter(range(10**6))
    results: dict[tuple[str, str], list[dict]] = {s: [] for s in sessions}
    sent: dict[tuple[str, str], list[str]] = {s: [] for s in sessions}

    async def run_session(user: str, thread: str) -> None:
        for n in range(TURNS):  # a session's turns are sequential; the sessions run concurrently
            instance = instances[next(counter) % len(instances)]
            text = f"[[{user}/{thread}/t{n}]] note {n} about my water damage claim"
            sent[(user, thread)].append(text)
            results[(user, thread)].append(await _turn(instance, user, thread, text))

    await asyncio.gather(*(run_session(u, t) for u, t in sessions))

    pids_by_instance: dict[str, set[int]] = {i.name: set() for i in instances}
    for (user, thread), replies in results.items():
        expected = [f"{user}/{thread}/t{n}" for n in range(TURNS)]
        for n, body in enumerate(replies):
            report = body["report"]
            # What the model received: every earlier turn of this session, in order, and this one ...
            assert report["markers"] == expected[: n + 1], (user, thread, n, report)
            assert report["prior_turns"] == n
            assert report["reply_to"] == expected[n]
            # ... each earlier reply too, in order (so the model saw both sides of the conversation) ...
            assert report["answered"] == expected[:n]
            # ... and recalled long-term memory from this user's other thread only, never another user's.
            assert all(m.startswith(f"{user}/") for m in report["memory_markers"]), report
            assert all(not m.startswith(f"{user}/{thread}/") or m in expected[:n]
                       for m in report["memory_markers"]), report
            # The pid in the model's reply is the worker that answered the HTTP request.
            assert report["pid"] == body["pid"]
            pids_by_instance[body["instance"]].add(body["pid"])
            assert body["lease"] == ("redis" if variant == "postgres+redis" else "local")

    for instance in instances:
        assert pids_by_instance[instance.name], f"instance {instance.name} served nothing"
        assert pids_by_instance[instance.name] <= instance.worker_pids(), (instance.name, pids_by_instance)
    # Long-term memory did recall (the user's other thread), so the isolation check above had data.
    assert any(b["report"]["memory_markers"] for replies in results.values() for b in replies)
    all_pids = set().union(*pids_by_instance.values())
    print(f"{variant}: turns served per pid:", {i: {p: sum(b["pid"] == p for r in results.values() for b in r)
                                                       for p in pids} for i, pids in pids_by_instance.items()})
    assert len(all_pids) >= 4, f"only {len(all_pids)} worker pids served turns: {pids_by_instance}"

    # The store holds every message exactly once, in order: nothing lost, nothing duplicated.
    async with await amber.open_store(store_url) as store:
        for (user, thread), replies in results.items():
            key = amber.SessionKey(tenant, user, thread)
            stored = await store.read_since(key, 0)
            assert [m.seq for m in stored] == list(range(1, 2 * TURNS + 1))
            assert [m.role for m in stored] == ["user", "assistant"] * TURNS
            assert [m.content for m in stored[0::2]] == sent[(user, thread)]
            assert [m.content for m in stored[1::2]] == [b["reply"] for b in replies]
            assert len({m.idempotency_key for m in stored}) == len(stored)
        for user in USERS:
            listed = await store.list_sessions(tenant, user)
            assert sorted(s.key.thread for s in listed) == sorted(THREADS)

    if variant != "sqlite":  # (the SQLite file lives in a temp dir, which doctor rightly reports)
        # amber doctor, given this deployment's store, tenant and worker count, finds no problem.
        workers = sum(i.workers for i in instances)
        doctor = subprocess.run(
            [sys.executable, "-c", "from amber.cli import main; main()", "--store", store_url, "--tenant", tenant, "doctor",
             "--workers", str(workers), "--no-process-scan"],
            capture_output=True, text=True, timeout=60)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "no problems found" in doctor.stdout


@pytest.mark.parametrize("deployment", ["postgres+redis"], indirect=True)
async def test_concurrent_turns_of_one_session_take_turns_across_workers(deployment):
    """Six requests for ONE session at once, spread over both instances: with the Redis layer the
    per-session lease serialises them across workers, so each turn saw all the turns before it.
    (Without Redis the lease is per process; see docs/deploy.md.)"""
    variant, store_url, tenant, instances = deployment
    k = 6
    bodies = await asyncio.gather(*(
        _turn(instances[i % len(instances)], "solo", "claim-x", f"[[solo/claim-x/c{i}]] concurrent turn {i}")
        for i in range(k)))
    assert all(b["lease"] == "redis" for b in bodies)
    assert len({b["pid"] for b in bodies}) >= 2, "the concurrent turns all ran in one worker"
    ordered = sorted(bodies, key=lambda b: b["report"]["prior_turns"])
    # Each turn saw exactly the turns completed before it: prior counts 0..k-1, each a prefix of the next.
    assert [b["report"]["prior_turns"] for b in ordered] == list(range(k))
    for earlier, later in zip(ordered, ordered[1:]):
        assert later["report"]["markers"][:-1] == earlier["report"]["markers"]
        assert later["report"]["answered"] == earlier["report"]["answered"] + [earlier["report"]["reply_to"]]
        assert later["fence"] > earlier["fence"]
    async with await amber.open_store(store_url) as store:
        stored = await store.read_since(amber.SessionKey(tenant, "solo", "claim-x"), 0)
    # Strictly alternating: no turn's messages interleaved with another's, none lost or doubled.
    assert [m.role for m in stored] == ["user", "assistant"] * k
    assert [m.content for m in stored[1::2]] == [b["reply"] for b in ordered]
    assert [MARKER.findall(m.content)[0] for m in stored[0::2]] == [b["report"]["reply_to"] for b in ordered]


def test_without_a_model_the_service_says_so_and_stores_nothing():
    """No client configured: a plain 503 naming the problem, and the store is not touched."""
    from fastapi.testclient import TestClient

    service = _load_example_app()
    NO_MODEL, Settings, create_app = service.NO_MODEL, service.Settings, service.create_app
    app = create_app(Settings(store_url="memory://multiworker-no-model", tenant="t"))
    with TestClient(app) as client:
        response = client.post("/users/u1/threads/claim-a/turns", json={"text": "hello"})
        assert response.status_code == 503
        assert response.json()["detail"] == NO_MODEL
        assert "no model is configured" in NO_MODEL
        assert client.get("/users/u1/threads/claim-a/messages").json()["messages"] == []


@pytest.mark.redis
def test_lease_redis_setting_holds_turn_leases_in_redis_for_a_store_without_a_cache(tmp_path):
    """AMBER_LEASE_REDIS: with a plain SQLite store the per-session lease still lives in Redis, so it
    would hold across workers; fences grow with every turn."""
    import redis
    from fastapi.testclient import TestClient

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        unreachable(f"Redis at {REDIS_URL}", exc)
    service = _load_example_app()
    settings = service.Settings(store_url=f"sqlite:///{tmp_path / 'amber.db'}", tenant=f"mw-{uuid.uuid4().hex[:12]}",
                                model="echo-history", lease_redis=REDIS_URL)
    with TestClient(service.create_app(settings)) as client:
        bodies = [client.post("/users/u1/threads/claim-a/turns", json={"text": f"[[t{n}]] hello"}).json()
                  for n in range(2)]
    assert [b["lease"] for b in bodies] == ["redis", "redis"]
    assert bodies[1]["fence"] > bodies[0]["fence"]
    assert json.loads(bodies[1]["reply"])["markers"] == ["t0", "t1"]
