"""The evaluation report: its row type (``EvalResult``, written by ``amp-hf eval``, read by the card), reader
and writer.

Report (``eval_report.json`` beside the checkpoint by default; ``amp-hf card`` reads every
``eval_report*.json``)::

    {"schema": "amp-hf/eval-report/1", "model": "<checkpoint>", "timestamp": "<ISO 8601, UTC>",
     "amp_hf_version": "...",
     "results": [{"task": "knn", "dataset": "digits", "split": "test", "metric": "accuracy",
                  "value": 0.95, "k": 20, "num_samples": 360, "timestamp": "...", "details": {...}}, ...]}

``k`` appears only where the metric has one (kNN k, recall@k, neighbours); ``details`` holds task
specifics (temperature, teacher, templates, memory-bank size). Re-running a task replaces its rows and
keeps the rest, so one report accumulates every evaluation of a checkpoint. A row may also carry
``dataset_name`` / ``metric_name`` (display names) and ``baseline`` (the unpruned model's value).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import OutputError
from .artifacts import EVAL_REPORT_FILE, EVAL_REPORT_SCHEMA
from .outputs import default_mode, record_written
from .provenance import portable, portable_reference

# The tasks a report row can name (amp_hf.evaluation.tasks computes them).
TASKS = ("knn", "zeroshot", "retrieval", "top1", "fidelity")
# The columns retrieval reads its captions from, first match wins (a row's caption column when none is given).
CAPTION_COLUMNS = ("captions", "caption", "sentences", "text")


@dataclass
class EvalResult:
    """One measured number: a row of the report, as written by ``amp-hf eval`` and read by the card.

    ``source`` / ``baseline_source``: the report files a row and its baseline were read from (set by readers,
    never written).
    """

    task: str
    dataset: str
    split: str | None
    metric: str
    value: float
    k: int | None = None
    num_samples: int | None = None
    details: dict = field(default_factory=dict)
    dataset_name: str | None = None
    metric_name: str | None = None
    baseline: float | None = None
    source: str | None = None
    baseline_source: str | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items()
                if value is not None and value != {} and key not in ("source", "baseline_source")}  # fmt: skip

    @property
    def identity(self) -> tuple:
        return (self.task, self.dataset, self.split, self.metric, self.k)

    @classmethod
    def from_row(cls, row, source: str | None = None) -> EvalResult | None:
        """A report row as written (None when it lacks task, dataset, metric or a numeric value)."""
        if not isinstance(row, dict) or not all(row.get(key) for key in ("task", "dataset", "metric")):
            return None
        try:
            value = float(row["value"])
            baseline = float(row["baseline"]) if row.get("baseline") is not None else None
            k = int(row["k"]) if row.get("k") is not None else None
        except (KeyError, TypeError, ValueError):
            return None
        optional = {key: str(row[key]) for key in ("split", "dataset_name", "metric_name") if row.get(key)}
        return cls(str(row["task"]), str(row["dataset"]), optional.pop("split", None), str(row["metric"]), value,
                   k=k, baseline=baseline, source=source, **optional)  # fmt: skip


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_report(path: str | os.PathLike) -> dict:
    """A report written by ``write_report`` (a checkpoint folder means its ``eval_report.json``)."""
    path = Path(path)
    path = path / EVAL_REPORT_FILE if path.is_dir() else path
    try:
        report = json.loads(path.read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a JSON file") from error
    if not isinstance(report, dict) or report.get("schema") != EVAL_REPORT_SCHEMA:
        report = report if isinstance(report, dict) else {}
        raise ValueError(f"{path} is not an amp-hf evaluation report (schema {report.get('schema')!r})")
    return report


def write_report(results: Sequence[EvalResult], path: str | os.PathLike, model: str) -> Path:
    """Write (or update) a report atomically: rows of re-run metrics are replaced, other rows kept."""
    path = Path(path)
    timestamp = _now()
    # The report may be pushed with the checkpoint: models are named by Hub id or relative to the report.
    model = portable_reference(model, path.parent)
    rows = [portable({**result.to_dict(), "timestamp": timestamp}, path.parent) for result in results]
    new = {result.identity for result in results}
    if path.is_file():
        try:
            previous = read_report(path)
        except ValueError as error:
            raise OutputError(f"{path} exists and is not an amp-hf evaluation report ({error}): write the "
                              "report to another path") from error
        if _same_model(previous.get("model"), model, path.parent):
            kept = [row for row in previous.get("results", []) if _identity(row) not in new]
            rows = kept + rows
    report = {"schema": EVAL_REPORT_SCHEMA, "model": model, "timestamp": timestamp, "amp_hf_version": __version__,
              "results": rows}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(report, file, indent=2)
        os.chmod(staging, default_mode(directory=False))
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    record_written(path.parent, [path.name])
    return path


def _same_model(first: str | None, second: str, folder: Path) -> bool:
    """Whether two report ``model`` entries (Hub ids, or paths relative to the report's ``folder``) match."""
    if first is None:
        return False
    if (folder / first).exists() and (folder / second).exists():
        return (folder / first).resolve() == (folder / second).resolve()
    return first == second


def _identity(row: dict) -> tuple:
    return (row.get("task"), row.get("dataset"), row.get("split"), row.get("metric"), row.get("k"))
