#!/usr/bin/env bash
# Set up everything Amber and its tests need on a fresh machine: a virtualenv with the project and
# its extras; with --for-tests also the PostgreSQL and Redis servers and the browser the tests use.
# Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# The pinned CPU build of torch first: an unpinned one (pulled in by sentence-transformers)
# would download gigabytes of CUDA packages.
python -m pip install -q "torch==2.13.0" 2>/dev/null || echo "note: torch==2.13.0 not available; embeddings extra will pull its own torch"
python -m pip install -q -c constraints.txt -e ".[all,test,pgvector-test]"

if [ "${1:-}" != "--for-tests" ]; then
  exit 0  # the demo needs nothing more
fi

# The tests talk to a real PostgreSQL and a real Redis: start them if they are not running.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  fi
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

# The memory inspector's browser test (tests/test_ui_e2e.py): Debian's chromium, driven by playwright-core
# from tests/ui (pinned in its package-lock.json; no browser is ever downloaded by npm).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "note: could not install chromium; the inspector's browser test will fail"
fi
if command -v npm >/dev/null 2>&1; then
  want=$(sed -n 's/.*"playwright-core": *"\([^"]*\)".*/\1/p' tests/ui/package.json | head -1)
  have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' tests/ui/node_modules/playwright-core/package.json 2>/dev/null | head -1 || true)  # none yet
  if [ "$want" != "$have" ]; then
    (cd tests/ui && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) \
      || echo "note: npm ci in tests/ui failed; the inspector's browser test will fail"
  fi
fi
