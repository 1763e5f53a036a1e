#!/usr/bin/env bash
# Amber's main job on the embedded default: a conversation in one process, continued in another.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python examples/demo.py "$@"
