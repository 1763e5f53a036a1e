"""Amber's exceptions: one root, a few branches, each carrying the HTTP status the server maps it to.

Driver errors (sqlite3, psycopg, redis) never escape a store: backends translate them here with
``raise ... from exc`` so callers catch ``AmberError`` and keep the original as ``__cause__``.

    AmberError
    ├── InvalidInput (400)
    │   ├── InvalidSessionKey
    │   ├── InvalidStoreURL
    │   └── MessageTooLarge (413)
    ├── NotFound (404)
    ├── Conflict (409)
    │   └── VersionConflict
    ├── StoreUnavailable (503)
    ├── MigrationError (500)
    ├── UnsafeConfiguration (500)
    └── MissingDependency (500)
"""

from __future__ import annotations

__all__ = [
    "AmberError",
    "InvalidInput",
    "InvalidSessionKey",
    "InvalidStoreURL",
    "MessageTooLarge",
    "NotFound",
    "Conflict",
    "VersionConflict",
    "StoreUnavailable",
    "MigrationError",
    "UnsafeConfiguration",
    "MissingDependency",
    "CapabilityMissing",
]


class AmberError(Exception):
    """Root of every error Amber raises on purpose."""

    status: int = 500
    code: str = "amber_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AmberError, ValueError):
    """The caller passed something Amber cannot store or act on. Nothing was written."""

    status = 400
    code = "invalid_input"


class InvalidSessionKey(InvalidInput):
    code = "invalid_session_key"


class InvalidStoreURL(InvalidInput):
    code = "invalid_store_url"


class MessageTooLarge(InvalidInput):
    status = 413
    code = "message_too_large"


class NotFound(AmberError, LookupError):
    status = 404
    code = "not_found"


class Conflict(AmberError):
    status = 409
    code = "conflict"


class VersionConflict(Conflict):
    """A compare-and-set write saw another version than the one it expected."""

    code = "version_conflict"

    def __init__(self, message: str, *, expected: int | None, actual: int | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class StoreUnavailable(AmberError, ConnectionError):
    """The backend cannot be reached or failed to answer. The write was NOT acknowledged."""

    status = 503
    code = "store_unavailable"


class MigrationError(AmberError):
    code = "migration_error"


class UnsafeConfiguration(AmberError):
    """The backend is configured in a way that would lose acknowledged writes."""

    code = "unsafe_configuration"


class MissingDependency(AmberError, ImportError):
    """An optional driver is not installed; the message names the exact pip command."""

    code = "missing_dependency"

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module!r} is not installed; run: pip install 'amber-memory[{extra}]'"
        )
        self.module = module
        self.extra = extra


class CapabilityMissing(AmberError):
    """The store cannot do this (e.g. vector search without pgvector); the message says what to install."""

    status = 501
    code = "capability_missing"
