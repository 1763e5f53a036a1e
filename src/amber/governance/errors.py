"""Errors of the governance layers (encryption, redaction). All are :class:`amber.AmberError`s."""

from __future__ import annotations

from ..errors import AmberError

__all__ = ["KeyUnavailable", "KeyDestroyed", "IntegrityError"]


class KeyUnavailable(AmberError):
    """An encrypted tenant's data key cannot be obtained (no keyring entry, or the master key that
    wrapped it is not configured). Nothing is read or written in plaintext instead."""

    status = 503
    code = "key_unavailable"


class KeyDestroyed(KeyUnavailable):
    """The tenant's keys were destroyed (crypto-shredded): its data is unreadable for good, and new
    writes are refused until an operator creates a new key on purpose."""

    status = 410
    code = "key_destroyed"


class IntegrityError(AmberError):
    """A ciphertext failed authentication: it was changed, truncated, or moved from another
    tenant, user, thread or record kind -- or a plaintext record sits in an encrypted tenant."""

    status = 500
    code = "integrity_error"
