"""A sentence-transformers model run by ONNX Runtime, for the query path.

A recall query embeds one short text. Through torch that took 9-19 ms at p50 on a 2-core machine
(depending on the day), most of it per-operator dispatch, not arithmetic; ONNX Runtime ran the same
graph in a third of the time (6.6 vs 18.8 ms, interleaved). The model is
exported once per machine (torch's dynamo exporter, ~10 s) to a cache directory keyed by the model's
files and the library versions, then loaded from there by every process. Every export or cached
file is checked against the torch model on probe texts before use: a graph that does not give the
same vectors is never used (a broken export would silently drift query vectors away from stored ones).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

from .._native import onnxruntime_loadable

__all__ = ["OnnxQueryEncoder", "default_cache_dir", "onnx_available"]

log = logging.getLogger("amber.embed")

_FORMAT = 1  # bump when the exported graph's inputs or outputs change
_PROBES = ("What is my policy number?", "Nora moved to Lisbon last spring, she loves it there.", "word " * 300)
TOLERANCE = 1e-4  # max abs difference per component against torch (measured: ~2e-7)


def default_cache_dir() -> Path:
    """``$AMBER_CACHE_DIR``, else ``$XDG_CACHE_HOME/amber``, else ``~/.cache/amber``."""
    explicit = os.environ.get("AMBER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "amber"


def onnx_available() -> str | None:
    """None when ONNX Runtime can be loaded; else why not. The exporter's packages (``onnx``,
    ``onnxscript``: 1.4 s to import) are not checked here: only an export needs them, and torch
    names them if they are missing."""
    if not onnxruntime_loadable():
        return "onnxruntime (usearch was loaded first by other code; see amber._native)"
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:  # an ImportError, or a protobuf version clash raised at import
        return f"onnxruntime ({exc})"
    return None


_keys: dict[Path, str] = {}  # per process: hashing ~90 MB of weights takes ~0.2 s


def _model_key(model_path: Path) -> str:
    if model_path not in _keys:
        _keys[model_path] = _hash_model(model_path)
    return _keys[model_path]


def _hash_model(model_path: Path) -> str:
    """Content hash of the model directory (weights included) and the versions that shape the graph."""
    import onnxruntime
    import torch

    digest = hashlib.sha256(f"{_FORMAT}|{torch.__version__}|{onnxruntime.__version__}".encode())
    for path in sorted(p for p in model_path.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_path)).encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:20]


class OnnxQueryEncoder:
    """Encodes a few texts with ONNX Runtime: tokenised by the model's own ``preprocess``, pooled and
    normalised inside the exported graph, so the vectors are those of ``SentenceTransformer.encode``."""

    def __init__(self, model: Any, session: Any, input_names: Sequence[str], source: Path) -> None:
        self._model = model
        self._input = _private_input_module(model)
        self.independent = self._input is not model  # False: must share the model's lock
        self._session = session
        self._inputs = tuple(input_names)
        self.source = source

    def encode(self, texts: list[str]) -> Any:
        """Not safe to call from two threads at once (the tokenizer is not); safe beside the torch
        model's own calls, since the tokenizer is this encoder's own copy."""
        features = self._input.preprocess(texts)
        feed = {name: features[name].numpy() for name in self._inputs}
        return self._session.run(None, feed)[0]

    @classmethod
    def open(cls, model: Any, model_path: Path, *, cache_dir: Path | None, threads: int | None,
             name: str) -> "OnnxQueryEncoder":
        """Load the cached export for this model, exporting it first when there is none. Raises on
        any failure (the caller decides whether to fall back to torch)."""
        input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids")
                       if k in model.preprocess(["x"])]
        folder = (cache_dir or default_cache_dir()) / "onnx"
        target = folder / f"{_safe(name)}-{_model_key(model_path)}.onnx"
        if target.is_file():
            try:
                return cls._load(model, target, input_names, threads, temporary=False)
            except Exception as exc:  # a truncated or foreign file: export it again, once
                log.warning("the cached ONNX model %s is unusable (%s); exporting it again", target, exc)
                target.unlink(missing_ok=True)
        exported, temporary = _export(model, input_names, target)
        return cls._load(model, exported, input_names, threads, temporary=temporary)

    @classmethod
    def _load(cls, model: Any, target: Path, input_names: list[str], threads: int | None, *,
              temporary: bool) -> "OnnxQueryEncoder":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (every core)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads that spin while waiting steal the core another request's query needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        finally:
            if temporary:  # the session holds the graph in memory
                target.unlink(missing_ok=True)
        encoder = cls(model, session, input_names, target)
        encoder.check_against_torch()
        return encoder

    def check_against_torch(self) -> None:
        import numpy as np
        import torch

        with torch.inference_mode():
            features = self._model.preprocess(list(_PROBES))
            expected = torch.nn.functional.normalize(
                self._model.forward(features)["sentence_embedding"], p=2, dim=1).float().numpy()
        got = self.encode(list(_PROBES))
        drift = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if not drift <= TOLERANCE:
            raise ValueError(f"the ONNX graph at {self.source} differs from the torch model by {drift:.2g}")


def _private_input_module(model: Any) -> Any:
    """The model's input module with a tokenizer of its own (the weights stay shared): a fast
    tokenizer called from two threads at once fails ("Already borrowed"), and queries must not wait
    for a batch that torch is encoding with the model's tokenizer."""
    import copy

    first = model[0]
    if not hasattr(first, "processor") or not hasattr(first, "preprocess"):
        return model  # another module layout: share it (callers then keep one lock for both)
    own = copy.copy(first)  # shallow: the transformer's weights are not copied
    own.processor = copy.deepcopy(first.processor)
    return own


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def _export(model: Any, input_names: list[str], target: Path) -> tuple[Path, bool]:
    """Export tokeniser output → normalised sentence embedding; write atomically (workers may race)."""
    import torch

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features = dict(zip(input_names, tensors))
            return torch.nn.functional.normalize(self.model(features)["sentence_embedding"], p=2, dim=1)

    log.info("exporting the embedding model to ONNX for fast queries (once per machine): %s", target)
    sample = model.preprocess(["an example text to trace", "a second one"])
    args = tuple(sample[k] for k in input_names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
        kept, temporary = target, False
    except OSError:  # a read-only cache: export for this process only
        log.warning("ONNX cache %s is not writable; exporting to a temporary file", target.parent)
        handle, tmp = tempfile.mkstemp(suffix=".onnx")
        kept, temporary = Path(tmp + ".onnx"), True
    os.close(handle)
    chatty = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in chatty]
    try:
        for logger in chatty:  # the exporter logs every pass, and warns of ops of packages not installed
            logger.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
            torch.onnx.export(Pipeline().eval(), args, tmp, input_names=input_names,
                              output_names=["sentence_embedding"], dynamo=True, external_data=False,
                              dynamic_shapes=(tuple({0: batch, 1: seq} for _ in input_names),),
                              verbose=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; workers under other users read it too
        os.replace(tmp, kept)
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return kept, temporary
