"""The FastAPI application: REST over the same Python API the agents use.

Sessions are addressed as ``/v1/users/{user}/sessions/{thread}`` inside the caller's tenant, which
comes from the API key and never from the request: another tenant's data is simply not there (404),
and a write with the same user and thread lands in the caller's own tenant.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import time
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..audit import acting_as
from ..errors import AmberError, InvalidInput, NotFound, VersionConflict
from ..keys import SessionKey, validate_part
from ..logging import configure_json_logging, instrument, logger
from ..records import NewFact, NewMessage
from ..store import open_store, redact_url
from ..store.base import Store, validate_state_name
from ..transfer import export_jsonl, import_jsonl, jsonable
from . import models as m
from .auth import ApiKey, KeyRing
from .metrics import Metrics

__all__ = ["create_app", "app_from_env", "Unauthorized", "Forbidden"]

log = logging.getLogger("amber.server")


class Unauthorized(AmberError):
    status = 401
    code = "unauthorized"


class Forbidden(AmberError):
    status = 403
    code = "forbidden"


class PreconditionFailed(AmberError):
    status = 412
    code = "version_conflict"


class BodyTooLarge(AmberError):
    status = 413
    code = "request_too_large"


class InvalidRequest(AmberError):
    status = 422
    code = "invalid_request"


# Integers the store keeps are signed 64-bit (SQLite, PostgreSQL bigint): larger ones are malformed.
MAX_INT64 = 2**63 - 1

# Tenant, user and thread ids are key parts everywhere in this API (amber.keys). The handlers (and the
# store) enforce the rule with 400 invalid_session_key; the schema states it so clients know it up front.
KEY_PART_SCHEMA = m.KEY_PART_SCHEMA
_KEY_PART_PARAMS = ("tenant", "user", "thread")


def _tidy_parameters(doc: dict[str, Any]) -> dict[str, Any]:
    """Two fixes to every path, query and header parameter of ``doc``, in one place so routes added
    later (in any router) get them too: an optional parameter is absent or a string -- HTTP has no
    null, so the ``null`` variant FastAPI adds for ``Optional`` goes; and ``tenant``/``user``/``thread``
    carry the key-part rule."""
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            for param in operation.get("parameters", ()) if isinstance(operation, dict) else ():
                schema = param.get("schema", {})
                variants = [v for v in schema.get("anyOf", ()) if v.get("type") != "null"]
                if "anyOf" in schema and len(variants) == 1:
                    del schema["anyOf"]
                    schema.update(variants[0])
                if param.get("name") in _KEY_PART_PARAMS and param.get("in") in ("path", "query") \
                        and schema.get("type") == "string":
                    schema.update(KEY_PART_SCHEMA)
    return doc


def _declared_query(route: Any) -> frozenset[str]:
    names: set[str] = set()
    pending = [route.dependant]
    while pending:  # the route's own parameters and those of its dependencies
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


async def _known_query_only(request: Request) -> None:
    """Refuse query parameters the route does not declare (422): a typo such as ``?usr=alice`` on
    /v1/export must not silently widen the request to the whole tenant."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant") or not request.query_params:
        return
    declared = _declared_query(route)
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        raise InvalidRequest(f"unknown query parameter {unknown[0][:64]!r} (this route takes: {allowed})")


def _envelope(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status}}, status_code=status,
                        headers=headers)


_ERRORS = {code: {"model": m.ErrorEnvelope, "description": desc} for code, desc in (
    (400, "Invalid input (nothing was written)"), (401, "Missing, unknown or revoked API key"),
    (404, "Not found in the caller's tenant"), (413, "Request or message too large"),
    (422, "Malformed request"), (503, "Store unavailable (the write was not acknowledged)"))}

_tenant_auth = HTTPBearer(auto_error=False, scheme_name="apiKey",
                          description="A tenant API key: `Authorization: Bearer amb_...`")
_admin_auth = HTTPBearer(auto_error=False, scheme_name="adminKey",
                         description="The admin key given to `amber serve` (env AMBER_ADMIN_KEY)")


