#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint with ruff, run the main suite in .venv, then the timm / open_clip
# tests (tests/test_timm*.py, tests/test_open_clip*.py) in .venv-vision, and the numerics-sensitive tests once
# more under ATEN_CPU_CAPABILITY=default. pytest arguments (e.g. `-m slow`, `-x`) go to the main and vision
# runs; the exit code is non-zero if any run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

# Lint first (pyproject.toml [tool.ruff]): seconds, and a failure names the file and line.
"${AMP_HF_VENV:-.venv}/bin/ruff" check amp_hf export hub_cards tests scripts

set +e
# In .venv the timm / open_clip tests skip themselves (timm / open_clip are not installed there).
"${AMP_HF_VENV:-.venv}/bin/python" -m pytest "$@"
main_status=$?
# The numerics-sensitive tests once more on ATen's scalar kernels (no SIMD): a result that holds only on this CPU's
# kernel path fails here too, not first on another machine. Always run, whatever the arguments; one thread (the
# main run covers the default thread count) keeps it short on a loaded machine: ~20 s here against ~100 s.
echo "--- numerics-sensitive tests under ATEN_CPU_CAPABILITY=default"
OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default "${AMP_HF_VENV:-.venv}/bin/python" -m pytest -q tests/test_pinned_outputs.py \
  tests/test_format.py::test_keeping_every_neuron_reproduces_the_model_exactly
numerics_status=$?
if [ "${AMP_HF_SKIP_VISION:-0}" != 1 ]; then
  echo "--- timm / open_clip tests (${AMP_HF_VISION_VENV:-.venv-vision}: torch 2.14.1 + torchvision 0.29.1)"
  # tests/conftest.py collects only the timm / open_clip tests in this run.
  AMP_HF_TEST_SCOPE=vision_libs "${AMP_HF_VISION_VENV:-.venv-vision}/bin/python" -m pytest "$@"
  vision_status=$?
else
  vision_status=5
fi
# pytest's 5 = no test ran in that venv (e.g. arguments that select only the other run's files): fine as long
# as one of the two runs ran tests.
ok() { [ "$1" = 0 ] || [ "$1" = 5 ]; }
[ "$numerics_status" = 0 ] && ok "$main_status" && ok "$vision_status" && ! { [ "$main_status" = 5 ] && [ "$vision_status" = 5 ]; }
