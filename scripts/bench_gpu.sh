#!/usr/bin/env bash
# GPU deployment check + benchmark on a CUDA machine, which may have no network: it installs nothing unless told
# (--install), prints an inventory (GPU, driver, CUDA runtime, onnxruntime build and the providers that load,
# TensorRT, free memory), then runs what loads (scripts/bench_gpu.py): PyTorch CUDA eager fp16/bf16, ONNX Runtime
# CUDA and TensorRT providers, unpruned vs pruned, every row labelled with the provider that actually ran, and one
# short accelerate FSDP and one DDP distillation -> docs/bench_gpu.{json,md}. ~10 minutes on one GPU, --quick ~4.
#
#   bash scripts/bench_gpu.sh [--quick] [--providers cuda,tensorrt] [--out PATH] [--no-distill]
#   bash scripts/bench_gpu.sh --inventory      # only the inventory (also without a GPU)
#   bash scripts/bench_gpu.sh --check          # only check for a CUDA device (what the tests run)
#   bash scripts/bench_gpu.sh --install [...]  # first swap the CPU onnxruntime for amp-hf[gpu] (needs PyPI)
#   PYTHON=/path/to/venv/bin/python bash scripts/bench_gpu.sh   # the environment to use (default: python)
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

install=0
args=()
for arg in "$@"; do
  case "$arg" in
    --install) install=1 ;;
    --inventory) exec "$PYTHON" "$REPO/scripts/bench_gpu.py" --inventory ;;
    *) args+=("$arg") ;;
  esac
done

if ! cuda_device; then
  echo "bench_gpu.sh: no CUDA device (nvidia-smi lists no GPU and torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU" >&2
  exit 1
fi
if [[ "${args[0]:-}" == "--check" ]]; then
  echo "bench_gpu.sh: CUDA device found"
  exit 0
fi

if [[ "$install" == 1 ]]; then
  # onnxruntime and onnxruntime-gpu install the same onnxruntime/ folder: remove both, then install the GPU wheel
  # alone; scripts/bench_gpu.py imports amp-hf from this checkout, so nothing re-installs the CPU wheel.
  "$PYTHON" -m pip uninstall -y onnxruntime onnxruntime-gpu
  "$PYTHON" -m pip install "onnxruntime-gpu[cuda,cudnn]==1.31.1"
fi

cd "$REPO"
exec "$PYTHON" scripts/bench_gpu.py ${args[@]+"${args[@]}"}
