"""Training metrics: JSON lines in the run folder (main process), mirrored to accelerate's trackers."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends ``{"step": …, **values}`` lines to ``<run_dir>/metrics.jsonl``.

    The file always describes one run: a fresh run starts it empty, and a resumed run first drops the lines
    logged after its checkpoint (the interrupted run's last steps, which are about to be logged again).
    """

    def __init__(self, run_dir: Path, accelerator, resumed_step: int | None = None):
        self.path = run_dir / METRICS_FILE
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        if self.enabled and self.path.is_file():
            lines = self.path.read_text().splitlines() if resumed_step is not None else []
            kept = [line for line in lines if json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.accelerator.log(values, step=step)  # trackers (TensorBoard); a no-op without any
        if self.enabled:
            with self.path.open("a") as stream:
                stream.write(json.dumps({"step": step, **values}) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged metrics of a run, oldest first."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
