"""Who is acting: a context variable every store reads when it writes an audit entry.

The server sets it to the API key id for each request; library callers get a local principal
(``local:<os user>@<host>``) unless they say otherwise with :func:`acting_as`.
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import socket
from typing import Iterator

__all__ = ["acting_as", "current_actor"]


def _local_principal() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"local:{user}@{socket.gethostname()}"


_LOCAL = _local_principal()
_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("amber_actor", default=None)


def current_actor() -> str:
    return _actor.get() or _LOCAL


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[None]:
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)
