from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .memory import MemoryStore


async def open_memory(url: str, **options: Any) -> MemoryStore:
    name = urlsplit(url).netloc or urlsplit(url).path.strip("/") or None
    return MemoryStore(name, limits=options.get("limits"))
