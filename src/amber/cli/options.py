"""Governance settings of the ``amber`` command and ``amber serve``: encryption at rest and PII
redaction, read from the environment in ONE way (the library itself never reads it).

Like ``--store`` / ``AMBER_STORE``, every setting is a global ``amber`` option with an environment
variable behind it; a command-line option wins over the variable:

* encryption: ``AMBER_MASTER_KEY`` (base64 master keys, current first; environment only -- a key on
  the command line would show in ``ps``) or ``--master-key-file`` / ``AMBER_MASTER_KEY_FILE``, plus
  ``--keyring`` / ``AMBER_KEYRING`` (the keyring file, kept apart from the database). Optional
  ``AMBER_ENCRYPT_TENANTS`` (comma-separated) limits encryption to those tenants. No master key: no
  encryption. A master key without a keyring is an error, never a silent plaintext fallback.
* redaction: ``--redact`` / ``AMBER_REDACT``: ``off`` (default), ``on`` (every built-in detector,
  action ``redact``), a policy ``EMAIL=mask,CARD=redact,*=keep`` (``*`` sets the default action), or
  ``@path/policy.json`` (``{"policy": {...}, "default": "redact", "tenants": {"acme": {...}},
  "redact_state": true}``). The ``hash`` action takes its key from ``AMBER_REDACT_HASH_KEY``
  (at least 16 characters, kept secret).

:func:`governance_from_environ` turns those variables into the ``encryption=`` and ``redaction=``
arguments of :func:`amber.open_store`; the CLI's store handle and the server's app factory both call it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import InvalidInput

__all__ = ["ENV_VARS", "embedder_from_environ", "governance_from_environ", "parse_redaction"]

# Every variable this module reads (a global CLI option exports its value to the same name, so the
# server's worker processes, which build their app from the environment, see it too).
ENV_VARS = ("AMBER_MASTER_KEY", "AMBER_MASTER_KEY_FILE", "AMBER_KEYRING", "AMBER_ENCRYPT_TENANTS",
            "AMBER_REDACT", "AMBER_REDACT_HASH_KEY")


def embedder_from_environ(spec: str | None, environ: Mapping[str, str]) -> Any:
    """The embedder for ``spec`` (``none``, ``minilm``, ``openai:<model>``, ``hash[:dim]``), with what
    an ``openai:`` endpoint needs from the environment: ``AMBER_EMBEDDER_API_KEY`` (else
    ``OPENAI_API_KEY``) and ``AMBER_EMBEDDER_BASE_URL`` (else ``OPENAI_BASE_URL``; default OpenAI's).
    Every command and the server open embedders here, so the worker that stores vectors and the
    search that queries them reach the same endpoint."""
    from ..embed import open_embedder

    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    options: dict[str, Any] = {}
    if spec.strip().lower().startswith("openai:"):
        key = environ.get("AMBER_EMBEDDER_API_KEY") or environ.get("OPENAI_API_KEY")
        url = environ.get("AMBER_EMBEDDER_BASE_URL") or environ.get("OPENAI_BASE_URL")
        if key:
            options["api_key"] = key
        if url:
            options["base_url"] = url
    return open_embedder(spec, **options)


def governance_from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """``{"encryption": EncryptionConfig | None, "redaction": Redactor | None}`` from ``environ``."""
    return {"encryption": _encryption(environ), "redaction": parse_redaction(
        environ.get("AMBER_REDACT"), hash_key=environ.get("AMBER_REDACT_HASH_KEY"))}


def _encryption(environ: Mapping[str, str]) -> Any:
    if not (environ.get("AMBER_MASTER_KEY") or environ.get("AMBER_MASTER_KEY_FILE")):
        if environ.get("AMBER_KEYRING"):
            raise InvalidInput("AMBER_KEYRING is set but no master key: set AMBER_MASTER_KEY or "
                               "AMBER_MASTER_KEY_FILE (or unset AMBER_KEYRING to store plaintext)")
        return None
    from ..governance import EncryptionConfig

    options: dict[str, Any] = {}
    tenants = environ.get("AMBER_ENCRYPT_TENANTS")
    if tenants:
        options["tenants"] = frozenset(t.strip() for t in tenants.split(",") if t.strip())
    path = environ.get("AMBER_MASTER_KEY_FILE")
    if path and not environ.get("AMBER_MASTER_KEY") and not Path(path).is_file():
        raise InvalidInput(f"AMBER_MASTER_KEY_FILE {path!r} is not a readable file")
    return EncryptionConfig.from_environ(environ, **options)


def parse_redaction(spec: str | None, *, hash_key: str | None = None) -> Any:
    """A :class:`amber.governance.Redactor` for ``spec`` (see the module docstring), or None for off."""
    spec = (spec or "").strip()
    if spec.lower() in ("", "off", "none", "false", "0"):
        return None
    from ..governance import Redactor

    key = hash_key.encode("utf-8") if hash_key else None
    if spec.lower() in ("on", "true", "1", "default"):
        return Redactor(hash_key=key)
    if spec.startswith("@"):
        path = Path(spec[1:])
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInput(f"cannot read the redaction policy file {str(path)!r}: {exc.strerror}") from exc
        except ValueError as exc:
            raise InvalidInput(f"the redaction policy file {str(path)!r} is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or not set(doc) <= {"policy", "default", "tenants", "redact_state"}:
            raise InvalidInput("a redaction policy file is a JSON object with keys policy, default, tenants, "
                               "redact_state")
        return Redactor(doc.get("policy"), tenants=doc.get("tenants"), default=doc.get("default", "redact"),
                        redact_state=bool(doc.get("redact_state", True)), hash_key=key)
    policy: dict[str, str] = {}
    default = "redact"
    for item in spec.split(","):
        entity, sep, action = item.partition("=")
        entity, action = entity.strip().upper(), action.strip().lower()
        if not sep or not entity or not action:
            raise InvalidInput(f"invalid redaction policy item {item.strip()!r}: expected ENTITY=action "
                               "(e.g. EMAIL=mask,CARD=redact,*=keep), on, off or @policy.json")
        if entity == "*":
            default = action
        else:
            policy[entity] = action
    _check_entities(policy)
    return Redactor(policy, default=default, hash_key=key)  # type: ignore[arg-type]


def _check_entities(policy: Mapping[str, str]) -> None:
    from ..governance.redact import ENTITIES

    unknown = sorted(set(policy) - set(ENTITIES))
    if unknown:
        raise InvalidInput(f"unknown PII entity {unknown[0]!r} in the redaction policy; built in: {', '.join(ENTITIES)}")
