"""Embedders: the bundled MiniLM offline, an OpenAI-compatible endpoint (a real local HTTP server
run by the test: no remote endpoint is reachable here), and the model-free hashing embedder."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from amber.embed import (
    Embedder,
    EmbedderUnavailable,
    HashingEmbedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    embedder_spec,
    open_embedder,
)
from amber.errors import InvalidInput


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_open_embedder_specs() -> None:
    assert open_embedder(None) is None
    assert open_embedder("none") is None
    assert isinstance(open_embedder("minilm"), SentenceTransformerEmbedder)
    h = open_embedder("hash:64")
    assert isinstance(h, HashingEmbedder) and h.dim == 64 and embedder_spec(h) == "hash:64"
    o = open_embedder("openai:text-embedding-3-small", base_url="http://127.0.0.1:1/v1", api_key="sk-secret")
    assert isinstance(o, OpenAIEmbedder) and o.name == "openai:text-embedding-3-small"
    assert "sk-secret" not in repr(o)
    for bad in ("nope", "openai:", "hash:x"):
        with pytest.raises(InvalidInput):
            open_embedder(bad)
    assert isinstance(h, Embedder)


async def test_hashing_embedder_is_deterministic_and_lexical() -> None:
    e = HashingEmbedder(128)
    a, b, c = await e.embed(["claim number C-7788", "claim number C-7788", "my favourite colour is blue"])
    assert a == b and len(a) == 128
    assert cos(a, b) > 0.99 and cos(a, c) < 0.5
    with pytest.raises(InvalidInput):
        await e.embed("one string")


async def test_minilm_loads_offline_from_the_package_and_embeds_by_meaning() -> None:
    e = SentenceTransformerEmbedder(batch_size=8)
    vecs = await e.embed([
        "How do I reset my password?",
        "I forgot my login credentials and cannot sign in.",
        "The weather in Lisbon is sunny today.",
    ] * 4)  # 12 texts in batches of 8
    assert e.dim == 384 and len(vecs) == 12 and all(len(v) == 384 for v in vecs)
    assert abs(sum(x * x for x in vecs[0]) - 1.0) < 1e-3  # normalised
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.2
    assert await e.embed([]) == []


_TEXTS = ["What is my policy number?", "Nora moved to Lisbon last spring, she loves it there.",
          "x" * 50, "word " * 600]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One export for the tests that only use it (the export itself is tested on its own)."""
    return tmp_path_factory.mktemp("amber-cache")


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
async def test_minilm_small_calls_give_the_vectors_of_a_batched_encode(runtime: str, onnx_cache: Any) -> None:
    """A query (a call of few texts) takes a direct forward pass (torch) or the exported graph (ONNX
    Runtime); a learner's batch goes through sentence-transformers' encode. Every route must give the
    same vectors, or stored and query vectors would drift apart (long texts are cut to max_chars on
    every route)."""
    small = SentenceTransformerEmbedder(small_call_max=8, runtime=runtime, cache_dir=onnx_cache)
    batched = SentenceTransformerEmbedder(small_call_max=0)  # every call goes through encode
    one_by_one = [(await small.embed([t]))[0] for t in _TEXTS]
    together = await small.embed(_TEXTS)
    reference = await batched.embed(_TEXTS)
    assert small.query_runtime == runtime and batched.query_runtime == "torch"
    for a, b, c in zip(one_by_one, together, reference):
        assert max(abs(x - y) for x, y in zip(a, c)) < 1e-5
        assert max(abs(x - y) for x, y in zip(b, c)) < 1e-5


async def test_minilm_query_on_onnx_never_waits_for_a_learner_batch(onnx_cache: Any) -> None:
    """An agent's recall embeds its query with the embedder the learner batches with: the query must
    not queue behind the batch (the issue: "an agent's turn never waits for learning")."""
    e = SentenceTransformerEmbedder(runtime="onnx", cache_dir=onnx_cache)
    await e.load()
    reference = [(await e.embed([t]))[0] for t in _TEXTS]
    with e._lock:  # the torch model is busy with a batch for as long as this block lasts
        during = await asyncio.wait_for(e.embed(_TEXTS[:2]), timeout=10)
    for got, want in zip(during, reference[:2]):
        assert max(abs(x - y) for x, y in zip(got, want)) < 1e-5
    # And for real: queries from several threads beside a running batch (the tokenizers are separate:
    # a shared fast tokenizer fails with "Already borrowed" when two threads call it).
    batch = asyncio.ensure_future(e.embed([f"statement {i} about the policy and the claim" for i in range(512)]))
    queries = await asyncio.gather(*(e.embed([t]) for t in _TEXTS * 4))
    assert len(await batch) == 512
    for (got,), want in zip(queries, reference * 4):
        assert max(abs(x - y) for x, y in zip(got, want)) < 1e-5


