"""Translate AutoGen ``LLMMessage`` objects to Amber records and back.

A stored message keeps two forms:

* ``payload`` -- the exact AutoGen message (``model_dump(mode="json")``, images as base64 PNG),
  tagged ``payload_format = "autogen.llm/1"`` so a later AutoGen with a changed schema can still be
  read by a decoder written for version 1;
* ``content`` -- a plain-text rendering (tool calls as ``name(arguments)``, images as ``[image]``)
  that search, fact extraction, token budgets and humans reading an export can use without AutoGen.

Messages written by other adapters (the REST server, AG2, imports) carry another format and are
decoded from ``role`` and ``content``, so an AgentChat agent sees them too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Mapping, Sequence

from autogen_core import FunctionCall, Image
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResultMessage,
    LLMMessage,
    SystemMessage,
    UserMessage,
)
from pydantic import TypeAdapter, ValidationError

from ..errors import InvalidInput
from ..records import Message, NewMessage
from ..tokens import estimate_tokens

__all__ = [
    "PAYLOAD_FORMAT",
    "VIEW_KEY",
    "to_new_message",
    "from_stored",
    "render_text",
    "estimate_message_tokens",
    "validate_llm_message",
    "canonical_json",
    "derive_key",
]

log = logging.getLogger(__name__)

PAYLOAD_FORMAT = "autogen.llm/1"
# Metadata key naming the agent whose model context a message belongs to (absent: the unnamed view).
VIEW_KEY = "autogen.view"

# OpenAI's price of one low-detail image; a deliberate over-estimate for small images.
IMAGE_TOKENS = 85
# Role markers and separators each message costs in a chat-completion request.
MESSAGE_OVERHEAD_TOKENS = 4

_LLM = TypeAdapter(LLMMessage)

_ROLE = {
    SystemMessage: "system",
    UserMessage: "user",
    AssistantMessage: "assistant",
    FunctionExecutionResultMessage: "tool",
}


def validate_llm_message(message: object) -> LLMMessage:
    if type(message) not in _ROLE:
        raise InvalidInput(
            f"expected an AutoGen LLMMessage (SystemMessage, UserMessage, AssistantMessage or "
            f"FunctionExecutionResultMessage), got {type(message).__name__}"
        )
    return message  # type: ignore[return-value]


def render_text(message: LLMMessage) -> str:
    """The message as plain text, for search, budgets and people; never used to rebuild it."""
    if isinstance(message, (SystemMessage,)):
        return message.content
    if isinstance(message, UserMessage):
        if isinstance(message.content, str):
            return message.content
        return "\n".join(part if isinstance(part, str) else "[image]" for part in message.content)
    if isinstance(message, AssistantMessage):
        if isinstance(message.content, str):
            return message.content
        return "\n".join(f"{call.name}({call.arguments})" for call in message.content)
    return "\n".join(result.content for result in message.content)


def estimate_message_tokens(message: LLMMessage) -> int:
    """Offline token estimate of one message as a model would be sent it."""
    tokens = estimate_tokens(render_text(message)) + MESSAGE_OVERHEAD_TOKENS
    if isinstance(message, UserMessage) and not isinstance(message.content, str):
        tokens += IMAGE_TOKENS * sum(1 for part in message.content if isinstance(part, Image))
    if isinstance(message, AssistantMessage) and message.thought:
        tokens += estimate_tokens(message.thought)
    if isinstance(message, AssistantMessage) and not isinstance(message.content, str):
        tokens += 3 * len(message.content)  # call ids and wrapper fields
    return tokens


def _author(message: LLMMessage) -> str | None:
    source = getattr(message, "source", None)
    if isinstance(source, str) and source:
        return source[:256]
    return None


def canonical_json(message: LLMMessage) -> str:
    return json.dumps(message.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def derive_key(*parts: str) -> str:
    """An idempotency key from the given parts (unambiguous: parts are length-prefixed)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return "ag1:" + h.hexdigest()


def to_new_message(message: LLMMessage, *, view: str | None, idempotency_key: str) -> NewMessage:
    validate_llm_message(message)
    metadata: dict[str, Any] = {"autogen.type": message.type}
    if view is not None:
        metadata[VIEW_KEY] = view
    return NewMessage(
        role=_ROLE[type(message)],
        content=render_text(message),
        payload=message.model_dump(mode="json"),
        payload_format=PAYLOAD_FORMAT,
        author=_author(message),
        idempotency_key=idempotency_key,
        metadata=metadata,
    )


def same_message(stored: Message, canonical: str) -> bool:
    """Whether a stored record holds exactly the AutoGen message whose canonical JSON is given."""
    if stored.payload_format != PAYLOAD_FORMAT or stored.payload is None:
        return False
    return json.dumps(dict(stored.payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False) == canonical


def in_view(stored: Message, view: str | None) -> bool:
    return stored.role != "event" and stored.metadata.get(VIEW_KEY) == view


def from_stored(stored: Message) -> LLMMessage | None:
    """The AutoGen message a stored record holds; None for records no model should see (events)."""
    if stored.payload_format == PAYLOAD_FORMAT and stored.payload is not None:
        try:
            return _LLM.validate_python(dict(stored.payload))
        except (ValidationError, ValueError) as exc:
            # Readable beats crashing the agent: fall back to the text form, and say so.
            log.warning("message %s (seq %s) has an unreadable %s payload (%s); using its text form",
                        stored.id, stored.seq, PAYLOAD_FORMAT, exc)
    return _from_text(stored)


def _from_text(stored: Message) -> LLMMessage | None:
    role, text, author = stored.role, stored.content, stored.author
    if role == "system":
        return SystemMessage(content=text)
    if role == "assistant":
        return AssistantMessage(content=text, source=author or "assistant")
    if role in ("user", "tool"):
        # A tool result without its call id cannot be a FunctionExecutionResultMessage (the model API
        # would reject an orphan result), so it is shown to the model as data from the tool.
        return UserMessage(content=text, source=author or role)
    return None


def decode_all(stored: Sequence[Message]) -> list[LLMMessage]:
    out: list[LLMMessage] = []
    for record in stored:
        message = from_stored(record)
        if message is not None:
            out.append(message)
    return out


def as_llm_messages(values: Sequence[Mapping[str, Any] | LLMMessage]) -> list[LLMMessage]:
    """Validate AutoGen messages given as objects or as their dumps (from a saved state)."""
    out: list[LLMMessage] = []
    for i, value in enumerate(values):
        if isinstance(value, tuple(_ROLE)):
            out.append(value)  # type: ignore[arg-type]
            continue
        try:
            out.append(_LLM.validate_python(value))
        except (ValidationError, ValueError, TypeError) as exc:
            raise InvalidInput(f"message {i} is not a valid AutoGen LLMMessage: {exc}") from exc
    return out


def is_function_call_message(message: LLMMessage) -> bool:
    return (
        isinstance(message, AssistantMessage)
        and isinstance(message.content, list)
        and all(isinstance(item, FunctionCall) for item in message.content)
    )
