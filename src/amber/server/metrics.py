"""Prometheus metrics of one app (its own registry, so several apps in one process never collide).

With several worker processes each worker serves its own counters; scrape each worker or run one
worker per container (the usual Kubernetes layout)."""

from __future__ import annotations

from typing import Any

from ..errors import MissingDependency

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:  # pragma: no cover - part of the [server] extra
            raise MissingDependency("prometheus_client", "server") from exc
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("amber_http_requests", "HTTP requests served",
                                     ["method", "route", "status"], registry=self.registry)
        self.latency = prom.Histogram("amber_http_request_duration_seconds", "HTTP request latency",
                                      ["method", "route"], registry=self.registry,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.messages = prom.Counter("amber_messages_appended", "Messages stored by appends (replays excluded)",
                                     registry=self.registry)
        self.auth_failures = prom.Counter("amber_auth_failures", "Refused credentials", ["reason"],
                                          registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def appended(self, n: int) -> None:
        self.messages.inc(n)

    def auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def render(self) -> tuple[bytes, str]:
        prom: Any = self._prom
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
