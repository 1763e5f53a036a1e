"""The store conformance suite through the encryption layer (every tenant encrypted, blind lexical
index, vectors opted in so the vector clause has something to search), over the in-memory
reference backend and over real SQLite files, plus the redaction+encryption stack over SQLite."""

from __future__ import annotations

import os
import uuid

import pytest

import amber
from amber.governance import EncryptionConfig, FileKeyRing, LocalKeyProvider, Redactor
from amber.testing import StoreConformance


def _config(tmp_path) -> EncryptionConfig:
    return EncryptionConfig(provider=LocalKeyProvider([os.urandom(32)]), keyring=FileKeyRing(tmp_path / "keyring.json"),
                            vectors="plaintext")


class TestEncryptedMemoryStore(StoreConformance):
    @pytest.fixture
    def open_handle(self, tmp_path):
        name, config = f"enc-{uuid.uuid4().hex}", _config(tmp_path)

        async def open_() -> amber.Store:
            return await amber.open_store(f"memory://{name}", encryption=config)

        return open_


class TestEncryptedSQLiteStore(StoreConformance):
    @pytest.fixture
    def open_handle(self, tmp_path):
        url, config = f"sqlite:///{tmp_path / 'enc.db'}", _config(tmp_path)

        async def open_() -> amber.Store:
            return await amber.open_store(url, encryption=config)

        return open_


class TestRedactedEncryptedSQLiteStore(StoreConformance):
    """Redaction on top changes nothing the contract promises for text without PII."""

    @pytest.fixture
    def open_handle(self, tmp_path):
        url, config = f"sqlite:///{tmp_path / 'enc.db'}", _config(tmp_path)

        async def open_() -> amber.Store:
            return await amber.open_store(url, encryption=config, redaction=Redactor())

        return open_
