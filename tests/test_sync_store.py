"""amber.sync.SyncStore: the blocking facade, with and without a running event loop in the caller."""

from __future__ import annotations

import asyncio
import inspect
import threading
import uuid
from typing import Any

import pytest

import amber
from amber import AmberError, InvalidInput, NewMessage, SessionKey, Store, acting_as
from amber.sync import SyncStore, blocking_methods

KEY = SessionKey("acme", "u-1", "t-1")


def _url() -> str:
    return f"memory://sync-{uuid.uuid4().hex}"


def test_every_store_coroutine_has_a_typed_blocking_method() -> None:
    contract = {
        name
        for name, value in inspect.getmembers(Store)
        if inspect.iscoroutinefunction(value) and not name.startswith("_") and name != "close"
    }
    assert contract, "the Store contract lost its coroutine methods?"
    assert contract == blocking_methods()


def test_blocking_calls_without_a_loop() -> None:
    with SyncStore.open(_url()) as store:
        stored = store.append(KEY, [NewMessage(role="user", content="hello"), NewMessage(role="assistant", content="hi")])
        assert [m.seq for m in stored] == [1, 2]
        assert [m.content for m in store.read_window(KEY, last=5)] == ["hello", "hi"]
        assert store.get_session(KEY).message_count == 2


async def test_blocking_calls_from_inside_a_running_loop() -> None:
    # The Jupyter / FastAPI case: the caller's thread runs a loop; the facade must not nest one.
    asyncio.get_running_loop()
    store = SyncStore.open(_url())
    try:
        store.append_one(KEY, NewMessage(role="user", content="from a coroutine"))
        assert [m.content for m in store.read_since(KEY)] == ["from a coroutine"]
        # An async caller can also await without blocking its loop.
        future = store.submit(store.store.read_window(KEY))
        window = await asyncio.wrap_future(future)
        assert len(window) == 1
    finally:
        store.close()


def test_audit_actor_travels_with_the_call() -> None:
    with SyncStore.open(_url()) as store:
        with acting_as("svc:claims-bot"):
            store.append_one(KEY, NewMessage(role="user", content="x"))
        events = store.list_audit("acme", operation="message.append")
        assert [e.actor for e in events] == ["svc:claims-bot"]


def test_errors_keep_their_amber_type_and_lose_nothing() -> None:
    with SyncStore.open(_url()) as store:
        store.append_one(KEY, NewMessage(role="user", content="kept", idempotency_key="k1"))
        with pytest.raises(InvalidInput):
            store.append_one(KEY, NewMessage(role="wizard", content="bad role"))
        with pytest.raises(amber.InvalidSessionKey):
            SessionKey("acme", "bad user!", "t")
        assert [m.content for m in store.read_since(KEY)] == ["kept"]


def test_wrapping_a_store_on_a_loop_in_another_thread() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        inner = asyncio.run_coroutine_threadsafe(amber.open_store(_url()), loop).result()
        store = SyncStore(inner, loop=loop)
        store.append_one(KEY, NewMessage(role="user", content="via the app loop"))
        assert store.read_since(KEY)[0].content == "via the app loop"
        store.close()  # closes only what SyncStore started: the store stays usable on its loop
        again = asyncio.run_coroutine_threadsafe(inner.read_since(KEY), loop).result()
        assert len(again) == 1
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def test_calling_from_the_loop_that_owns_the_store_raises_instead_of_deadlocking() -> None:
    inner = await amber.open_store(_url())
    store = SyncStore(inner, loop=asyncio.get_running_loop())
    with pytest.raises(AmberError, match="deadlock"):
        store.read_since(KEY)
    store.close()


def test_wrapping_without_a_loop_uses_a_private_thread() -> None:
    inner = asyncio.run(amber.open_store(_url()))
    with SyncStore(inner) as store:
        store.append_one(KEY, NewMessage(role="user", content="a"))
        assert store.loop is not None and store.loop.is_running()
    assert not store.loop.is_running()


def test_close_is_idempotent_and_later_calls_fail_clearly() -> None:
    store = SyncStore.open(_url())
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(AmberError, match="closed"):
        store.read_since(KEY)


def test_run_executes_any_coroutine_on_the_store_loop() -> None:
    with SyncStore.open(_url()) as store:

        async def two_appends() -> int:
            await store.store.append_one(KEY, NewMessage(role="user", content="1"))
            await store.store.append_one(KEY, NewMessage(role="user", content="2"))
            return threading.get_ident()

        ident = store.run(two_appends())
        assert ident != threading.get_ident()
        assert len(store.read_since(KEY)) == 2


def test_non_store_argument_is_rejected() -> None:
    with pytest.raises(InvalidInput):
        SyncStore("memory://x")  # type: ignore[arg-type]


def test_bad_url_raises_amber_error_and_leaves_no_thread() -> None:
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(amber.InvalidStoreURL):
        SyncStore.open("nosuch://x")
    leftovers = [t for t in threading.enumerate() if t.ident not in before and t.name == "amber-sync-store"]
    assert leftovers == []


def test_a_forgotten_store_is_closed_cleanly_at_interpreter_exit(tmp_path: Any) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/forgotten.db"
    code = (
        "from amber.sync import SyncStore\n"  # amber first: thread pools get created later
        "import amber\n"
        f"s = SyncStore.open({url!r})\n"
        "s.append_one(amber.SessionKey('acme', 'u-1', 't-1'), amber.NewMessage(role='user', content='kept'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "at exit failed" not in proc.stderr and "Traceback" not in proc.stderr
    with SyncStore.open(url) as store:
        assert [m.content for m in store.read_since(KEY)] == ["kept"]
