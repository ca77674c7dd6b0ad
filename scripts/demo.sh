#!/usr/bin/env bash
# The README's main job: set up (idempotent), then prune the real all-MiniLM-L6-v2 offline end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec "${AMP_HF_VENV:-.venv}/bin/amp-hf" demo "$@"
