"""An OpenAI-compatible ``POST {base_url}/embeddings`` client (OpenAI, Azure-style gateways, vLLM,
Ollama, LiteLLM...). Uses httpx; texts are sent in batches of ``batch_size``."""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import SecretStr

from ..errors import InvalidInput, MissingDependency
from ._base import EmbedderUnavailable, check_texts

__all__ = ["OpenAIEmbedder"]


class OpenAIEmbedder:
    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | SecretStr | None = None,
        dim: int | None = None,
        batch_size: int = 256,
        timeout: float = 30.0,
        max_chars: int = 8000,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise InvalidInput("OpenAIEmbedder needs a model name")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"base_url must be an http(s) URL, got {base_url!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size must be a positive integer")
        self.model = model
        self.name = f"openai:{model}"
        self.spec = f"openai:{model}"
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key if isinstance(api_key, SecretStr) or api_key is None else SecretStr(api_key)
        self.dim = int(dim) if dim else 0  # 0 until known: learned from the first answer
        self._dimensions_requested = dim
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_chars = max_chars
        self._client: Any = None

    def _http(self) -> Any:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:
                raise MissingDependency("httpx", "server") from exc
            headers = {"Content-Type": "application/json"}
            if self._api_key is not None:
                headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=self.timeout)
        return self._client

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        import httpx

        body: dict[str, Any] = {"model": self.model, "input": [t[: self.max_chars] for t in texts]}
        if self._dimensions_requested:
            body["dimensions"] = self._dimensions_requested
        try:
            response = await self._http().post("/embeddings", json=body)
        except httpx.HTTPError as exc:
            raise EmbedderUnavailable(f"embedding endpoint {self.base_url} is unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise EmbedderUnavailable(
                f"embedding endpoint {self.base_url} answered HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            data = response.json()["data"]
            ordered = sorted(data, key=lambda d: d["index"])
            vectors = [[float(x) for x in d["embedding"]] for d in ordered]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderUnavailable(f"embedding endpoint {self.base_url} sent a malformed answer") from exc
        if len(vectors) != len(texts) or any(len(v) != len(vectors[0]) for v in vectors):
            raise EmbedderUnavailable(
                f"embedding endpoint {self.base_url} returned {len(vectors)} vectors for {len(texts)} texts"
            )
        if vectors and not self.dim:
            self.dim = len(vectors[0])
        elif vectors and len(vectors[0]) != self.dim:
            raise EmbedderUnavailable(f"expected {self.dim}-dimensional vectors, got {len(vectors[0])}")
        return vectors

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        items = check_texts(texts)
        out: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            out.extend(await self._batch(items[start: start + self.batch_size]))
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIEmbedder(model={self.model!r}, base_url={self.base_url!r})"
