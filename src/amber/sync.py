"""A blocking facade over an async :class:`~amber.Store`, for callers that cannot ``await``.

Classic AutoGen (AG2) hooks are synchronous, also under ``a_initiate_chat``; a CLI command or a
script is often synchronous too. :class:`SyncStore` lets such code use any store, whether or not
the calling thread is already running an event loop (Jupyter, a FastAPI handler)::

    from amber.sync import SyncStore

    with SyncStore.open("sqlite:///amber.db") as store:
        store.append(key, [NewMessage(role="user", content="hi")])
        window = store.read_window(key, last=20)

How it works: the async store lives on an event loop that runs in a background thread (a private
one that :class:`SyncStore` starts, or one you name with ``loop=``). A blocking call submits the
coroutine to that loop and waits for its result, so it never nests a second loop in the caller's
thread. The audit actor set with :func:`amber.acting_as` travels with the call.

There is one facade, generated from the :class:`~amber.Store` contract: each coroutine method
``m`` of the store is a blocking method ``m`` here with the same parameters and the awaited
result type. Backend-specific coroutine methods are reachable too (untyped) through attribute
access, and :meth:`SyncStore.run` runs any coroutine (e.g. a recall query) on the store's loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import inspect
import logging
import threading
import weakref
from types import TracebackType
from typing import Any, Awaitable, Callable, Concatenate, Coroutine, Generic, ParamSpec, TypeVar, overload

from .errors import AmberError, InvalidInput
from .store import Store, open_store

__all__ = ["SyncStore", "blocking_methods"]

P = ParamSpec("P")
T = TypeVar("T")


class _Blocking(Generic[P, T]):
    """Descriptor: ``SyncStore.<name>`` is the blocking form of ``Store.<name>``.

    Typed from the contract method it is built from, so ``SyncStore.append`` has the parameters
    of ``Store.append`` and returns ``list[Message]`` rather than an awaitable."""

    def __init__(self, method: Callable[Concatenate[Store, P], Awaitable[T]]) -> None:
        self.name = method.__name__
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> "_Blocking[P, T]": ...

    @overload
    def __get__(self, obj: "SyncStore", owner: type | None = None) -> Callable[P, T]: ...

    def __get__(self, obj: "SyncStore | None", owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj._blocking(self.name)


class SyncStore:
    """Blocking access to an async store.

    * ``SyncStore.open(url, **options)`` starts a private event loop in a daemon thread, opens the
      store on it and owns both: :meth:`close` closes the store and stops the thread.
    * ``SyncStore(store)`` wraps a store you opened. Without ``loop`` the store is driven from a
      private loop thread, which is right for a store not tied to any loop yet (``memory://``,
      or one you opened inside :meth:`run`). With ``loop=`` calls are sent to that loop instead;
      it must be running in ANOTHER thread (the loop the store was opened on, e.g. your app's
      loop when you call classic AutoGen from a worker thread). Calling in from that loop's own
      thread would deadlock, so it raises :class:`~amber.AmberError` instead.
      :meth:`close` of a wrapped store closes only what :class:`SyncStore` started (its thread).

    A blocking call may be made from any thread, including one that is running its own event loop
    (that loop is blocked for the duration of the call, as any synchronous I/O would block it).
    """

    def __init__(self, store: Store, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not isinstance(store, Store):
            raise InvalidInput(f"SyncStore wraps an amber Store, got {type(store).__name__}")
        self._store = store
        self._owns_store = False
        self._closed = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if loop is None:
            self._loop, self._thread = _start_loop()
        else:
            if loop.is_closed():
                raise InvalidInput("SyncStore(loop=...) needs a running event loop; this one is closed")
            self._loop = loop
        _LIVE.add(self)

    @classmethod
    def open(cls, url: str, **options: Any) -> "SyncStore":
        """Open the store named by ``url`` (see :func:`amber.open_store`) on a private loop thread."""
        loop, thread = _start_loop()
        try:
            store = asyncio.run_coroutine_threadsafe(open_store(url, **options), loop).result()
        except BaseException:
            _stop_loop(loop, thread)
            raise
        self = cls.__new__(cls)
        self._store = store
        self._owns_store = True
        self._closed = False
        self._lock = threading.Lock()
        self._loop = loop
        self._thread = thread
        _LIVE.add(self)
        return self

    # -- the facade ---------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The async store behind this facade (use it only from :meth:`run`)."""
        return self._store

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the async store lives on."""
        return self._loop

    @property
    def url(self) -> str:
        return self._store.url

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        """Schedule ``coro`` on the store's loop and return a future at once (for async callers,
        wrap it with ``asyncio.wrap_future`` to await it without blocking their own loop)."""
        if self._closed:
            coro.close()
            raise AmberError(f"this SyncStore ({self.url}) is closed")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise AmberError(
                "a blocking Amber call was made from the event loop that owns the store; it would "
                "deadlock. Open the store with SyncStore.open(url) (its own loop thread), or await "
                "the async Store directly"
            )
        # Run in a copy of the caller's context so contextvars (the audit actor) follow the call.
        ctx = contextvars.copy_context()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            if not result.set_running_or_notify_cancel():
                coro.close()
                return
            task = ctx.run(self._loop.create_task, coro)

            def done(t: asyncio.Task[T]) -> None:
                if t.cancelled():
                    result.cancel()
                elif (exc := t.exception()) is not None:
                    result.set_exception(exc)
                else:
                    result.set_result(t.result())

            task.add_done_callback(done)

        try:
            self._loop.call_soon_threadsafe(start)
        except RuntimeError as exc:  # loop stopped or closed under us
            coro.close()
            raise AmberError(f"the event loop behind this SyncStore ({self.url}) is not running") from exc
        return result

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the store's loop and return its result, blocking this thread.

        For anything beyond the store contract, e.g. ``sync.run(recall.search(...))``."""
        return self.submit(coro).result()

    def _blocking(self, name: str) -> Callable[..., Any]:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(method(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call

    def __getattr__(self, name: str) -> Any:
        # Reached only for names not defined on SyncStore: backend-specific extras.
        if name.startswith("_"):
            raise AttributeError(name)
        store = self.__dict__.get("_store")
        if store is None:
            raise AttributeError(name)
        attr = getattr(store, name)
        if inspect.iscoroutinefunction(attr):
            return self._blocking(name)
        return attr

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the store if this facade opened it, and stop the private loop thread. Idempotent;
        never deletes data."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _LIVE.discard(self)
        try:
            if self._owns_store and self._loop.is_running():
                asyncio.run_coroutine_threadsafe(self._store.close(), self._loop).result()
        finally:
            if self._thread is not None:
                _stop_loop(self._loop, self._thread)

    def __enter__(self) -> "SyncStore":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SyncStore {self.url} ({state})>"

    # -- the store contract, blocking (typed from Store; kept complete by a test) --------------
    describe = _Blocking(Store.describe)
    append = _Blocking(Store.append)
    append_one = _Blocking(Store.append_one)
    read_window = _Blocking(Store.read_window)
    read_since = _Blocking(Store.read_since)
    get_session = _Blocking(Store.get_session)
    list_sessions = _Blocking(Store.list_sessions)
    list_users = _Blocking(Store.list_users)
    get_state = _Blocking(Store.get_state)
    put_state = _Blocking(Store.put_state)
    list_states = _Blocking(Store.list_states)
    delete_session = _Blocking(Store.delete_session)
    delete_user = _Blocking(Store.delete_user)
    delete_message = _Blocking(Store.delete_message)
    correct_message = _Blocking(Store.correct_message)
    record_fact = _Blocking(Store.record_fact)
    list_facts = _Blocking(Store.list_facts)
    get_fact = _Blocking(Store.get_fact)
    delete_fact = _Blocking(Store.delete_fact)
    superseded_sources = _Blocking(Store.superseded_sources)
    search_text = _Blocking(Store.search_text)
    put_vectors = _Blocking(Store.put_vectors)
    search_vectors = _Blocking(Store.search_vectors)
    claim_learn_jobs = _Blocking(Store.claim_learn_jobs)
    complete_learn_jobs = _Blocking(Store.complete_learn_jobs)
    fail_learn_job = _Blocking(Store.fail_learn_job)
    learn_queue_stats = _Blocking(Store.learn_queue_stats)
    list_dead_learn_jobs = _Blocking(Store.list_dead_learn_jobs)
    requeue_dead_learn_jobs = _Blocking(Store.requeue_dead_learn_jobs)
    list_audit = _Blocking(Store.list_audit)
    chain_audit = _Blocking(Store.chain_audit)
    prune = _Blocking(Store.prune)
    restore_session = _Blocking(Store.restore_session)
    restore_facts = _Blocking(Store.restore_facts)


def blocking_methods() -> frozenset[str]:
    """Names of the contract methods :class:`SyncStore` exposes as typed blocking methods."""
    return frozenset(name for name, value in vars(SyncStore).items() if isinstance(value, _Blocking))


_log = logging.getLogger("amber.sync")
_LIVE: "weakref.WeakSet[SyncStore]" = weakref.WeakSet()


def _close_all_at_exit() -> None:
    # Close forgotten stores so backends run their own shutdown (e.g. a WAL checkpoint). Acknowledged
    # writes are durable either way; this is tidiness, so failures are logged, not raised.
    for store in list(_LIVE):
        try:
            store.close()
        except Exception as exc:  # noqa: BLE001 - best effort at interpreter exit
            _log.warning("closing %r at exit failed: %r", store, exc)


# threading's exit hooks run, newest first, before its threads are joined, and one of them is how
# concurrent.futures shuts down the thread pools that stores need to close; plain atexit runs after
# that. So: import the pool module first (its hook is registered on import), then register ours,
# which therefore runs before it. Fall back to atexit where the hook does not exist.
import concurrent.futures.thread  # noqa: E402,F401  (import order matters, see above)

_register_exit = getattr(threading, "_register_atexit", atexit.register)
_register_exit(_close_all_at_exit)


def _start_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    thread = threading.Thread(target=_serve_loop, args=(loop, started), name="amber-sync-store", daemon=True)
    thread.start()
    started.wait()
    return loop, thread


def _serve_loop(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if not loop.is_closed():
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass
    if thread is not threading.current_thread():
        thread.join()
