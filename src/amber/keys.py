"""Session identity: who a conversation belongs to, in one string form used everywhere.

A session is addressed by ``(tenant, user, thread)``. Each part is 1-128 characters drawn from
``A-Z a-z 0-9 _ . - @ + = :`` and must start with a letter or digit. The string form is
``tenant/user/thread`` (CLI, REST, logs); ``user/thread`` means the default tenant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidSessionKey

__all__ = ["SessionKey", "DEFAULT_TENANT", "validate_part", "MAX_PART_LENGTH", "PART_PATTERN"]

DEFAULT_TENANT = "default"
MAX_PART_LENGTH = 128
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-@+=:]{0,127}$")
PART_PATTERN = _PART.pattern  # also valid JSON Schema (ECMA) syntax: the REST API documents it


def validate_part(name: str, value: object) -> str:
    """Return ``value`` if it is a valid tenant, user or thread id, else raise InvalidSessionKey."""
    if not isinstance(value, str):
        raise InvalidSessionKey(f"{name} must be a string, got {type(value).__name__}")
    if not _PART.fullmatch(value):  # match() would let a trailing newline through ('$')
        raise InvalidSessionKey(
            f"invalid {name} {value[:140]!r}: use 1-{MAX_PART_LENGTH} characters from "
            "A-Z a-z 0-9 _ . - @ + = : starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True, order=True)
class SessionKey:
    """The stable identity of one conversation.

    Derive it from your own domain (customer id, ticket id), never from a per-request random id:
    a new thread id is a new, empty conversation.
    """

    tenant: str
    user: str
    thread: str

    def __init__(self, tenant: str = DEFAULT_TENANT, user: str = "", thread: str = "") -> None:
        object.__setattr__(self, "tenant", validate_part("tenant", tenant))
        object.__setattr__(self, "user", validate_part("user", user))
        object.__setattr__(self, "thread", validate_part("thread", thread))

    @classmethod
    def of(cls, user: str, thread: str, *, tenant: str = DEFAULT_TENANT) -> "SessionKey":
        return cls(tenant=tenant, user=user, thread=thread)

    @classmethod
    def parse(cls, text: str) -> "SessionKey":
        """Parse ``tenant/user/thread`` or ``user/thread`` (default tenant)."""
        if not isinstance(text, str):
            raise InvalidSessionKey(f"session key must be a string, got {type(text).__name__}")
        parts = text.split("/")
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2])
        if len(parts) == 2:
            return cls(DEFAULT_TENANT, parts[0], parts[1])
        raise InvalidSessionKey(
            f"invalid session key {text[:400]!r}: expected 'tenant/user/thread' or 'user/thread'"
        )

    def __str__(self) -> str:
        return f"{self.tenant}/{self.user}/{self.thread}"

    def __repr__(self) -> str:
        return f"SessionKey({str(self)!r})"
