"""The README's main command: examples/demo.py, end to end, as a user runs it (no model configured)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import amber

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_demo_runs_two_processes_and_the_second_one_has_the_conversation(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AMBER_DEMO_MODEL")}
    done = subprocess.run([sys.executable, str(DEMO)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]

    assert "no model is configured" in out.lower()
    assert (tmp_path / "amber-demo.db").exists()  # the default store, in the current directory
    assert str(tmp_path / "amber-demo.db") in out  # its location is printed

    pids = re.findall(r"=== process (\d): pid (\d+) ===", out)
    assert [step for step, _ in pids] == ["1", "2"]
    assert pids[0][1] != pids[1][1]
    sessions = set(re.findall(r"session: (\S+)", out))
    assert len(sessions) == 1

    process_2 = out.split("=== process 2:")[1]
    model_input = process_2.split("what the model would have received:")[1]
    assert "P-12345" in model_input and "C-7788" in model_input
    assert "The conversation is back" in process_2
    assert "assistant: " in out and "NO MODEL IS CONFIGURED" in out  # and no invented answer

    # The transcript really is in the SQLite file, written by process 1, continued by process 2.
    import asyncio

    async def read() -> list[str]:
        async with await amber.open_store(f"sqlite:///{tmp_path / 'amber-demo.db'}") as store:
            return [m.content for m in await store.read_since(amber.SessionKey.parse(sessions.pop()))]

    contents = asyncio.run(read())
    assert len(contents) == 3 and "P-12345" in contents[0] and all(m.startswith(("Hi", "The", "Which"))
                                                                   for m in contents)


def test_demo_answers_from_a_configured_openai_compatible_endpoint(tmp_path):
    """A stand-in OpenAI-compatible server (plain http.server, answering from what it was sent) plays
    the configured model, so the demo's real-model path runs end to end without an LLM."""
    import http.server
    import json
    import threading

    seen: list[str] = []

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = " ".join(str(m.get("content")) for m in body["messages"])
            seen.append(text)
            answer = "You gave me policy P-12345." if "P-12345" in text else "I do not know."
            data = json.dumps({
                "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, OPENAI_API_KEY="sk-test", AMBER_DEMO_MODEL="stand-in",
                   OPENAI_BASE_URL=f"http://127.0.0.1:{server.server_address[1]}/v1")
        done = subprocess.run([sys.executable, str(DEMO), "--store", f"sqlite:///{tmp_path}/m.db"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    process_2 = done.stdout.split("=== process 2:")[1]
    assert "no model is configured" not in done.stdout.lower()
    assert "assistant: You gave me policy P-12345." in process_2
    assert len(seen) == 3 and "P-12345" in seen[-1]  # process 2's request carried process 1's words
