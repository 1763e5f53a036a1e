"""Persistence: one async contract (:class:`Store`), several backends, chosen by URL.

=======================================  ==============================================
URL                                      backend
=======================================  ==============================================
``memory://`` / ``memory://NAME``        in-process reference (not durable)
``sqlite:///relative.db``                embedded SQLite file (default)
``sqlite:////absolute/path.db``
``postgresql://user@host:5432/db``       shared PostgreSQL (extra ``[postgres]``)
any of the above + ``cache=redis://..``  Redis hot layer in front (extra ``[redis]``)
=======================================  ==============================================

Third-party backends register a factory under the ``amber.stores`` entry-point group, keyed by
URL scheme; the factory is ``async def open(url: str, **options) -> Store``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from ..errors import InvalidStoreURL
from .base import Capability, Store, StoreLimits

__all__ = ["open_store", "Store", "Capability", "StoreLimits", "redact_url", "DEFAULT_STORE_URL"]

DEFAULT_STORE_URL = "sqlite:///amber.db"

# scheme -> "module:factory"; imported lazily so optional drivers load only when used.
_BUILTIN: dict[str, str] = {
    "memory": "amber.store.memory_factory:open_memory",
    "sqlite": "amber.store.sqlite:open_sqlite",
    "postgresql": "amber.store.postgres:open_postgres",
    "postgres": "amber.store.postgres:open_postgres",
}


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _factory(scheme: str) -> Callable[..., Awaitable[Store]]:
    target = _BUILTIN.get(scheme)
    if target is None:
        for ep in entry_points(group="amber.stores"):
            if ep.name == scheme:
                return ep.load()
        known = sorted(set(_BUILTIN) | {ep.name for ep in entry_points(group="amber.stores")})
        raise InvalidStoreURL(f"unknown store URL scheme {scheme!r}; known schemes: {', '.join(known)}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


async def open_store(
    url: str = DEFAULT_STORE_URL,
    *,
    cache: str | None = None,
    encryption: Any | None = None,
    redaction: Any | None = None,
    **options: Any,
) -> Store:
    """Open a store by URL and apply pending migrations.

    ``cache`` (or ``?cache=redis://...`` in the URL) puts a Redis hot layer in front of the durable
    store; Redis never holds the only copy. ``encryption`` (an
    :class:`amber.governance.EncryptionConfig`) and ``redaction`` (an
    :class:`amber.governance.Redactor`) add those layers. Order, outermost first: redaction,
    encryption, cache, backend -- so the cache and the backend only ever hold redacted ciphertext.
    """
    if not isinstance(url, str) or "://" not in url:
        raise InvalidStoreURL(
            f"invalid store URL {url!r}: expected e.g. 'sqlite:///amber.db', 'postgresql://host/db' or 'memory://'"
        )
    scheme = url.split("://", 1)[0].lower()
    scheme = scheme.split("+", 1)[0]  # postgresql+psycopg:// and friends
    if cache is None:
        cache = _cache_from_url(url)
    store = await _factory(scheme)(_without_cache(url), **options)  # backends never see ?cache=
    if cache:
        from .redis import RedisCachedStore

        try:
            store = await RedisCachedStore.wrap(store, cache)
        except BaseException:
            await store.close()  # e.g. a malformed cache URL: do not leak the inner store
            raise
    if encryption is not None:
        from ..governance.crypto import EncryptedStore

        store = EncryptedStore(store, encryption)
    if redaction is not None:
        from ..governance.redact import RedactingStore

        store = RedactingStore(store, redaction)
    return store


def _cache_from_url(url: str) -> str | None:
    from urllib.parse import parse_qs

    query = urlsplit(url).query
    values = parse_qs(query).get("cache")
    return values[0] if values else None


def _without_cache(url: str) -> str:
    from urllib.parse import parse_qsl, urlencode

    parts = urlsplit(url)
    if not parts.query:
        return url
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "cache"]
    # Rebuild by hand: urlunsplit/geturl turns sqlite:////abs.db into sqlite://abs.db (a host!).
    base = url.split("?", 1)[0]
    return base + ("?" + urlencode(kept) if kept else "")
