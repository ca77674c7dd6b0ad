"""Test helpers: running Python without amp-hf importable, and `accelerate launch` on 2 CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_without_amp_hf(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that can import transformers but not amp_hf.

    ``-S`` skips site initialisation, so the editable install's path hook is not loaded; site-packages is
    added back by hand. The code fails loudly if amp_hf were importable after all.
    """
    site_packages = sysconfig.get_paths()["purelib"]
    prelude = (
        "import sys; sys.path.append(%r)\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('amp_hf') is None, 'amp_hf must not be importable here'\n" % site_packages
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def accelerate_launch(args: list[str], cwd: Path, num_processes: int = 2, timeout: int = 600,
                      extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N -m amp_hf ...`` on CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "-m", "amp_hf"]
    return subprocess.run(launcher + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