async def test_minilm_onnx_export_is_cached_per_machine_and_a_broken_file_is_replaced(tmp_path: Any) -> None:
    first = SentenceTransformerEmbedder(runtime="onnx", cache_dir=tmp_path)
    await first.load()
    (exported,) = (tmp_path / "onnx").glob("*.onnx")
    stamp = exported.stat().st_mtime_ns
    again = SentenceTransformerEmbedder(runtime="onnx", cache_dir=tmp_path)
    await again.load()
    assert exported.stat().st_mtime_ns == stamp  # loaded, not exported again
    assert list((tmp_path / "onnx").iterdir()) == [exported]  # no temporary files left

    exported.write_bytes(b"not an onnx graph")  # e.g. a disk filled up mid-copy
    healed = SentenceTransformerEmbedder(runtime="onnx", cache_dir=tmp_path)
    vec = (await healed.embed(["What is my policy number?"]))[0]
    assert healed.query_runtime == "onnx" and exported.stat().st_size > 1_000_000
    assert max(abs(x - y) for x, y in zip(vec, (await first.embed(["What is my policy number?"]))[0])) < 1e-5


def test_minilm_runtime_is_checked() -> None:
    with pytest.raises(InvalidInput):
        SentenceTransformerEmbedder(runtime="tensorflow")


class _Endpoint:
    """A tiny OpenAI-compatible /embeddings server on a free local port."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if endpoint.mode == "error":
                    self.send_response(429)
                    self.end_headers()
                    self.wfile.write(b'{"error": "rate limited"}')
                    return
                if endpoint.mode == "garbage":
                    payload: Any = {"data": [{"nope": 1}]}
                else:
                    # Reverse order on purpose: clients must order by "index".
                    payload = {"data": [{"index": i, "embedding": [float(len(t)), float(i), 1.0]}
                                        for i, t in reversed(list(enumerate(body["input"])))]}
                raw = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[_Endpoint]:
    ep = _Endpoint()
    try:
        yield ep
    finally:
        ep.close()


async def test_openai_embedder_batches_orders_and_authenticates(endpoint: _Endpoint) -> None:
    e = OpenAIEmbedder("emb-model", base_url=endpoint.url, api_key="sk-test", batch_size=2)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vecs = await e.embed(texts)
    await e.aclose()
    assert [v[0] for v in vecs] == [1.0, 2.0, 3.0, 4.0, 5.0]  # in input order despite reversed answers
    assert e.dim == 3
    assert [len(r["input"]) for r in endpoint.requests] == [2, 2, 1]
    assert all(r["path"] == "/v1/embeddings" and r["model"] == "emb-model" for r in endpoint.requests)
    assert endpoint.requests[0]["auth"] == "Bearer sk-test"


async def test_openai_embedder_errors_are_amber_errors(endpoint: _Endpoint) -> None:
    e = OpenAIEmbedder("m", base_url=endpoint.url)
    endpoint.mode = "error"
    with pytest.raises(EmbedderUnavailable, match="429"):
        await e.embed(["x"])
    endpoint.mode = "garbage"
    with pytest.raises(EmbedderUnavailable, match="malformed"):
        await e.embed(["x"])
    await e.aclose()
    down = OpenAIEmbedder("m", base_url="http://127.0.0.1:9/v1", timeout=2.0)
    with pytest.raises(EmbedderUnavailable, match="unreachable") as info:
        await down.embed(["x"])
    assert info.value.__cause__ is not None
    await down.aclose()


def test_cli_worker_reaches_an_openai_compatible_endpoint_configured_in_the_environment(
        endpoint: _Endpoint, tmp_path: Any) -> None:
    """`amber worker --embedder openai:<model>` takes the key and base URL from the environment (the
    library never reads it; the CLI does): without them every job failed against api.openai.com."""
    import amber
    from click.testing import CliRunner

    from amber.cli import main

    url = f"sqlite:///{tmp_path / 'amber.db'}"

    async def seed() -> None:
        async with await amber.open_store(url) as s:
            await s.append_one(amber.SessionKey("acme", "u-1", "t"), amber.NewMessage("user", "thanks, that helps a lot"))

    asyncio.run(seed())
    env = {"AMBER_EMBEDDER_BASE_URL": endpoint.url, "OPENAI_API_KEY": "sk-from-env"}
    r = CliRunner().invoke(main, ["--store", url, "--json", "worker", "--once", "--embedder", "openai:emb-model"],
                           env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert endpoint.requests and all(q["auth"] == "Bearer sk-from-env" for q in endpoint.requests)

    async def stored() -> int:
        async with await amber.open_store(url) as s:
            return (await s.learn_queue_stats("acme"))["dead"]

    assert asyncio.run(stored()) == 0
