"""amber.logging: an instrumented store logs each call as JSON (session, counts, pid) and opens spans."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid

import amber
from amber import NewMessage, SessionKey
from amber.logging import JsonFormatter, instrument, logger, operation


async def test_instrumented_store_logs_operations_as_json() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        store = instrument(await amber.open_store(f"memory://log-{uuid.uuid4().hex}"))
        assert isinstance(store, amber.Store) and instrument(store) is store
        key = SessionKey("acme", "u", "t")
        await store.append(key, [NewMessage("user", "secret P-1"), NewMessage("assistant", "ok")])
        assert len(await store.read_window(key)) == 2
        assert await store.list_states(key) == []
        try:
            await store.read_since(key, -1)
        except amber.InvalidInput:
            pass
        await store.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    ops = [r["operation"] for r in records]
    assert ops[:3] == ["store.append", "store.read_window", "store.list_states"]
    append = records[0]
    assert append["session"] == "acme/u/t" and append["messages_in"] == 2 and append["count"] == 2
    assert append["pid"] == os.getpid() and append["duration_ms"] >= 0
    assert records[3]["operation"] == "store.read_since" and records[3]["error"] == "InvalidInput"
    assert "secret" not in stream.getvalue()


def test_operation_fields_can_be_added_inside_the_block(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="amber"):
        with operation("recall.search", logging.INFO, user="u") as extra:
            extra["hits"] = 3
    rec = caplog.records[-1]
    assert rec.getMessage() == "recall.search" and rec.hits == 3 and rec.user == "u"