# -- body size limit (pure ASGI, so streamed bodies are counted too) ------------------------------


class _BodyLimit:
    def __init__(self, app: Any, max_body: int, max_import: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_import = max_import

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_import if scope["path"] == "/v1/import" else self.max_body
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _envelope(413, "request_too_large",
                                    f"request body is larger than {limit} bytes")(scope, receive, send)
                    return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"request body is larger than {limit} bytes")
            return message

        await self.app(scope, counted, send)


# -- the application --------------------------------------------------------------------------------


def create_app(
    store_url: str | None = None,
    *,
    store: Store | None = None,
    admin_key: str | None = None,
    max_body_bytes: int = 8 * 1_048_576,
    max_import_bytes: int = 256 * 1_048_576,
    embedder: Any = None,
    json_logs: bool = True,
    encryption: Any = None,
    redaction: Any = None,
) -> FastAPI:
    """Build the app over ``store_url`` (opened at startup, closed at shutdown) or an open ``store``
    (left open: close only what you opened). ``admin_key`` enables ``/v1/admin``. ``encryption`` and
    ``redaction`` (see :func:`amber.open_store`) layer the store opened from ``store_url``; the API
    key registry is encrypted but never redacted (a key's hash must stay exactly as written)."""
    if (store_url is None) == (store is None):
        raise InvalidInput("give exactly one of store_url or store")
    if store is not None and (encryption is not None or redaction is not None):
        raise InvalidInput("encryption and redaction layer a store opened from store_url; wrap an open store yourself")
    if admin_key is not None and len(admin_key) < 16:
        raise InvalidInput("the admin key must be at least 16 characters")
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if json_logs and not logger.handlers:
            configure_json_logging()
        opened = await open_store(store_url, encryption=encryption) if store is None else None  # type: ignore[arg-type]
        inner = opened or store
        app.state.keys = KeyRing(instrument(inner))
        if redaction is not None:
            from ..governance.redact import RedactingStore

            inner = RedactingStore(inner, redaction, close_inner=False)
        app.state.store = instrument(inner)
        log.info("amber server started", extra={"store": redact_url(inner.url), "version": __version__})
        try:
            yield
        finally:
            if opened is not None:
                await opened.close()

    app = FastAPI(
        title="Amber", version=__version__, lifespan=lifespan,
        description="Durable, shared memory for AutoGen agents, over REST. Every tenant route takes an API key; "
                    "the tenant comes from the key. Errors share one envelope: "
                    '`{"error": {"code", "message", "status"}}`.',
        responses=_ERRORS,
        dependencies=[Depends(_known_query_only)],
    )
    app.state.admin_key = admin_key
    app.state.embedder = embedder
    app.state.store_url = store_url if store_url is not None else store.url  # type: ignore[union-attr]
    app.state.metrics = metrics

    # -- errors: one envelope ----------------------------------------------------------------------
    @app.exception_handler(AmberError)
    async def amber_error(request: Request, exc: AmberError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status >= 500:
            log.error("request failed", extra={"code": exc.code, "error": exc.message})
        return _envelope(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _envelope(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:  # Allow lists every method of the path (RFC 9110), not one route's
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return _envelope(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _envelope(500, "internal_error", "internal error (logged on the server)")

    # -- request log + metrics ----------------------------------------------------------------------
    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.log = {}
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(request.scope.get("route"), "path", "unmatched")
            metrics.observe(request.method, route, status, elapsed)
            if route not in ("/metrics", "/healthz", "/readyz"):
                log.info("request", extra={"method": request.method, "route": route, "status": status,
                                           "duration_ms": round(elapsed * 1000, 3), **request.state.log})

    app.add_middleware(_BodyLimit, max_body=max_body_bytes, max_import=max_import_bytes)  # type: ignore[arg-type]

    # -- ops ------------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=m.Health, tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> m.Health:
        return m.Health(status="ok", pid=os.getpid())

    @app.get("/readyz", response_model=m.Ready, tags=["ops"], summary="Readiness: the store answers")
    async def readyz(request: Request) -> Any:
        try:
            info = await request.app.state.store.describe()
        except AmberError as exc:
            return _envelope(503, "store_unavailable", exc.message)
        return m.Ready(status="ready", backend=str(info.get("backend", "unknown")))

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.include_router(_tenant_router())
    app.include_router(_admin_router())
    from .ui import mount_ui  # the memory inspector at /ui and its JSON routes

    mount_ui(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _tidy_parameters(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (each method is its own route in FastAPI)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        # Ask with a method no route has: PARTIAL means the path fits.
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def app_from_env() -> FastAPI:
    """The factory ``amber serve`` hands to uvicorn (each worker process builds its own app)."""
    url = os.environ.get("AMBER_STORE")
    if not url:
        from ..cli import default_store_url

        url = default_store_url()
    # The same embedder (and endpoint) `amber worker --embedder` stores vectors with.
    from ..cli.options import embedder_from_environ, governance_from_environ  # the CLI's one way

    embedder = embedder_from_environ(os.environ.get("AMBER_EMBEDDER"), os.environ)

    return create_app(url, admin_key=os.environ.get("AMBER_ADMIN_KEY") or None,
                      max_body_bytes=int(os.environ.get("AMBER_SERVER_MAX_BODY", 8 * 1_048_576)),
                      embedder=embedder, **governance_from_environ(os.environ))


# -- dependencies ----------------------------------------------------------------------------------------


async def tenant_key(
    request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(_tenant_auth)
) -> AsyncIterator[ApiKey]:
    if credentials is None or credentials.scheme.lower() != "bearer":
        request.app.state.metrics.auth_failure("missing")
        raise Unauthorized("missing API key: send Authorization: Bearer amb_...")
    key = await request.app.state.keys.verify(credentials.credentials)
    if key is None:
        request.app.state.metrics.auth_failure("invalid")
        raise Unauthorized("invalid or revoked API key")
    request.state.log.update(tenant=key.tenant, key_id=key.key_id)
    with acting_as(f"apikey:{key.key_id}"):  # audit entries name the key, never the secret
        yield key


async def admin_access(
    request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(_admin_auth)
) -> None:
    expected = request.app.state.admin_key
    if expected is None:
        raise Forbidden("the admin API is disabled: start the server with --admin-key (env AMBER_ADMIN_KEY)")
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        request.app.state.metrics.auth_failure("admin")
        raise Unauthorized("missing or wrong admin key")
    request.state.log.update(actor="admin")


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _key(key: ApiKey, user: str, thread: str, request: Request, operation: str) -> SessionKey:
    session = SessionKey(key.tenant, user, thread)
    request.state.log.update(session=str(session), operation=operation)
    return session


async def _require_session(store: Store, session: SessionKey) -> Any:
    info = await store.get_session(session)
    if info is None:
        raise NotFound(f"no session {session.user}/{session.thread}")
    return info


async def _require_user(store: Store, tenant: str, user: str) -> None:
    validate_part("user", user)
    if not await store.list_sessions(tenant, user, limit=1) and not await store.list_facts(
            tenant, user, include_superseded=True, limit=1):
        raise NotFound(f"no user {user}")


def _message_out(msg: Any) -> m.MessageOut:
    return m.MessageOut.model_validate(jsonable(msg))


def _session_out(info: Any) -> m.SessionOut:
    d = jsonable(info)
    return m.SessionOut(user=info.key.user, thread=info.key.thread, **{**d, "key": f"{info.key.user}/{info.key.thread}"})


def _fact_out(fact: Any) -> m.FactOut:
    d = jsonable(fact)
    d.pop("tenant")
    return m.FactOut.model_validate(d)


def _etag(version: int) -> str:
    return f'"{version}"'


_IF_MATCH = re.compile(r'^(?:W/)?"?([0-9]{1,18})"?$')  # ASCII digits only; fits a 64-bit version


def _parse_if_match(value: str) -> int:
    found = _IF_MATCH.fullmatch(value.strip())
    if found is None:
        raise InvalidInput(f"If-Match must be an ETag from GET (e.g. \"3\"), got {value[:40]!r}")
    return int(found.group(1))


# -- tenant routes ---------------------------------------------------------------------------------------

_SESSION = "/v1/users/{user}/sessions/{thread}"
_StateName = Annotated[str, Path(json_schema_extra=KEY_PART_SCHEMA)]  # state names are key parts too


def _tenant_router() -> APIRouter:
    r = APIRouter(prefix="", tags=["memory"])

    @r.get("/v1/sessions", response_model=m.SessionPage, summary="List sessions, most recently active first")
    async def list_sessions(request: Request, key: ApiKey = Depends(tenant_key), user: Optional[str] = None,
                            limit: int = Query(100, ge=1, le=1000),
                            offset: int = Query(0, ge=0, le=MAX_INT64)) -> m.SessionPage:
        request.state.log.update(operation="session.list")
        items = await _store(request).list_sessions(key.tenant, user, limit=limit, offset=offset)
        return m.SessionPage(items=[_session_out(i) for i in items],
                             next_offset=offset + limit if len(items) == limit else None)

    @r.get("/v1/users", response_model=m.UserPage, summary="List users with sessions or facts")
    async def list_users(request: Request, key: ApiKey = Depends(tenant_key),
                         limit: int = Query(100, ge=1, le=1000),
                         offset: int = Query(0, ge=0, le=MAX_INT64)) -> m.UserPage:
        items = await _store(request).list_users(key.tenant, limit=limit, offset=offset)
        return m.UserPage(items=items, next_offset=offset + limit if len(items) == limit else None)

    @r.get(_SESSION, response_model=m.SessionOut, summary="One session")
    async def get_session(request: Request, user: str, thread: str, key: ApiKey = Depends(tenant_key)) -> m.SessionOut:
        session = _key(key, user, thread, request, "session.get")
        return _session_out(await _require_session(_store(request), session))

    @r.delete(_SESSION, response_model=m.ReceiptOut, summary="Forget a session (messages, state, index); audited")
    async def forget_session(request: Request, user: str, thread: str,
                             key: ApiKey = Depends(tenant_key)) -> m.ReceiptOut:
        session = _key(key, user, thread, request, "session.delete")
        store = _store(request)
        if await store.get_session(session) is None and not await store.list_states(session):
            raise NotFound(f"no session {user}/{thread}")
        receipt = await store.delete_session(session)
        request.state.log["messages_deleted"] = receipt.counts.get("messages", 0)
        return m.ReceiptOut.model_validate({k: v for k, v in jsonable(receipt).items() if k != "tenant"})

    @r.post(_SESSION + "/messages", response_model=m.AppendOut, status_code=201,
            summary="Append messages (send Idempotency-Key so a retried request stores them once)",
            responses={200: {"model": m.AppendOut, "description": "A replay: every message was already stored"}})
    async def append(request: Request, response: Response, user: str, thread: str, body: m.AppendIn,
                     key: ApiKey = Depends(tenant_key),
                     idempotency_key: Optional[str] = Header(None, alias="Idempotency-Key", min_length=1,
                                                             max_length=200)
                     ) -> m.AppendOut:
        session = _key(key, user, thread, request, "message.append")
        store = _store(request)
        new = []
        for i, msg in enumerate(body.messages):
            idem = msg.idempotency_key
            if idem is None and idempotency_key is not None:
                idem = idempotency_key if len(body.messages) == 1 else f"{idempotency_key}:{i}"
            new.append(NewMessage(role=msg.role, content=msg.content, payload=msg.payload,
                                  payload_format=msg.payload_format, author=msg.author, idempotency_key=idem,
                                  created_at=msg.created_at, metadata=msg.metadata))
        before = await store.get_session(session)
        last = before.last_seq if before else 0
        stored = await store.append(session, new)
        replayed = all(s.seq <= last for s in stored)
        request.state.log.update(messages_in=len(new), messages_before=last, messages_after=max(
            [last, *[s.seq for s in stored]]), replayed=replayed)
        if not replayed:
            request.app.state.metrics.appended(sum(1 for s in stored if s.seq > last))
        if replayed:
            response.status_code = 200
        return m.AppendOut(messages=[_message_out(s) for s in stored], replayed=replayed)

    @r.get(_SESSION + "/messages", response_model=m.MessagePage, summary="Messages after a sequence number")
    async def read_since(request: Request, user: str, thread: str, key: ApiKey = Depends(tenant_key),
                         after_seq: int = Query(0, ge=0, le=MAX_INT64),
                         limit: int = Query(100, ge=1, le=1000)) -> m.MessagePage:
        session = _key(key, user, thread, request, "message.since")
        store = _store(request)
        await _require_session(store, session)
        items = await store.read_since(session, after_seq, limit=limit)
        request.state.log["messages_out"] = len(items)
        return m.MessagePage(items=[_message_out(i) for i in items],
                             next_after_seq=items[-1].seq if len(items) == limit else None)

    @r.get(_SESSION + "/window", response_model=m.WindowOut,
           summary="The most recent messages, oldest first, within last / max_tokens")
    async def window(request: Request, user: str, thread: str, key: ApiKey = Depends(tenant_key),
                     last: Optional[int] = Query(None, ge=0, le=10_000),
                     max_tokens: Optional[int] = Query(None, ge=0, le=MAX_INT64)) -> m.WindowOut:
        session = _key(key, user, thread, request, "message.window")
        store = _store(request)
        await _require_session(store, session)
        items = await store.read_window(session, last=last, max_tokens=max_tokens)
        request.state.log["messages_out"] = len(items)
        return m.WindowOut(items=[_message_out(i) for i in items])

    @r.get(_SESSION + "/state", response_model=m.StateNames, summary="Names of the session's state blobs")
    async def state_names(request: Request, user: str, thread: str, key: ApiKey = Depends(tenant_key)) -> m.StateNames:
        session = _key(key, user, thread, request, "state.list")
        names = await _store(request).list_states(session)
        if not names:
            raise NotFound(f"no state in session {user}/{thread}")
        return m.StateNames(items=names)

    @r.get(_SESSION + "/state/{name}", response_model=m.StateOut,
           summary="Read a state blob; its ETag is the version for If-Match")
    async def get_state(request: Request, response: Response, user: str, thread: str, name: _StateName,
                        key: ApiKey = Depends(tenant_key)) -> m.StateOut:
        session = _key(key, user, thread, request, "state.get")
        blob = await _store(request).get_state(session, validate_state_name(name))
        if blob is None:
            raise NotFound(f"no state {name!r} in session {user}/{thread}")
        response.headers["ETag"] = _etag(blob.version)
        return m.StateOut(name=blob.name, version=blob.version, data=dict(blob.data), updated_at=blob.updated_at)

    @r.delete(_SESSION + "/messages/{message_id}", status_code=204, response_class=Response,
              summary="Delete one message (other seqs unchanged; facts learned from it alone go too); audited")
    async def delete_message(request: Request, user: str, thread: str, message_id: str,
                             key: ApiKey = Depends(tenant_key)) -> Response:
        session = _key(key, user, thread, request, "message.delete")
        # The session key carries the caller's tenant: another tenant's ids are simply not found.
        if not await _store(request).delete_message(session, message_id):
            raise NotFound(f"no message {message_id} in session {user}/{thread}")
        return Response(status_code=204)

    @r.patch(_SESSION + "/messages/{message_id}", response_model=m.MessageOut,
             summary="Correct one message's content (same id and seq; learned again); audited")
    async def correct_message(request: Request, user: str, thread: str, message_id: str,
                              body: m.MessageCorrectionIn, key: ApiKey = Depends(tenant_key)) -> m.MessageOut:
        session = _key(key, user, thread, request, "message.correct")
        fixed = await _store(request).correct_message(session, message_id, body.content, reason=body.reason)
        return _message_out(fixed)

    @r.put(_SESSION + "/state/{name}", response_model=m.StateOut,
           summary="Write a state blob: If-Match: \"n\" for compare-and-set, If-None-Match: * to create only",
           responses={412: {"model": m.ErrorEnvelope, "description": "The version is not the one expected"}})
    async def put_state(request: Request, response: Response, user: str, thread: str, name: _StateName,
                        body: m.StateIn,
                        key: ApiKey = Depends(tenant_key),
                        if_match: Optional[str] = Header(None, alias="If-Match", max_length=100,
                                                         json_schema_extra={"pattern": _IF_MATCH.pattern}),
                        if_none_match: Optional[str] = Header(None, alias="If-None-Match", max_length=100,
                                                              json_schema_extra={"pattern": r"^\*$"}),
                        ) -> m.StateOut:
        session = _key(key, user, thread, request, "state.put")
        expected: int | None = None
        if if_none_match is not None and if_none_match.strip() != "*":
            raise InvalidInput("If-None-Match supports only * (create if absent)")
        if if_match is not None:
            expected = _parse_if_match(if_match)
            if if_none_match is not None:  # "is at version n" and "does not exist"
                raise PreconditionFailed("If-Match and If-None-Match: * cannot both hold")
        elif if_none_match is not None:
            expected = 0
        try:
            blob = await _store(request).put_state(session, validate_state_name(name), body.data,
                                                   expected_version=expected)
        except VersionConflict as exc:
            raise PreconditionFailed(exc.message) from exc
        response.headers["ETag"] = _etag(blob.version)
        return m.StateOut(name=blob.name, version=blob.version, data=dict(blob.data), updated_at=blob.updated_at)

    # -- users and facts ---------------------------------------------------------------------------
    @r.delete("/v1/users/{user}", response_model=m.ReceiptOut,
              summary="Forget a user: every session, state blob, fact and vector; audited")
    async def forget_user(request: Request, user: str, key: ApiKey = Depends(tenant_key)) -> m.ReceiptOut:
        request.state.log.update(operation="user.delete", user=user)
        store = _store(request)
        await _require_user(store, key.tenant, user)
        receipt = await store.delete_user(key.tenant, user)
        return m.ReceiptOut.model_validate({k: v for k, v in jsonable(receipt).items() if k != "tenant"})

    @r.get("/v1/users/{user}/facts", response_model=m.FactList, summary="Facts of a user, newest first")
    async def list_facts(request: Request, user: str, key: ApiKey = Depends(tenant_key),
                         attribute: Optional[str] = None, include_superseded: bool = False,
                         limit: int = Query(100, ge=1, le=1000)) -> m.FactList:
        request.state.log.update(operation="fact.list", user=user)
        store = _store(request)
        await _require_user(store, key.tenant, user)
        facts = await store.list_facts(key.tenant, user, attribute=attribute,
                                       include_superseded=include_superseded, limit=limit)
        return m.FactList(items=[_fact_out(f) for f in facts])

    @r.post("/v1/users/{user}/facts", response_model=m.FactOut, status_code=201,
            summary="Record a fact (optionally superseding current ones; never overwrites)")
    async def record_fact(request: Request, user: str, body: m.FactIn, key: ApiKey = Depends(tenant_key)) -> m.FactOut:
        request.state.log.update(operation="fact.record", user=user)
        fact = NewFact(attribute=body.attribute, value=body.value, text=body.text, kind=body.kind,
                       source_message_ids=tuple(body.source_message_ids), thread=body.thread,
                       confidence=body.confidence, valid_from=body.valid_from, metadata=body.metadata)
        store = _store(request)
        for fid in body.supersedes:  # another tenant's (or user's) fact id is simply unknown here
            if await store.get_fact(key.tenant, user, fid) is None:
                raise NotFound(f"no fact {fid}")
        try:
            stored = await store.record_fact(key.tenant, user, fact, supersedes=body.supersedes)
        except VersionConflict as exc:
            raise PreconditionFailed(exc.message) from exc
        return _fact_out(stored)

    @r.get("/v1/users/{user}/facts/{fact_id}", response_model=m.FactOut, summary="One fact")
    async def get_fact(request: Request, user: str, fact_id: str, key: ApiKey = Depends(tenant_key)) -> m.FactOut:
        request.state.log.update(operation="fact.get", user=user)
        fact = await _store(request).get_fact(key.tenant, validate_part("user", user), fact_id)
        if fact is None:
            raise NotFound(f"no fact {fact_id}")
        return _fact_out(fact)

    @r.delete("/v1/users/{user}/facts/{fact_id}", status_code=204, response_class=Response,
              summary="Delete a fact; audited")
    async def delete_fact(request: Request, user: str, fact_id: str, key: ApiKey = Depends(tenant_key)) -> Response:
        request.state.log.update(operation="fact.delete", user=user)
        if not await _store(request).delete_fact(key.tenant, validate_part("user", user), fact_id):
            raise NotFound(f"no fact {fact_id}")
        return Response(status_code=204)

    @r.post("/v1/users/{user}/recall", response_model=m.RecallOut,
            summary="Recall: search a user's messages and current facts (scores in [0, 1])")
    async def recall(request: Request, user: str, body: m.RecallIn, key: ApiKey = Depends(tenant_key)) -> m.RecallOut:
        request.state.log.update(operation="recall", user=user)
        store = _store(request)
        await _require_user(store, key.tenant, user)
        hits = await _recall(store, request.app.state.embedder, key.tenant, user, body)
        request.state.log["hits"] = len(hits)
        out = []
        for h in hits:
            d = jsonable(h)
            d.pop("tenant")
            out.append(m.HitOut.model_validate(d))
        return m.RecallOut(items=out)

    # -- transfer and audit ------------------------------------------------------------------------
    @r.get("/v1/export", summary="Export the tenant (or one user / thread) as JSON Lines",
           responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
           response_class=StreamingResponse)
    async def export(request: Request, key: ApiKey = Depends(tenant_key), user: Optional[str] = None,
                     thread: Optional[str] = None) -> StreamingResponse:
        request.state.log.update(operation="export", user=user)
        store = _store(request)
        if user is not None:
            await _require_user(store, key.tenant, user)
        if thread is not None:
            if user is None:
                raise InvalidInput("exporting one thread needs its user too")
            await _require_session(store, SessionKey(key.tenant, user, thread))
        lines = export_jsonl(store, key.tenant, user=user, thread=thread)
        first = await lines.__anext__()  # fail before the 200 is sent if the scope is invalid

        async def body() -> AsyncIterator[str]:
            yield first
            async for line in lines:
                yield line

        return StreamingResponse(body(), media_type="application/x-ndjson")

    @r.post("/v1/import", response_model=m.ImportOut, summary="Import JSON Lines written by export (validated first)",
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/x-ndjson": {"schema": {"type": "string"}}}}})
    async def import_(request: Request, key: ApiKey = Depends(tenant_key)) -> m.ImportOut:
        request.state.log.update(operation="import")
        raw = await request.body()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput("the import body is not UTF-8") from exc
        report = await import_jsonl(_store(request), key.tenant, text.splitlines())
        request.state.log["messages_in"] = report.counts.get("messages", 0)
        return m.ImportOut.model_validate(report.as_dict())

    @r.get("/v1/audit", response_model=m.AuditPage, summary="The tenant's audit trail (ids and hashes, never content)")
    async def audit(request: Request, key: ApiKey = Depends(tenant_key), user: Optional[str] = None,
                    operation: Optional[str] = Query(None, max_length=64),
                    after_id: int = Query(0, ge=0, le=MAX_INT64),
                    limit: int = Query(100, ge=1, le=1000)) -> m.AuditPage:
        if user is not None:
            validate_part("user", user)
        events = await _store(request).list_audit(key.tenant, user=user, operation=operation, limit=limit,
                                                  after_id=after_id)
        items = []
        for e in events:
            d = jsonable(e)
            d.pop("tenant")
            items.append(m.AuditOut.model_validate(d))
        return m.AuditPage(items=items, next_after_id=events[-1].id if len(events) == limit else None)

    return r


async def _recall(store: Store, embedder: Any, tenant: str, user: str, body: m.RecallIn) -> list[Any]:
    try:
        from ..recall import Recall  # type: ignore[attr-defined]
    except ImportError:
        return await store.search_text(tenant, user, body.query, limit=body.limit, kinds=tuple(body.kinds))
    modes = ("lexical", "vector") if embedder is not None else ("lexical",)
    return await Recall(store, embedder=embedder).search(tenant, user, body.query, limit=body.limit, modes=modes,
                                                         kinds=tuple(body.kinds))


# -- admin routes ------------------------------------------------------------------------------------------


def _admin_router() -> APIRouter:
    r = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin_access)],
                  responses={403: {"model": m.ErrorEnvelope, "description": "Admin API disabled"}})

    @r.get("/tenants", response_model=m.TenantList, summary="List tenants")
    async def tenants(request: Request) -> m.TenantList:
        return m.TenantList(items=await request.app.state.keys.tenants())

    @r.post("/tenants", response_model=m.TenantOut, status_code=201, summary="Create a tenant (idempotent)",
            responses={200: {"model": m.TenantOut, "description": "The tenant already existed"}})
    async def create_tenant(request: Request, response: Response, body: m.TenantIn) -> m.TenantOut:
        with acting_as("admin"):
            created = await request.app.state.keys.create_tenant(body.tenant)
        if not created:
            response.status_code = 200
        return m.TenantOut(tenant=body.tenant, created=created)

    @r.get("/tenants/{tenant}/keys", response_model=m.KeyList, summary="A tenant's API keys (never the secrets)")
    async def list_keys(request: Request, tenant: str) -> m.KeyList:
        keys = await request.app.state.keys.list_keys(tenant)
        return m.KeyList(items=[m.KeyOut(**k.public()) for k in keys])

    @r.post("/tenants/{tenant}/keys", response_model=m.KeyCreated, status_code=201,
            summary="Issue an API key for a tenant; the key is returned once")
    async def issue_key(request: Request, tenant: str, body: m.KeyIn) -> m.KeyCreated:
        with acting_as("admin"):
            key, secret = await request.app.state.keys.issue(tenant, body.label)
        return m.KeyCreated(**key.public(), api_key=secret)

    @r.get("/tenants/{tenant}/audit", response_model=m.AuditPage,
           summary="Any tenant's audit trail, reads included (ids and hashes, never content)")
    async def tenant_audit(request: Request, tenant: str, user: Optional[str] = None,
                           operation: Optional[str] = Query(None, max_length=64),
                           after_id: int = Query(0, ge=0, le=MAX_INT64),
                           limit: int = Query(100, ge=1, le=1000)) -> m.AuditPage:
        validate_part("tenant", tenant)
        if user is not None:
            validate_part("user", user)
        events = await _store(request).list_audit(tenant, user=user, operation=operation, limit=limit,
                                                  after_id=after_id)
        items = []
        for e in events:
            d = jsonable(e)
            d.pop("tenant")
            items.append(m.AuditOut.model_validate(d))
        return m.AuditPage(items=items, next_after_id=events[-1].id if len(events) == limit else None)

    @r.post("/tenants/{tenant}/audit/verify", response_model=m.AuditVerifyOut,
            summary="Chain pending audit entries and verify the tenant's hash chain (says where it breaks)",
            responses={501: {"model": m.ErrorEnvelope, "description": "The store keeps no hash chain"}})
    async def verify_tenant_audit(request: Request, tenant: str) -> m.AuditVerifyOut:
        from ..governance.audit import verify_audit

        validate_part("tenant", tenant)
        with acting_as("admin"):
            result = await verify_audit(_store(request), tenant)
        return m.AuditVerifyOut.model_validate(result.as_dict())

    @r.delete("/keys/{key_id}", response_model=m.KeyOut, summary="Revoke an API key (takes effect at once)")
    async def revoke(request: Request, key_id: str) -> m.KeyOut:
        with acting_as("admin"):
            key = await request.app.state.keys.revoke(key_id)
        return m.KeyOut(**key.public())

    return r
