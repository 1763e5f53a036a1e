"""Governance layers for regulated users: encryption at rest and PII redaction, as Store wrappers
that compose over any backend (see docs/governance.md).

    store = await amber.open_store(url, redaction=Redactor(), encryption=EncryptionConfig(
        provider=LocalKeyProvider.from_text(master_key_b64), keyring=FileKeyRing(path)))
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use: the store backends import amber.governance.audit, and the
# encryption and redaction layers import the store package, so an eager import here would be circular.
_WHERE = {
    "EncryptedStore": "crypto", "EncryptionConfig": "crypto",
    "IntegrityError": "errors", "KeyDestroyed": "errors", "KeyUnavailable": "errors",
    "FileKeyRing": "keys", "KeyManager": "keys", "KeyProvider": "keys", "KeyRing": "keys",
    "LocalKeyProvider": "keys", "generate_master_key": "keys",
    "Detector": "redact", "Finding": "redact", "PresidioDetector": "redact", "RedactingStore": "redact",
    "Redactor": "redact", "default_detectors": "redact", "redacting_embedder": "redact",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'amber.governance' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "EncryptionConfig",
    "EncryptedStore",
    "KeyProvider",
    "LocalKeyProvider",
    "KeyRing",
    "FileKeyRing",
    "KeyManager",
    "generate_master_key",
    "KeyUnavailable",
    "KeyDestroyed",
    "IntegrityError",
    "Redactor",
    "RedactingStore",
    "Detector",
    "Finding",
    "PresidioDetector",
    "default_detectors",
    "redacting_embedder",
]
