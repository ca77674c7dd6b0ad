#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the test suite (slow tests: pass -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec "${AMP_HF_VENV:-.venv}/bin/python" -m pytest "$@"
