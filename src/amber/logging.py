"""Library-level structured logging and optional OpenTelemetry spans.

Amber logs through the standard ``logging`` module under the ``amber`` logger; it never configures
handlers itself. :func:`operation` wraps one unit of work (a store call, a recall, a learning batch):
it logs one record with the operation name, its fields (session key, counts), the duration and the
pid, and -- when ``opentelemetry-api`` is installed -- opens a span of the same name, so Amber's work
nests under the spans AutoGen already emits. :func:`instrument` wraps any Store so every call is an
operation. :class:`JsonFormatter` renders records as one JSON object per line (used by ``amber serve``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

from .keys import SessionKey

__all__ = ["logger", "operation", "instrument", "JsonFormatter", "configure_json_logging"]

logger = logging.getLogger("amber")

try:  # optional: spans only when the OpenTelemetry API is installed (AutoGen depends on it)
    from opentelemetry import trace as _otel_trace

    _tracer: Any = _otel_trace.get_tracer("amber")
except ImportError:  # pragma: no cover - depends on the environment
    _tracer = None

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, pid, and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                data[k] = v
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_json_logging(level: int | str = logging.INFO, stream: Any = None) -> logging.Handler:
    """Send the ``amber`` loggers to ``stream`` (stderr) as JSON lines. For applications and the server;
    the library itself never calls this."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return handler


def _fields_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    first = args[0] if args else None
    if isinstance(first, SessionKey):
        fields["session"] = str(first)
        fields["tenant"] = first.tenant
    elif isinstance(first, str):
        fields["tenant"] = first
        if len(args) > 1 and isinstance(args[1], str):
            fields["user"] = args[1]
    if len(args) > 1 and isinstance(args[1], (list, tuple)):
        fields["messages_in"] = len(args[1])
    return fields


@contextlib.contextmanager
def operation(name: str, level: int = logging.DEBUG, **fields: Any) -> Iterator[dict[str, Any]]:
    """Time and log one operation (and open an OpenTelemetry span when available). The yielded dict
    takes more fields (e.g. result counts) before the record is written."""
    extra: dict[str, Any] = {"operation": name, **fields}
    start = time.perf_counter()
    span_cm = _tracer.start_as_current_span(name) if _tracer is not None else contextlib.nullcontext()
    with span_cm as span:
        try:
            yield extra
        except BaseException as exc:
            extra["error"] = type(exc).__name__
            raise
        finally:
            extra["duration_ms"] = round((time.perf_counter() - start) * 1000, 3)
            extra.setdefault("pid", os.getpid())
            if span is not None:
                for k, v in extra.items():
                    if isinstance(v, (str, int, float, bool)):
                        span.set_attribute(f"amber.{k}", v)
            if logger.isEnabledFor(level):
                logger.log(level, name, extra={k: v for k, v in extra.items() if k != "pid"})


def instrument(store: Any, *, level: int = logging.DEBUG) -> Any:
    """Wrap a Store so every call is an :func:`operation` (``store.append``, ``store.read_window``...)
    carrying the session key or tenant and, for lists, the result count. Closing the wrapper closes
    the store."""
    if isinstance(store, _Instrumented):
        return store
    return _instrumented_class()(store, level)


class _Instrumented:
    pass


_CLASS: list[type] = []


def _instrumented_class() -> type:
    """A DelegatingStore whose every async forwarder is wrapped in an :func:`operation`; built from
    DelegatingStore's own forwarders, so a method added to the contract is instrumented as soon as
    it is forwarded."""
    if _CLASS:
        return _CLASS[0]
    import inspect

    from .store.delegating import DelegatingStore

    names = [n for n, f in vars(DelegatingStore).items()
             if inspect.iscoroutinefunction(f) and not n.startswith("_") and n not in {"close", "describe"}]

    def make(name: str) -> Any:
        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            with operation(f"store.{name}", self._level, **_fields_of(args, kwargs)) as extra:
                result = await getattr(self._inner, name)(*args, **kwargs)
                if isinstance(result, list):
                    extra["count"] = len(result)
                return result

        method.__name__ = name
        return method

    def __init__(self: Any, inner: Any, level: int) -> None:
        DelegatingStore.__init__(self, inner)
        self._level = level

    body: dict[str, Any] = {"__init__": __init__,
                            "__doc__": "A Store whose every call is logged and traced (see amber.logging)."}
    body.update({n: make(n) for n in names})
    _CLASS.append(type("InstrumentedStore", (DelegatingStore, _Instrumented), body))
    return _CLASS[0]
