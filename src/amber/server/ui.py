"""The memory inspector: the web page at ``/ui`` and the few JSON routes it needs beyond the REST API.

The page is plain HTML, CSS and JavaScript modules shipped in ``amber/server/static`` (no build step,
no request leaves the server's origin: a Content-Security-Policy of ``'self'`` enforces it). It uses the
same keys as the REST API: a tenant key sees only its tenant, the admin key sees tenants, keys, every
audit trail and the ``doctor`` findings for the store behind the server. The key is typed once, kept
in the tab's ``sessionStorage`` and sent as ``Authorization: Bearer``; it never appears in a URL.

Routes added here (all in the OpenAPI document, tag ``inspector``):

* ``GET /v1/inspect/sessions``: sessions with the ``doctor`` heuristic's verdict on per-request keys;
* ``GET /v1/inspect/learning``: the tenant's learning queue (pending, leased, dead jobs);
* ``GET /v1/users/{user}/messages/{message_id}``: where a message lives (a fact's provenance);
* ``POST /v1/users/{user}/recall/preview``: recall hits with per-path scores and the exact memory
  block ``render_block`` would inject, with its token count;
* ``GET /v1/admin/learning``, ``/v1/admin/doctor``: the learning queue of any tenant, and ``amber doctor``.

Admins read any tenant's audit trail through the REST API's own ``/v1/admin/tenants/{tenant}/audit``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInput, NotFound
from ..keys import SessionKey, validate_part
from ..store.base import Store
from ..transfer import jsonable
from . import models as m
from .app import _message_out, _require_user, _session_out, admin_access, tenant_key
from .auth import ApiKey

__all__ = ["mount_ui", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
_HEADERS = {
    # Everything from this origin, nothing from anywhere else: the inspector makes no outside request.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_SCAN_SESSIONS = 2000  # as many sessions as `amber doctor` samples for the random-key heuristic
_LOCATE_MAX = 200_000  # messages scanned at most to find one message by id


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InspectSession(_Model):
    key: str
    user: str
    thread: str
    message_count: int
    last_seq: int
    created_at: datetime
    updated_at: datetime
    looks_random: bool = Field(description="The user's sessions look keyed per request and this one is a "
                                           "one-turn or uuid-like session (the `amber doctor` heuristic).")
    random_reason: Optional[str] = Field(description="Why the user's session keys look random, if they do.")


class InspectSessionPage(_Model):
    items: list[InspectSession]
    next_offset: Optional[int]
    flagged_users: dict[str, str] = Field(description="Users whose session keys look random per request -> why "
                                                      "(over the tenant's most recent sessions).")


class LearnQueueOut(_Model):
    tenant: Optional[str] = Field(description="The tenant counted; null for all tenants (admin).")
    counts: dict[str, int] = Field(description="Jobs by state: pending, leased, dead (failed too often).")


class LocatedMessage(_Model):
    user: str
    thread: str
    message: m.MessageOut


class RecallPreviewIn(_Model):
    query: str = Field(min_length=1, max_length=4000)
    limit: int = Field(8, ge=1, le=200)
    max_tokens: int = Field(600, ge=50, le=100_000, description="Token budget of the memory block.")
    kinds: list[Literal["message", "fact"]] = Field(default_factory=lambda: ["message", "fact"], min_length=1)
    modes: list[Literal["lexical", "vector"]] = Field(
        default_factory=lambda: ["lexical", "vector"], min_length=1,
        description="Retrieval paths; vector needs an embedder on the server (AMBER_EMBEDDER).")


class MemoryBlockOut(_Model):
    text: str = Field(description="Exactly what would be injected into the model's context ('' when empty).")
    tokens: int
    max_tokens: int
    hit_ids: list[str] = Field(description="Ids of the hits that fit in the block, in order.")


class RecallPreviewOut(_Model):
    modes: list[str] = Field(description="The paths that ran.")
    embedder: Optional[str] = Field(description="The server's embedder name; null means lexical only.")
    items: list[m.HitOut] = Field(description="Fused hits, best first; `paths` holds each path's own score.")
    block: MemoryBlockOut


class FindingOut(_Model):
    code: str
    severity: Literal["problem", "warning", "info"]
    title: str
    detail: str
    fix: str


class DoctorOut(_Model):
    store: str = Field(description="The store URL, secrets redacted.")
    tenant: str
    ok: bool
    findings: list[FindingOut]


# -- helpers -------------------------------------------------------------------------------------------


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


async def _inspect_sessions(store: Store, tenant: str, user: Optional[str], limit: int,
                            offset: int) -> InspectSessionPage:
    from ..doctor import looks_random_thread, random_key_suspects

    suspects = random_key_suspects(await store.list_sessions(tenant, limit=_SCAN_SESSIONS))
    page = await store.list_sessions(tenant, user, limit=limit, offset=offset)
    items = []
    for info in page:
        reason = suspects.get(info.key.user)
        flagged = reason is not None and (info.message_count <= 2 or looks_random_thread(info.key.thread))
        items.append(InspectSession(**_session_out(info).model_dump(), looks_random=flagged, random_reason=reason))
    return InspectSessionPage(items=items, next_offset=offset + limit if len(page) == limit else None,
                              flagged_users=suspects)


async def _locate(store: Store, tenant: str, user: str, message_id: str, thread: Optional[str]) -> LocatedMessage:
    validate_part("user", user)
    threads: list[str] = []
    if thread:
        threads.append(validate_part("thread", thread))
    offset = 0
    while True:  # every session of the user, most recent first, after the hinted one
        page = await store.list_sessions(tenant, user, limit=500, offset=offset)
        threads.extend(s.key.thread for s in page if s.key.thread not in threads)
        if len(page) < 500:
            break
        offset += 500
    scanned = 0
    for t in threads:
        key = SessionKey(tenant, user, t)
        after = 0
        while scanned < _LOCATE_MAX:
            batch = await store.read_since(key, after, limit=1000)
            for msg in batch:
                if msg.id == message_id:
                    return LocatedMessage(user=user, thread=t, message=_message_out(msg))
            scanned += len(batch)
            if len(batch) < 1000:
                break
            after = batch[-1].seq
    raise NotFound(f"no message {message_id} for user {user}")


# -- routes -------------------------------------------------------------------------------------------


def _inspector_router() -> APIRouter:
    r = APIRouter(tags=["inspector"])

    @r.get("/v1/inspect/sessions", response_model=InspectSessionPage,
           summary="Sessions with message counts, last activity and per-request-key flags (doctor's heuristic)")
    async def inspect_sessions(request: Request, key: ApiKey = Depends(tenant_key), user: Optional[str] = None,
                               limit: int = Query(100, ge=1, le=1000),
                               offset: int = Query(0, ge=0)) -> InspectSessionPage:
        request.state.log.update(operation="inspect.sessions")
        if user is not None:
            validate_part("user", user)
        return await _inspect_sessions(_store(request), key.tenant, user, limit, offset)

    @r.get("/v1/inspect/learning", response_model=LearnQueueOut,
           summary="The learning queue of the caller's tenant: pending, leased and dead (failed) jobs")
    async def inspect_learning(request: Request, key: ApiKey = Depends(tenant_key)) -> LearnQueueOut:
        request.state.log.update(operation="inspect.learning")
        counts = await _store(request).learn_queue_stats(key.tenant)
        return LearnQueueOut(tenant=key.tenant, counts=dict(counts))

    @r.get("/v1/users/{user}/messages/{message_id}", response_model=LocatedMessage,
           summary="Find a message by id among the user's sessions (a fact's source); `thread` is searched first")
    async def locate_message(request: Request, user: str, message_id: str, key: ApiKey = Depends(tenant_key),
                             thread: Optional[str] = None) -> LocatedMessage:
        request.state.log.update(operation="message.locate", user=user)
        return await _locate(_store(request), key.tenant, user, message_id, thread)

    @r.post("/v1/users/{user}/recall/preview", response_model=RecallPreviewOut,
            summary="Recall as the agent would: hits with per-path scores and the exact memory block injected")
    async def recall_preview(request: Request, user: str, body: RecallPreviewIn,
                             key: ApiKey = Depends(tenant_key)) -> RecallPreviewOut:
        from ..recall import Recall, render_block

        request.state.log.update(operation="recall.preview", user=user)
        store = _store(request)
        await _require_user(store, key.tenant, user)
        embedder = request.app.state.embedder
        modes = [mode for mode in body.modes if mode == "lexical" or embedder is not None]
        if not modes:
            raise InvalidInput("the vector path needs an embedder on the server (start it with AMBER_EMBEDDER)")
        hits = await Recall(store, embedder=embedder).search(key.tenant, user, body.query, limit=body.limit,
                                                              modes=tuple(modes), kinds=tuple(body.kinds))
        block = render_block(hits, max_tokens=body.max_tokens)
        items = []
        for h in hits:
            d = jsonable(h)
            d.pop("tenant")
            items.append(m.HitOut.model_validate(d))
        request.state.log["hits"] = len(hits)
        return RecallPreviewOut(modes=modes, embedder=getattr(embedder, "name", None), items=items,
                                block=MemoryBlockOut(text=block.text, tokens=block.tokens, max_tokens=body.max_tokens,
                                                     hit_ids=[h.id for h in block.hits]))

    return r


def _admin_inspector_router() -> APIRouter:
    r = APIRouter(prefix="/v1/admin", tags=["inspector", "admin"], dependencies=[Depends(admin_access)],
                  responses={403: {"model": m.ErrorEnvelope, "description": "Admin API disabled"}})

    @r.get("/learning", response_model=LearnQueueOut, summary="The learning queue of one tenant, or of all")
    async def admin_learning(request: Request, tenant: Optional[str] = Query(None, max_length=128)) -> LearnQueueOut:
        if tenant is not None:
            validate_part("tenant", tenant)
        return LearnQueueOut(tenant=tenant, counts=dict(await _store(request).learn_queue_stats(tenant)))

    @r.get("/doctor", response_model=DoctorOut,
           summary="`amber doctor` on the store behind this server (session-key check for one tenant)")
    async def admin_doctor(request: Request, tenant: str = Query("default", max_length=128)) -> DoctorOut:
        from ..doctor import diagnose

        validate_part("tenant", tenant)
        # The server, unlike the library, may read its environment: doctor checks the worker settings in it.
        report = await diagnose(request.app.state.store_url, tenant=tenant, env=dict(os.environ))
        data = report.as_dict()
        return DoctorOut(store=data["store"], tenant=tenant, ok=data["ok"],
                         findings=[FindingOut(**f) for f in data["findings"]])

    return r


def mount_ui(app: FastAPI) -> None:
    """Add the inspector's page, assets and JSON routes to ``app``."""
    app.include_router(_inspector_router())
    app.include_router(_admin_inspector_router())

    @app.get("/ui", include_in_schema=False)
    async def ui_page() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={**_HEADERS, "Cache-Control": "no-store"})

    @app.get("/ui/", include_in_schema=False)
    async def ui_slash() -> Response:
        return RedirectResponse("/ui", status_code=308)

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def ui_asset(name: str) -> Response:
        media = _ASSETS.get(name)
        if media is None:  # a fixed list: no path from the request ever reaches the filesystem
            raise NotFound(f"no asset {name}")
        return FileResponse(STATIC_DIR / name, media_type=media, headers={**_HEADERS, "Cache-Control": "no-cache"})
