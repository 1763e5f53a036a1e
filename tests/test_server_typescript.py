"""Runs the TypeScript client's own tests (node's test runner) against a live `amber serve`, so CI runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "typescript"


def test_typescript_client_against_live_server() -> None:
    pytest.importorskip("fastapi")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (the TypeScript client tests need node >= 20)")
    env = {**os.environ, "AMBER_BIN": os.path.join(os.path.dirname(sys.executable), "amber")}
    r = subprocess.run([node, "--test", "test/"], cwd=CLIENT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout and "# pass 8" in r.stdout
