"""The classic-AutoGen examples run as documented (no model configured: they print the model input)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(tmp_path: Path, name: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--store", f"sqlite:///{tmp_path}/ex.db", *args],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_classic_chat_example_recalls_the_policy_number_in_a_new_process(tmp_path: Path) -> None:
    out = _run(tmp_path, "classic_chat.py")
    process_2 = out.split("process 2:")[1]
    assert '"The user\'s policy number is P-12345."' in process_2  # recalled as a fact, quoted
    assert "[user] My policy number is P-12345" in process_2  # and the history is back


def test_classic_migrate_example_imports_once_and_rehydrates(tmp_path: Path) -> None:
    first = _run(tmp_path, "classic_migrate.py")
    assert "imported 3 new message(s)" in first
    assert "[assistant] assistant: Thanks, I have noted policy P-12345." in first
    again = _run(tmp_path, "classic_migrate.py")
    assert "imported 0 new message(s)" in again
