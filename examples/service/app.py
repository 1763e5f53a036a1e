"""An example FastAPI service that builds an AutoGen ``AssistantAgent`` per request and keeps its
memory in Amber -- deployed the way users deploy it, with many workers:

    AMBER_STORE=postgresql://app@db/app AMBER_EXAMPLE_MODEL=echo-history \\
        uvicorn examples.service.app:app --workers 4 --port 8000

Every worker process opens the store ONCE at startup (the lifespan below) and closes it at
shutdown; each request builds a fresh agent whose model context and memory are read from the store
by session key. So a turn answered by any worker, on any instance behind the load balancer, sees
every earlier turn of its session -- and nothing of another session.

Configuration (only this app reads the environment; the Amber library never does):

    AMBER_STORE           store URL every worker and instance shares (required), e.g.
                          postgresql://user@host/db or postgresql://...?cache=redis://host:6379/0
    AMBER_TENANT          tenant of every session served here (default "default")
    AMBER_EXAMPLE_MODEL   "echo-history" selects EchoHistoryModelClient (below). Unset: there is no
                          model, and turns are answered 503 "no model is configured".
    AMBER_LEASE_REDIS     optional redis:// URL holding the per-session turn lease across workers
                          when AMBER_STORE has no Redis layer (with ?cache=redis://... that Redis is used)
    AMBER_WINDOW          messages of the session the model sees each turn (default 40)

No LLM is reachable from this example. ``EchoHistoryModelClient`` is a DETERMINISTIC stand-in, not a
language model: its reply is a JSON report of what it RECEIVED (the turn markers of the user messages
in its context, which earlier replies were in it, what long-term memory recalled) and the pid of the
worker that ran it -- so a test can check, from the reply alone, what the model was given. To use a
real model, return your client (e.g. autogen_ext's OpenAIChatCompletionClient) from
:func:`make_model_client`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Literal, Mapping, Optional, Sequence

from autogen_agentchat.agents import AssistantAgent
from autogen_core import CancellationToken
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import amber
from amber.autogen import AmberMemory, DurableChatCompletionContext
from amber.errors import AmberError, InvalidInput
from amber.locks import session_lease
from amber.store import redact_url
from amber.tokens import estimate_tokens

log = logging.getLogger("examples.service")

#: A turn marker is any ``[[...]]`` token in a user message, e.g. ``[[u1/claim-7/t3]]``. Markers let
#: the deterministic client report exactly which turns it was shown.
MARKER = re.compile(r"\[\[([^\[\]\s]{1,200})\]\]")

NO_MODEL = (
    "no model is configured: this example reaches no LLM. Set AMBER_EXAMPLE_MODEL=echo-history for the "
    "deterministic EchoHistoryModelClient, or return your own client from make_model_client()"
)


# -- the deterministic stand-in model -------------------------------------------------------------
class EchoHistoryModelClient(ChatCompletionClient):
    """A deterministic ChatCompletionClient for tests and demos. It is NOT a language model.

    Its reply is one JSON object describing the messages it received:

    ``model``            "echo-history"
    ``pid``              the process that ran it (the uvicorn worker serving the request)
    ``reply_to``         the marker of the last user message (this turn), or None
    ``markers``          the markers of every user message in the context, oldest first
    ``answered``         for every earlier reply of this client in the context, its ``reply_to``
    ``prior_turns``      user messages before this turn's (``len(markers) - 1`` when all are marked)
    ``memory_markers``   markers found in system messages (the recalled long-term memory block)
    ``system_messages``  how many system messages it received
    """

    def __init__(self) -> None:
        self._usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._info = ModelInfo(vision=False, function_calling=False, json_output=False,
                               family=ModelFamily.UNKNOWN, structured_output=False)

    def describe(self, messages: Sequence[LLMMessage]) -> dict[str, Any]:
        users = [m for m in messages if isinstance(m, UserMessage)]
        systems = [m for m in messages if isinstance(m, SystemMessage)]
        markers = [found for m in users for found in MARKER.findall(_text(m.content))]
        answered: list[Any] = []
        for m in messages:
            if isinstance(m, AssistantMessage):
                try:
                    answered.append(json.loads(_text(m.content)).get("reply_to"))
                except (ValueError, AttributeError):
                    answered.append("?")  # not one of ours: reported, never silently skipped
        last = MARKER.findall(_text(users[-1].content)) if users else []
        return {
            "model": "echo-history",
            "pid": os.getpid(),
            "reply_to": last[-1] if last else None,
            "markers": markers,
            "answered": answered,
            "prior_turns": max(0, len(users) - 1),
            "memory_markers": [found for m in systems for found in MARKER.findall(m.content)],
            "system_messages": len(systems),
        }

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: Optional[bool | type[BaseModel]] = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: Optional[CancellationToken] = None,
    ) -> CreateResult:
        content = json.dumps(self.describe(messages), ensure_ascii=False)
        self._usage = RequestUsage(prompt_tokens=self.count_tokens(messages), completion_tokens=estimate_tokens(content))
        self._total = RequestUsage(prompt_tokens=self._total.prompt_tokens + self._usage.prompt_tokens,
                                   completion_tokens=self._total.completion_tokens + self._usage.completion_tokens)
        return CreateResult(finish_reason="stop", content=content, usage=self._usage, cached=False)

    async def create_stream(self, messages: Sequence[LLMMessage], **kwargs: Any) -> AsyncGenerator[str | CreateResult, None]:
        yield await self.create(messages, **kwargs)

    async def close(self) -> None:
        return None

    def actual_usage(self) -> RequestUsage:
        return self._usage

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return sum(estimate_tokens(_text(getattr(m, "content", ""))) for m in messages)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return max(0, 128_000 - self.count_tokens(messages))

    @property
    def capabilities(self) -> Any:  # deprecated in AutoGen; model_info is the real one
        return self._info

    @property
    def model_info(self) -> ModelInfo:
        return self._info


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part for part in content if isinstance(part, str))
    return str(content)


def make_model_client(name: str | None) -> ChatCompletionClient | None:
    """The model client for one request, or None when no model is configured. Put yours here."""
    if name is None:
        return None
    if name == "echo-history":
        return EchoHistoryModelClient()
    raise InvalidInput(f"unknown AMBER_EXAMPLE_MODEL {name!r}; this example knows 'echo-history'")


# -- settings and app ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    store_url: str
    tenant: str = "default"
    model: str | None = None
    lease_redis: str | None = None
    window: int = 40

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        url = env.get("AMBER_STORE")
        if not url:
            raise RuntimeError("set AMBER_STORE to the store URL every worker shares (e.g. postgresql://user@host/db)")
        make_model_client(env.get("AMBER_EXAMPLE_MODEL") or None)  # fail at startup, not on the first turn
        return cls(store_url=url, tenant=env.get("AMBER_TENANT", "default"),
                   model=env.get("AMBER_EXAMPLE_MODEL") or None,
                   lease_redis=env.get("AMBER_LEASE_REDIS") or None,
                   window=int(env.get("AMBER_WINDOW", "40")))


class Turn(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service. ``settings=None`` reads them from the environment when a worker starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or Settings.from_env(os.environ)
        # One store per worker process, shared by all its requests; closed (never deleted) at shutdown.
        async with await amber.open_store(s.store_url) as store:
            lease_target: Any = store  # a RedisCachedStore holds leases in its Redis; others: in-process
            redis_client = None
            if s.lease_redis:
                import redis.asyncio as aioredis

                lease_target = redis_client = aioredis.Redis.from_url(s.lease_redis)
            app.state.settings, app.state.store, app.state.lease_target = s, store, lease_target
            log.info("worker %d serving %s (tenant %s)", os.getpid(), redact_url(s.store_url), s.tenant)
            try:
                yield
            finally:
                if redis_client is not None:
                    await redis_client.aclose()

    app = FastAPI(title="Amber example service", lifespan=lifespan)

    @app.exception_handler(AmberError)
    async def amber_error(request: Request, exc: AmberError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": str(exc)}, status_code=exc.status)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        s: Settings = request.app.state.settings
        return {"ok": True, "pid": os.getpid(), "store": redact_url(s.store_url), "tenant": s.tenant, "model": s.model}

    @app.post("/users/{user}/threads/{thread}/turns")
    async def turn(user: str, thread: str, body: Turn, request: Request) -> dict[str, Any]:
        s: Settings = request.app.state.settings
        store: amber.Store = request.app.state.store
        key = amber.SessionKey(tenant=s.tenant, user=user, thread=thread)  # from YOUR domain, never random
        model_client = make_model_client(s.model)
        if model_client is None:
            raise HTTPException(status_code=503, detail=NO_MODEL)
        # One turn of a session at a time: a second request for the same session waits here, then
        # sees the first one's messages. Across workers this needs Redis (see AMBER_LEASE_REDIS).
        async with session_lease(request.app.state.lease_target, key, ttl=30, wait=60) as lease:
            agent = AssistantAgent(  # built per request: everything it knows is reloaded by key
                "support",
                model_client=model_client,
                system_message="You are a claims assistant.",
                model_context=DurableChatCompletionContext(store, key, window=s.window),
                memory=[AmberMemory(store, key, limit=4, max_tokens=400)],
            )
            result = await agent.run(task=body.text)
            lease.ensure()  # report a lease lost mid-turn instead of claiming the turn was serialised
        reply = result.messages[-1]
        log.info("pid %d answered %s (lease %s fence %d)", os.getpid(), key, lease.backend, lease.fence)
        return {"reply": getattr(reply, "content", None), "pid": os.getpid(), "session": str(key),
                "lease": lease.backend, "fence": lease.fence}

    @app.get("/users/{user}/threads/{thread}/messages")
    async def messages(user: str, thread: str, request: Request) -> dict[str, Any]:
        s: Settings = request.app.state.settings
        key = amber.SessionKey(tenant=s.tenant, user=user, thread=thread)
        stored = await request.app.state.store.read_since(key, 0)
        return {"session": str(key), "messages": [
            {"seq": m.seq, "role": m.role, "author": m.author, "content": m.content} for m in stored]}

    return app


app = create_app()
