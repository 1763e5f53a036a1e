"""``amber serve``: the REST server (extra ``[server]``). Build the app with :func:`create_app`."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "app_from_env"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    try:
        from .app import create_app as factory
    except ImportError as exc:
        from ..errors import MissingDependency

        raise MissingDependency(getattr(exc, "name", None) or "fastapi", "server") from exc
    return factory(*args, **kwargs)


def app_from_env() -> Any:
    from .app import app_from_env as factory

    return factory()
