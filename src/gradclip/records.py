"""Run records: what every run keeps on disk, and loaders that turn records into pandas frames.

A run directory (the job's Hydra output directory) holds:

* ``config.yaml``    the resolved config of the run;
* ``metrics.jsonl``  one JSON object per logged row, each with ``step`` (the number of SGD
                     updates done); training keys start with ``train/``, full-data ones with
                     ``eval/``;
* ``units.jsonl``    with ``unit_log_every`` > 0 only: per unit, ||W_i|| before and ||Delta W_i||
                     of a step, every ``unit_log_every`` steps;
* ``summary.json``   ``status`` (running | completed | diverged | failed), ``diverged_step``,
                     the final metrics, run-wide maxima, wall time, versions, git commit, device.

Figures are built from these files (or, for an online project, from the W&B API), never from
the training process itself. :func:`load_runs` reads any set of run directories.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
UNITS_FILE = "units.jsonl"
SUMMARY_FILE = "summary.json"
FINISHED = ("completed", "diverged")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file, so a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary, or None if it has none (yet)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def is_finished(run_dir: Path) -> bool:
    """True if the run already completed or diverged: a re-launched sweep skips it."""
    summary = read_summary(run_dir)
    return summary is not None and summary.get("status") in FINISHED


class RunRecorder:
    """Writes one run's local record; rows are flushed as they come, so a crash keeps them."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._metrics = self._units = None
        self._final: dict = {}  # every value logged at the latest step

    def start(self, config: Mapping, summary: Mapping) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / CONFIG_FILE, "w") as f:
            yaml.safe_dump(dict(config), f, sort_keys=False)
        self._metrics = open(self.run_dir / METRICS_FILE, "w")  # a new attempt starts afresh
        self._units = None
        (self.run_dir / UNITS_FILE).unlink(missing_ok=True)
        self._final = {}
        self.write_summary(summary)

    def log(self, row: Mapping) -> None:
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if row["step"] != self._final.get("step"):
            self._final = {}
        self._final.update(row)

    def log_units(self, row: Mapping) -> None:
        """Per-unit norms (``unit_log_every``): one JSON object per logged step in units.jsonl."""
        if self._units is None:
            self._units = open(self.run_dir / UNITS_FILE, "w")
        self._units.write(json.dumps(row) + "\n")
        self._units.flush()

    def final_values(self) -> dict:
        """The metrics logged at the last logged step (with ``step``): a diverged run's final
        values are those of the diverging step, never an older evaluation."""
        return dict(self._final)

    def write_summary(self, summary: Mapping) -> None:
        write_json_atomic(self.run_dir / SUMMARY_FILE, dict(summary))

    def close(self) -> None:
        for handle in (self._metrics, self._units):
            if handle is not None:
                handle.close()
        self._metrics = self._units = None


# -- loading --------------------------------------------------------------------------------------


def find_run_dirs(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories (those holding a summary.json) under the given dirs or glob patterns."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: set[Path] = set()
    for source in sources:
        for match in glob.glob(str(source), recursive=True) or []:
            path = Path(match)
            if path.name == SUMMARY_FILE:
                found.add(path.parent)
            elif path.is_dir():
                found.update(p.parent for p in path.rglob(SUMMARY_FILE))
    return sorted(found)


def flatten(obj: Any, prefix: str = "", out: dict | None = None) -> dict:
    """Nested mappings to one level with dotted keys: {"clip": {"tau": 1}} -> {"clip.tau": 1}."""
    out = {} if out is None else out
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = obj
    return out


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a metrics file; a half-written last line (a killed job) is dropped."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for k, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if k < len(lines) - 1:
                raise
    return rows


def runs_frame(run_configs: list[dict], summaries: list[dict], run_ids: list[str]) -> pd.DataFrame:
    """One row per run: the config flattened with dots (``clip.threshold``) and the summary
    under ``summary.``."""
    rows = []
    for run_id, config, summary in zip(run_ids, run_configs, summaries, strict=True):
        row = {"run_id": run_id}
        flatten(config, "", row)
        flatten(summary, "summary", row)
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_frame(histories: Iterable[tuple[str, list[dict]]]) -> pd.DataFrame:
    """Per-step metrics in long form: run_id, step, metric, value (one row per number)."""
    records = []
    for run_id, rows in histories:
        for row in rows:
            step = row.get("step")
            for key, value in row.items():
                if key == "step" or key.startswith("_") or not isinstance(value, (int, float)):
                    continue
                records.append((run_id, step, key, float(value)))
    frame = pd.DataFrame.from_records(records, columns=["run_id", "step", "metric", "value"])
    return frame.astype({"step": "int64", "value": "float64"})


def load_runs(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read local run records into (runs, metrics) frames.

    ``sources``: run or sweep directories, or glob patterns (``runs/stability/**``). ``run_id``
    is the run directory's path, which is unique and lets a figure find the raw files.
    """
    run_dirs = find_run_dirs(sources)
    configs, summaries, ids = [], [], []
    for run_dir in run_dirs:
        with open(run_dir / CONFIG_FILE) as f:
            configs.append(yaml.safe_load(f) or {})
        summaries.append(read_summary(run_dir) or {})
        ids.append(str(run_dir))
    runs = runs_frame(configs, summaries, ids)
    metrics = metrics_frame((i, _read_jsonl(d / METRICS_FILE)) for i, d in zip(ids, run_dirs))
    return runs, metrics


def load_units(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's units.jsonl in long form: step, lr, param, unit, weight_norm, step_norm."""
    records = []
    for row in _read_jsonl(Path(run_dir) / UNITS_FILE):
        for param, norms in row["units"].items():
            for unit, (w, d) in enumerate(zip(norms["weight_norm"], norms["step_norm"], strict=True)):
                records.append((row["step"], row["lr"], param, unit, w, d))
    return pd.DataFrame.from_records(records, columns=["step", "lr", "param", "unit", "weight_norm", "step_norm"])


def load_wandb_runs(
    entity: str, project: str, filters: Mapping | None = None, api=None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same two frames from an online W&B project (offline runs must be synced first).

    ``filters`` is a W&B/MongoDB query, e.g. ``{"group": "stability", "config.clip.method":
    "norm"}``. Uses ``scan_history`` (every row) rather than the down-sampled ``history``.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    runs = list(api.runs(f"{entity}/{project}", filters=dict(filters or {})))
    configs = [{k: v for k, v in dict(r.config).items() if not k.startswith("_")} for r in runs]
    summaries = [_clean_summary(dict(r.summary)) for r in runs]
    ids = [f"{entity}/{project}/{r.id}" for r in runs]
    metrics = metrics_frame((i, list(r.scan_history())) for i, r in zip(ids, runs))
    return runs_frame(configs, summaries, ids), metrics


def _clean_summary(summary: dict) -> dict:
    """W&B's summary holds our summary under keys it may have turned to strings or NaN."""
    return {k: v for k, v in summary.items() if not k.startswith("_") and not (isinstance(v, float) and math.isnan(v))}
