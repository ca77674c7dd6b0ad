#!/usr/bin/env bash
# The deployment benchmark on a CUDA machine: installs the gpu extra (onnxruntime-gpu 1.31 + TensorRT 10.x) into
# the current Python environment, then runs scripts/bench_deploy.py on the CUDA and the TensorRT execution
# providers (TensorRT: fp16, the export's written batch profile and engine cache), writing the same report as the
# CPU run: docs/bench_deploy_cuda.{json,md,png} and docs/bench_deploy_tensorrt.{json,md,png}.
#
#   bash scripts/bench_gpu.sh            # PYTHON=/path/to/python to pick the environment
#   bash scripts/bench_gpu.sh --check    # only check for a CUDA device (what the tests run)
#
# Without a CUDA device it stops at once with one line and exit code 1: nothing is installed or written.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"

cuda_device() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    return 0
  fi
  "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}

if ! cuda_device; then
  echo "bench_gpu.sh: no CUDA device (nvidia-smi lists no GPU and torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU" >&2
  exit 1
fi
if [[ "${1:-}" == "--check" ]]; then
  echo "bench_gpu.sh: CUDA device found"
  exit 0
fi

cd "$REPO"
# onnxruntime-gpu replaces the CPU wheel (both install the `onnxruntime` module).
"$PYTHON" -m pip uninstall -y onnxruntime >/dev/null 2>&1 || true
"$PYTHON" -m pip install -e ".[gpu]"
for providers in cuda tensorrt; do
  "$PYTHON" scripts/bench_deploy.py --providers "$providers" --out "docs/bench_deploy_${providers}"
done
