#!/usr/bin/env bash
# The whole test suite, against real SQLite files, a real PostgreSQL and a real Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --for-tests
. .venv/bin/activate
export AMBER_TEST_POSTGRES_URL=${AMBER_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}
export AMBER_TEST_REDIS_URL=${AMBER_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -q "$@"
