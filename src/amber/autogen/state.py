"""Durable agent and team state: ``save_state()`` kept by session key, saved as a run progresses.

    team = build_team()                                   # freshly built, e.g. per request
    keeper = TeamStateKeeper(store, key, team)
    result = await keeper.run(task="My policy number is P-12345")

``run`` / ``run_stream`` load the session's latest saved state into the team (or agent) first, save
it after every message the run produces, and save it once more when the run ends -- by a
termination condition, ``max_turns``, a handoff to the user (``HandoffTermination``), cancellation,
or an exception -- so a RoundRobinGroupChat, SelectorGroupChat or Swarm rebuilt in another process
resumes where the last one stopped, even after a crash mid-run.

Concurrency: turns of one session are serialised, and writes are compare-and-set.

* In one process, ``run``/``run_stream`` hold an asyncio lock per (store, session, state name); a
  second request for the session waits, then loads the state the first one saved.
* Across processes, pass ``lock=`` a factory of async context managers, e.g. a Redis lease
  (``amber.locks.session_lease``) so one worker at a time runs a session's turn.
* Without a cross-process lock, two workers running the same session at once cannot corrupt it:
  every save is ``put_state(expected_version=...)`` from the version this keeper loaded, so the later
  writer gets :class:`amber.VersionConflict` (its run is cancelled) and the stored state stays the
  earlier writer's, whole.

Note: AutoGen warns that a team's state saved *while* it runs may be mid-step; the saves after each
message are checkpoints for crash recovery, the save at the end of a run is the consistent one.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any, AsyncContextManager, AsyncGenerator, Callable, Mapping, Protocol, Sequence

from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, ModelClientStreamingChunkEvent
from autogen_core import CancellationToken

from ..errors import InvalidInput, VersionConflict
from ..keys import SessionKey
from ..records import StateBlob
from ..store import Store
from .context import idempotent_turn

__all__ = ["TeamStateKeeper", "Stateful"]

StreamItem = BaseAgentEvent | BaseChatMessage | TaskResult


class Stateful(Protocol):
    """What the keeper drives: an AgentChat team or agent (``TaskRunner`` with save/load state)."""

    async def save_state(self) -> Mapping[str, Any]: ...

    async def load_state(self, state: Mapping[str, Any]) -> None: ...

    def run_stream(self, *, task: Any = None, cancellation_token: CancellationToken | None = None,
                   **kwargs: Any) -> AsyncGenerator[Any, None]: ...


# One lock per (event loop, store, session, state name); weak so idle sessions cost nothing.
_LOCKS: "weakref.WeakValueDictionary[tuple[int, str, str, str], asyncio.Lock]" = weakref.WeakValueDictionary()


def _local_lock(store: Store, key: SessionKey, name: str) -> asyncio.Lock:
    slot = (id(asyncio.get_running_loop()), store.url, str(key), name)
    lock = _LOCKS.get(slot)
    if lock is None:
        lock = asyncio.Lock()
        _LOCKS[slot] = lock
    return lock


def _resume_round_robin(target: Any, state: Mapping[str, Any]) -> Mapping[str, Any]:
    """Point a RoundRobinGroupChat's rotation after the last participant that actually spoke.

    AutoGen advances ``next_speaker_index`` when it *selects* a speaker, so a state saved after that
    speaker failed (exception, cancellation, crash) would skip its turn on resume. The message thread
    holds only completed turns, so the speaker after its last participant is where the chat stopped.
    """
    names = list(getattr(target, "_participant_names", None) or [])
    agent_states = state.get("agent_states") if isinstance(state, Mapping) else None
    if not names or not isinstance(agent_states, Mapping):
        return state
    repaired: dict[str, Any] | None = None
    for agent, sub in agent_states.items():
        if not isinstance(sub, Mapping) or sub.get("type") != "RoundRobinManagerState":
            continue
        thread = sub.get("message_thread") or []
        last = next((m.get("source") for m in reversed(thread) if isinstance(m, Mapping)
                     and m.get("source") in names), None)
        want = 0 if last is None else (names.index(last) + 1) % len(names)
        if sub.get("next_speaker_index") != want:
            repaired = repaired or {**state, "agent_states": dict(agent_states)}
            repaired["agent_states"][agent] = {**sub, "next_speaker_index": want}
    return repaired or state


def _without_recalled_memory(state: Any) -> Any:
    """``state`` less the ``MemoryQueryEvent`` entries AutoGen keeps in a group chat's message thread.
    They hold what memory recalled for a turn: derived data that recall rebuilds each turn. Kept in the
    saved state they would be a second copy of the user's memory that ``forget`` and erasure never
    reach (and an agent never reads them back: only chat messages steer a team)."""
    if isinstance(state, Mapping):
        out = {}
        for k, v in state.items():
            if k == "message_thread" and isinstance(v, list):
                v = [m for m in v if not (isinstance(m, Mapping) and m.get("type") == "MemoryQueryEvent")]
            out[k] = _without_recalled_memory(v)
        return out
    if isinstance(state, list):
        return [_without_recalled_memory(v) for v in state]
    return state


async def _next(stream: AsyncGenerator[Any, None], token: CancellationToken) -> Any:
    """The stream's next item. If *our* task is cancelled meanwhile, cancel the run through its token
    first and let it wind down: cancelling the team's generator directly would leave it waiting for
    its runtime to go idle while an agent still waits on its model."""
    step = asyncio.ensure_future(stream.__anext__())
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        if step.done():
            raise
        token.cancel()
        with contextlib.suppress(BaseException):
            await step
        raise


class TeamStateKeeper:
    """Keeps ``target.save_state()`` in the store under ``(key, name)``, as a run progresses.

    Args:
        store: the store (not closed by the keeper).
        key: the session.
        target: an AgentChat team (RoundRobin/Selector/Swarm/...) or agent.
        name: the state blob's name; use one per team or agent sharing a session.
        lock: optional factory ``lock(key) -> async context manager`` serialising turns across
            processes (e.g. a Redis lease). The in-process lock is always taken as well.
        save_each_message: checkpoint after every message or event the run yields (default);
            with False, save only when the run ends.
    """

    def __init__(
        self,
        store: Store,
        key: SessionKey | str,
        target: Stateful,
        *,
        name: str = "team",
        lock: Callable[[SessionKey], AsyncContextManager[Any]] | None = None,
        save_each_message: bool = True,
    ) -> None:
        if not isinstance(store, Store):
            raise InvalidInput(f"store must be an amber.Store, got {type(store).__name__}")
        for method in ("save_state", "load_state", "run_stream"):
            if not callable(getattr(target, method, None)):
                raise InvalidInput(f"target must be an AgentChat team or agent (no {method}())")
        from ..store.base import validate_state_name

        self._store = store
        self._key = key if isinstance(key, SessionKey) else SessionKey.parse(key)
        self._target = target
        self._name = validate_state_name(name)
        self._lock_factory = lock
        self._save_each_message = save_each_message
        self._version: int | None = None  # the stored version the target's state is at; None: unknown

    @property
    def version(self) -> int | None:
        """The stored state version this keeper last loaded or saved (0: none yet; None: not looked)."""
        return self._version

    async def load(self) -> bool:
        """Load the latest saved state into the target if it is newer than what the target holds.
        Returns True if a state was loaded."""
        blob = await self._store.get_state(self._key, self._name)
        if blob is None:
            if self._version is None:
                self._version = 0
            return False
        if blob.version == self._version:
            return False
        try:
            await self._target.load_state(_resume_round_robin(self._target, blob.data))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(
                f"state {self._name!r} of session {self._key} (version {blob.version}) does not fit this "
                f"{type(self._target).__name__}: {exc}"
            ) from exc
        self._version = blob.version
        return True

    async def save(self) -> StateBlob:
        """Save the target's state now, compare-and-set against the version this keeper holds.
        A keeper that never loaded expects no saved state yet (it will not overwrite one blindly)."""
        data = _without_recalled_memory(await self._target.save_state())
        expected = self._version if self._version is not None else 0
        try:
            blob = await self._store.put_state(self._key, self._name, data, expected_version=expected)
        except VersionConflict as exc:
            raise VersionConflict(
                f"state {self._name!r} of session {self._key} was saved by another run (now version "
                f"{exc.actual}, this run started from {exc.expected}); this run's state was NOT saved. "
                "Serialise turns of a session (TeamStateKeeper(..., lock=...)).",
                expected=exc.expected, actual=exc.actual,
            ) from exc
        self._version = blob.version
        return blob

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncGenerator[None, None]:
        """Hold this session's turn (in-process lock, plus ``lock`` if given) and load the latest state.
        ``run``/``run_stream`` use it; use it yourself to drive the target by hand."""
        async with _local_lock(self._store, self._key, self._name):
            async with (self._lock_factory(self._key) if self._lock_factory else contextlib.nullcontext()):
                await self.load()
                yield

    async def run_stream(
        self,
        task: str | BaseChatMessage | Sequence[BaseChatMessage] | None = None,
        *,
        cancellation_token: CancellationToken | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamItem, None]:
        """``target.run_stream`` with the session's state loaded first and saved as it goes.

        Iterate it to the end (or close it, e.g. with ``contextlib.aclosing``): the final save and the
        release of the session's turn happen when the generator finishes."""
        async with self.turn():
            inner_token = CancellationToken()
            if cancellation_token is not None:
                cancellation_token.add_callback(inner_token.cancel)  # runs at once if already cancelled
            stream = self._target.run_stream(task=task, cancellation_token=inner_token, **kwargs)
            finished = False
            conflicted = False
            try:
                while True:
                    try:
                        item = await _next(stream, inner_token)
                    except StopAsyncIteration:
                        break
                    if (
                        self._save_each_message
                        and not isinstance(item, (TaskResult, ModelClientStreamingChunkEvent))
                    ):
                        try:
                            await self.save()
                        except VersionConflict:
                            conflicted = True
                            raise
                    yield item
                finished = True
            finally:
                if not finished:
                    # Stop the run (error, conflict, consumer gone): otherwise closing the stream
                    # waits for a team with no termination condition to go idle.
                    inner_token.cancel()
                await stream.aclose()
                if not conflicted:
                    await self.save()

    async def run(
        self,
        task: str | BaseChatMessage | Sequence[BaseChatMessage] | None = None,
        *,
        cancellation_token: CancellationToken | None = None,
        turn_id: str | None = None,
        **kwargs: Any,
    ) -> TaskResult:
        """Run to the end and return the ``TaskResult``; state saved as in :meth:`run_stream`.
        ``turn_id`` makes the run's messages idempotent (see ``idempotent_turn``)."""
        scope = idempotent_turn(turn_id) if turn_id is not None else contextlib.nullcontext()
        result: TaskResult | None = None
        with scope:
            stream = self.run_stream(task, cancellation_token=cancellation_token, **kwargs)
            try:
                async for item in stream:
                    if isinstance(item, TaskResult):
                        result = item
            finally:
                await stream.aclose()
        if result is None:
            raise RuntimeError("the run ended without a TaskResult")
        return result
