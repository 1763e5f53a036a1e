"""Re-embed a tenant's (or one user's) turns and current facts with another embedder.

Vectors are stored per embedder name, so the old vectors stay usable until the new index is
complete; recall switches when it is given the new embedder. Embeds in batches and reports progress.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import InvalidInput
from ..keys import SessionKey, validate_part
from ..records import VectorItem
from ..store.base import Store
from .worker import EMBED_ROLES

__all__ = ["reindex"]

Progress = Callable[[dict[str, int]], None]


async def reindex(
    store: Store,
    tenant: str,
    embedder: Any,
    *,
    user: str | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Embed every user/assistant turn and current fact of ``tenant`` (or of ``user``) with
    ``embedder``. ``progress`` is called after each batch with running counts. Returns the totals."""
    validate_part("tenant", tenant)
    if embedder is None:
        raise InvalidInput("reindex needs an embedder (e.g. open_embedder('minilm'))")
    counts = {"users": 0, "messages": 0, "facts": 0}

    async def flush(u: str, items: list[tuple[str, str, str]]) -> None:
        if not items:
            return
        vectors = await embedder.embed([text for _, _, text in items])
        await store.put_vectors(tenant, u, embedder.name, [
            VectorItem(kind, rid, tuple(v)) for (kind, rid, _), v in zip(items, vectors)  # type: ignore[arg-type]
        ])
        for kind, _, _ in items:
            counts["messages" if kind == "message" else "facts"] += 1
        items.clear()
        if progress is not None:
            progress(dict(counts))

    users = [user] if user is not None else await _all_users(store, tenant)
    for u in users:
        validate_part("user", u)
        counts["users"] += 1
        pending: list[tuple[str, str, str]] = []
        for key in await _all_sessions(store, tenant, u):
            after = 0
            while True:
                page = await store.read_since(key, after, limit=500)
                if not page:
                    break
                after = page[-1].seq
                for m in page:
                    if m.role in EMBED_ROLES and m.content.strip():
                        pending.append(("message", m.id, m.content))
                        if len(pending) >= batch_size:
                            await flush(u, pending)
        for f in await store.list_facts(tenant, u):
            pending.append(("fact", f.id, f.text))
            if len(pending) >= batch_size:
                await flush(u, pending)
        await flush(u, pending)
    return {"tenant": tenant, "embedder": embedder.name, **counts}


async def _all_users(store: Store, tenant: str) -> list[str]:
    users: list[str] = []
    while True:
        page = await store.list_users(tenant, limit=1000, offset=len(users))
        if not page:
            return users
        users.extend(page)


async def _all_sessions(store: Store, tenant: str, user: str) -> list[SessionKey]:
    """Every session of ``user``. Sessions are listed most recently active first, so one that becomes
    active while the pages are read moves to the front and shifts the rest: offset paging could skip
    one. Listing again until a pass finds nothing new cannot."""
    seen: dict[SessionKey, None] = {}
    while True:
        fresh = 0
        offset = 0
        while True:
            page = await store.list_sessions(tenant, user, limit=100, offset=offset)
            if not page:
                break
            offset += len(page)
            for info in page:
                if info.key not in seen:
                    seen[info.key] = None
                    fresh += 1
        if not fresh:
            return list(seen)
