"""Native extensions that must be loaded in a fixed order.

usearch (2.24 and later, whose extension carries its own C++ runtime) and ONNX Runtime cannot share a
process when usearch loads first: ``import onnxruntime`` then crashes with a segmentation fault inside
libstdc++ (reproduced with onnxruntime 1.23-1.31). Loaded the other way round, both work. Amber loads
usearch in one place only, and loads ONNX Runtime just before it when it is installed.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["load_before_usearch", "onnxruntime_loadable"]


def load_before_usearch() -> None:
    """Import ONNX Runtime, if installed, so that a later use of it cannot crash the process."""
    if "onnxruntime" in sys.modules or "usearch.compiled" in sys.modules:
        return
    try:
        if importlib.util.find_spec("onnxruntime") is not None:
            importlib.import_module("onnxruntime")
    except Exception:  # a broken install only costs the ONNX query path, which reports it itself
        pass


def onnxruntime_loadable() -> bool:
    """False when importing ONNX Runtime now would crash the process (usearch got there first)."""
    return "onnxruntime" in sys.modules or "usearch.compiled" not in sys.modules
