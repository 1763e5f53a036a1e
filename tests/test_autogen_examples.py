"""The AgentChat examples run as documented (canned Replay models; see their docstrings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_per_request_example_shows_the_first_request_in_the_third_model_input(tmp_path):
    out = run(str(EXAMPLES / "agentchat_per_request.py"), "--store", f"sqlite:///{tmp_path}/x.db", cwd=tmp_path)
    last = out.split("user: What is my policy number?")[1]
    assert "UserMessage: My policy number is P-12345." in last


def test_team_example_continues_in_a_second_process(tmp_path):
    url = f"sqlite:///{tmp_path}/team.db"
    first = run(str(EXAMPLES / "agentchat_team.py"), "--store", url, cwd=tmp_path)
    second = run(str(EXAMPLES / "agentchat_team.py"), "--store", url, cwd=tmp_path)
    assert "run 1" in first and "run 2" in second
    assert "adjuster's context now holds 2 messages" in first
    assert "adjuster's context now holds 5 messages" in second
