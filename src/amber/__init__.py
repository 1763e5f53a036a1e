"""Amber: durable, shared memory for AutoGen agents.

The public API is small and pinned: open a store by URL, address a conversation by
:class:`SessionKey`, and use the records and errors below. Integrations live in
``amber.autogen`` (AgentChat) and ``amber.ag2`` (classic ConversableAgent).
"""

from __future__ import annotations

from .audit import acting_as
from .errors import (
    AmberError,
    CapabilityMissing,
    Conflict,
    InvalidInput,
    InvalidSessionKey,
    InvalidStoreURL,
    MessageTooLarge,
    MigrationError,
    MissingDependency,
    NotFound,
    StoreUnavailable,
    UnsafeConfiguration,
    VersionConflict,
)
from .keys import DEFAULT_TENANT, SessionKey
from .records import (
    AuditEvent,
    DeletionReceipt,
    Fact,
    Hit,
    Message,
    NewFact,
    NewMessage,
    SessionInfo,
    StateBlob,
)
from .store import DEFAULT_STORE_URL, Capability, Store, StoreLimits, open_store

__version__ = "0.1.0"

__all__ = [
    "open_store",
    "Store",
    "Capability",
    "StoreLimits",
    "SessionKey",
    "DEFAULT_TENANT",
    "DEFAULT_STORE_URL",
    "NewMessage",
    "Message",
    "SessionInfo",
    "StateBlob",
    "NewFact",
    "Fact",
    "Hit",
    "AuditEvent",
    "DeletionReceipt",
    "acting_as",
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
    "__version__",
]
