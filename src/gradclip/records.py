"""Run records: what every run keeps on disk, and loaders that turn records into pandas frames.

A run directory (the job's Hydra output directory) holds:

* ``summary.json``   ``status`` (see below), ``diverged_step``, the final metrics, run-wide
                     maxima, wall time, versions, git commit, device, and the process that wrote
                     it (host, pid); written first, replaced atomically, touched every
                     ``HEARTBEAT_S`` seconds while the run is alive;
* ``config.yaml``    the resolved config of the run;
* ``metrics.jsonl``  one JSON object per logged row, each with ``step`` (the number of SGD
                     updates done); training keys start with ``train/``, full-data ones with
                     ``eval/``;
* ``units.jsonl``    with ``unit_log_every`` > 0 only: per unit, ||W_i|| before and ||Delta W_i||
                     of a step, every ``unit_log_every`` steps.
* ``theta.npz``      with ``average_from`` set only, written before the summary of a completed
                     run: per parameter its value at the start (``initial/<name>``) and at the
                     end (``final/<name>``) and its iterate
                     averages (``average/<name>``, ``average_late/<name>``, float64), and the
                     steps they start after (:func:`load_theta`).

Statuses: ``running`` (a live process is writing it), ``completed``, ``diverged`` (a result:
the iterates left the bound or became non-finite), ``failed`` (a crash, a write error, bad input,
or a record that cannot be read), ``interrupted`` (stopped by a signal at a step boundary, or
its process died without a word: a ``running`` record whose process is gone is read as
``interrupted``). A relaunch trains again every run that is not completed or diverged.

Records are written whole or not at all: a row is one ``write`` and is cut back if the write
fails; JSON and YAML files are replaced through a temporary file that never outlives an error.
Figures are built from these files (or, for an online project, from the W&B API), never from
the training process itself. :func:`load_runs` reads any set of run directories, whatever state
a fault left them in.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # pandas is imported where frames are made: a training process never needs it
    import pandas as pd

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
# libyaml's safe loader and dumper where PyYAML was built with it (the wheels are): 10x the
# pure-Python ones, which dominated reading a sweep of a thousand records.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
METRICS_FILE = "metrics.jsonl"
UNITS_FILE = "units.jsonl"
THETA_FILE = "theta.npz"
SUMMARY_FILE = "summary.json"
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
FINISHED = ("completed", "diverged")
# A live run touches its summary.json this often; a record of another host whose summary is
# older than HEARTBEAT_STALE_S is taken for dead (its own host checks the process instead).
HEARTBEAT_S = 30.0
HEARTBEAT_STALE_S = 600.0


# What a summary keeps when a full disk leaves room for no more (``truncated``: true).
ESSENTIAL_KEYS = ("status", "error", "bad_input", "diverged_step", "diverged_reason", "interrupted_reason",
                  "steps_completed", "seed", "started_at", "finished_at", "process", "wandb")


class RecordError(Exception):
    """A record on disk that cannot be read. The message names the file and the remedy."""


class RecordWriteError(Exception):
    """A record file could not be written (disk full, read-only folder, ...)."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path, self.error = Path(path), error
        super().__init__(f"cannot write {path}: {error.strerror or error}")


# -- writing --------------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str, in_place_on_full_disk: bool = False) -> None:
    """:func:`write_bytes_atomic` of the text, UTF-8."""
    write_bytes_atomic(path, text.encode(), in_place_on_full_disk)


def write_bytes_atomic(path: Path, data: bytes, in_place_on_full_disk: bool = False) -> None:
    """Write a file through a temporary file in the same folder, so that a reader never sees half
    a file and an error leaves neither a half file nor the temporary one. The file gets the mode
    of any other new file (0666 less the umask), not mkstemp's 0600.

    ``in_place_on_full_disk``: where the temporary copy finds no space, overwrite an existing
    file in place instead, if the new text fits in the blocks the file already holds (a summary
    is a few kB), so that a final status still reaches a full disk.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _write_all(fd, data)
            os.fsync(fd)  # on disk before it replaces the old file: a power cut leaves one or the other
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as error:
        _unlink_quietly(tmp)
        if not (in_place_on_full_disk and error.errno in (errno.ENOSPC, errno.EDQUOT) and path.is_file()):
            raise RecordWriteError(path, error) from None
        if not _overwrite_in_place(path, data):
            raise RecordWriteError(path, error) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """Overwrite a file with ``data`` only where that needs no new block (``data`` fits in what
    the file already holds): then a full disk cannot cut the write. False if it would not fit."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            if len(data) > os.fstat(fd).st_blocks * 512:
                return False
            _write_all(fd, data)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def write_json_atomic(path: Path, obj: Any, in_place_on_full_disk: bool = False) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", in_place_on_full_disk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _JsonLines:
    """An append-only JSON-lines file on a raw descriptor: each row is one write, and a write
    that fails part-way (disk full) is cut back, so the file never ends in half a row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as error:
            raise RecordWriteError(path, error) from None

    def write(self, row: Mapping) -> None:
        data = (json.dumps(row) + "\n").encode()
        start = os.lseek(self.fd, 0, os.SEEK_CUR)
        try:
            _write_all(self.fd, data)
        except OSError as error:
            try:
                os.ftruncate(self.fd, start)
                os.lseek(self.fd, start, os.SEEK_SET)
            except OSError:
                pass
            raise RecordWriteError(self.path, error) from None

    def close(self) -> None:
        """fsync and close: a write error that a network file system reports only now (NFS
        defers quota and full-disk errors to close) is raised here, before the run's final
        summary can call it complete."""
        try:
            os.fsync(self.fd)
        except OSError as error:
            os.close(self.fd)
            raise RecordWriteError(self.path, error) from None
        try:
            os.close(self.fd)
        except OSError as error:
            raise RecordWriteError(self.path, error) from None


def process_identity() -> dict:
    """Who writes a record: host and pid, plus what tells this process from a later one that
    reuses its pid (Linux: the boot and the process's start time in clock ticks)."""
    identity = {"host": socket.gethostname(), "pid": os.getpid()}
    identity.update(_proc_start(os.getpid()) or {})
    return identity


def _proc_start(pid: int) -> dict | None:
    """{"boot_id", "pid_ns", "start_ticks"} of a live process on this host, or None (gone, or no
    /proc). The PID namespace tells two containers that share a host name apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    # Field 22, counted after the command name, which may hold spaces and is closed by ')'.
    return {"boot_id": boot, "pid_ns": pid_ns, "start_ticks": int(stat.rsplit(")", 1)[1].split()[19])}


def process_alive(identity: Mapping) -> bool | None:
    """Whether the process that wrote a record still runs: True/False where this process can
    see it (same host, boot and PID namespace), None otherwise (the caller then judges by the
    heartbeat). A record of an earlier boot is dead."""
    if identity.get("host") != socket.gethostname() or not isinstance(identity.get("pid"), int):
        return None
    mine = _proc_start(os.getpid())
    if mine is None or "start_ticks" not in identity:  # no /proc here (or an old record): ask the kernel
        try:
            os.kill(identity["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if identity.get("boot_id") != mine["boot_id"]:
        return False
    if identity.get("pid_ns") != mine["pid_ns"]:
        return None
    return _proc_start(identity["pid"]) == {key: identity.get(key) for key in ("boot_id", "pid_ns", "start_ticks")}


class RunRecorder:
    """Writes one run's local record; rows reach the file as they come, so a crash keeps them.

    Every write error is raised as :class:`RecordWriteError`, naming the file.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._metrics = self._units = None
        self._final: dict = {}  # every value logged at the latest step
        self._beat: threading.Event | None = None

    def start(self, config: Mapping, summary: Mapping) -> None:
        """Start a new attempt: the summary first (so that any folder holding a record file
        has a summary that says what it is), then the config; rows start afresh."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / UNITS_FILE).unlink(missing_ok=True)
            (self.run_dir / THETA_FILE).unlink(missing_ok=True)  # an earlier attempt's weights are not this one's
            for stale in self.run_dir.glob(".*.tmp"):  # left by an attempt killed mid-write (SIGKILL)
                stale.unlink(missing_ok=True)
        except OSError as error:
            raise RecordWriteError(self.run_dir, error) from None
        self.write_summary(summary)
        write_text_atomic(self.run_dir / CONFIG_FILE, yaml.dump(dict(config), Dumper=SAFE_DUMPER, sort_keys=False))
        self._metrics = _JsonLines(self.run_dir / METRICS_FILE)
        self._units = None
        self._final = {}
        self._start_heartbeat()

    def log(self, row: Mapping) -> None:
        self._metrics.write(row)
        if row["step"] != self._final.get("step"):
            self._final = {}
        self._final.update(row)

    def log_units(self, row: Mapping) -> None:
        """Per-unit norms (``unit_log_every``): one JSON object per logged step in units.jsonl."""
        if self._units is None:
            self._units = _JsonLines(self.run_dir / UNITS_FILE)
        self._units.write(row)

    def write_theta(self, arrays: Mapping[str, Any]) -> None:
        """theta.npz (numpy arrays by name), whole or not at all."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes_atomic(self.run_dir / THETA_FILE, buffer.getvalue())

    def final_values(self) -> dict:
        """The metrics logged at the last logged step (with ``step``): a diverged run's final
        values are those of the diverging step, never an older evaluation."""
        return dict(self._final)

    def write_summary(self, summary: Mapping) -> None:
        """Replace summary.json atomically. On a full disk, overwrite it in place where that needs
        no new block, or else with its essentials only (status, reason, steps), which fit."""
        try:
            write_json_atomic(self.run_dir / SUMMARY_FILE, dict(summary), in_place_on_full_disk=True)
        except RecordWriteError as error:
            if error.error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            essentials = {k: summary[k] for k in ESSENTIAL_KEYS if k in summary} | {"truncated": True}
            text = json.dumps(essentials, indent=2, sort_keys=True) + "\n"
            if not _overwrite_in_place(self.run_dir / SUMMARY_FILE, text.encode()):
                raise

    def close_rows(self) -> None:
        """Close metrics.jsonl and units.jsonl (before the final summary: see _JsonLines.close);
        raises RecordWriteError if a deferred write error shows up now."""
        handles, self._metrics, self._units = (self._metrics, self._units), None, None
        errors = []
        for handle in handles:
            if handle is not None:
                try:
                    handle.close()
                except RecordWriteError as error:
                    errors.append(error)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop the heartbeat and close the rows (call it last, from a ``finally``)."""
        if self._beat is not None:
            self._beat.set()
            self._beat = None
        try:
            self.close_rows()
        except RecordWriteError:
            pass

    def _start_heartbeat(self) -> None:
        """Touch summary.json every HEARTBEAT_S seconds from a daemon thread, so that a reader on
        another host can tell a live run (recent) from one whose process died (stale)."""
        stop = self._beat = threading.Event()
        path = self.run_dir / SUMMARY_FILE

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                try:
                    os.utime(path)
                except OSError:
                    pass

        threading.Thread(target=beat, name="gradclip-heartbeat", daemon=True).start()


# -- reading --------------------------------------------------------------------------------------


def remedy(run_dir: Path) -> str:
    """What to do about a record that cannot be used as it is."""
    return f"rerun=true trains this run again, or delete {run_dir}"


def _read_text(path: Path) -> str | None:
    """A record file's text, None if it does not exist; RecordError if it cannot be read."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"{path} cannot be read ({getattr(error, 'strerror', None) or error}): "
                          f"{remedy(path.parent)}") from None


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary, or None if it has none (yet). A summary that cannot be parsed raises
    RecordError naming the file and the remedy."""
    path = Path(run_dir) / SUMMARY_FILE
    text = _read_text(path)
    if text is None:
        return None
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as error:
        what = "is empty" if not text.strip() else f"is not valid JSON ({error})"
        raise RecordError(f"{path} {what}: {remedy(Path(run_dir))}") from None
    if not isinstance(summary, dict):
        raise RecordError(f"{path} holds a {type(summary).__name__}, not a run summary: {remedy(Path(run_dir))}")
    return summary


def read_config(run_dir: Path) -> dict | None:
    """The run's resolved config, or None if it has none (a job stopped by bad input). A config
    that cannot be parsed raises RecordError naming the file and the remedy."""
    path = Path(run_dir) / CONFIG_FILE
    text = _read_text(path)
    if text is None:
        return None
    try:
        config = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as error:
        raise RecordError(f"{path} is not valid YAML ({str(error).splitlines()[0]}): {remedy(Path(run_dir))}") from None
    if not isinstance(config, dict):
        raise RecordError(f"{path} holds no config: {remedy(Path(run_dir))}")
    return config


@dataclass
class RunState:
    """What a run directory holds, as a reader should take it: ``status`` is one of STATUSES
    (a ``running`` record whose process is gone reads ``interrupted``), ``reason`` says why in
    words ("" for a completed run)."""

    status: str
    reason: str
    summary: dict
    config: dict | None
    corrupt: bool = False  # summary.json or config.yaml cannot be parsed

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def run_state(run_dir: Path) -> RunState:
    """Read a run directory whatever a fault left in it; never raises for a bad record."""
    run_dir = Path(run_dir)
    try:
        summary = read_summary(run_dir)
    except RecordError as error:
        return RunState("failed", f"corrupt record: {error}", {}, None, corrupt=True)
    try:
        config = read_config(run_dir)
    except RecordError as error:
        return RunState("failed", f"corrupt record: {error}", summary or {}, None, corrupt=True)
    if summary is None:
        return RunState("failed", f"no {SUMMARY_FILE} in {run_dir}", {}, config)
    status = summary.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        return RunState("failed", f"corrupt record: {run_dir / SUMMARY_FILE} has status {status!r}, not one of "
                        f"{', '.join(STATUSES)}: {remedy(run_dir)}", summary, config, corrupt=True)
    if status == "running" and not isinstance(summary.get("process"), dict):
        return RunState("failed", f"corrupt record: {run_dir / SUMMARY_FILE} says running but names no process: "
                        f"{remedy(run_dir)}", summary, config, corrupt=True)
    if not isinstance(summary.get("process", {}), dict):
        summary = summary | {"process": {}}
    if status == "running":
        alive, why = _liveness(run_dir, summary)
        return RunState("running" if alive else "interrupted", why, summary, config)
    return RunState(status, summary_reason(summary), summary, config)


# Where a summary says why it has its status.
REASON_KEYS = {"failed": "error", "diverged": "diverged_reason", "interrupted": "interrupted_reason"}


def summary_reason(summary: Mapping) -> str:
    """Why a recorded run has its status, in words ("" for a completed run)."""
    if summary.get("bad_input"):
        return f"bad input: {summary.get('error')}"
    key = REASON_KEYS.get(summary.get("status"))
    return str(summary.get(key) or "") if key else ""


def _liveness(run_dir: Path, summary: Mapping) -> tuple[bool, str]:
    """Whether a ``running`` record's process is alive, and the reason in words."""
    identity = summary.get("process") or {}
    who = f"process {identity.get('pid')} on {identity.get('host')}"
    try:
        age = time.time() - (run_dir / SUMMARY_FILE).stat().st_mtime
    except OSError:
        age = math.inf
    alive = process_alive(identity)
    if alive is None:  # another host or PID namespace (or an old record): the heartbeat decides
        alive = age < HEARTBEAT_STALE_S
    if alive:
        return True, f"{who} is writing it (last write {age:.0f} s ago)"
    return False, (f"{who} died without a word (SIGKILL, out of memory, a power cut) "
                   f"{age:.0f} s after its last write; a relaunch trains it again")


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
    """Rows of a JSON-lines file. A line that is not a JSON object (half a row from a killed
    job, a damaged file) is skipped with a warning naming the file and the line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        log.warning("%s cannot be read (%s); its rows are left out", path, error)
        return []
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            log.warning("%s line %d is not a whole row (a write was cut off?); skipped", path, number)
            continue
        rows.append(row)
    return rows


def _pandas():
    import pandas

    return pandas


def runs_frame(run_configs: list[dict], summaries: list[dict], run_ids: list[str],
               reasons: list[str] | None = None) -> pd.DataFrame:
    """One row per run: ``run_id``, ``reason`` (why the run has its status, in words), the
    config flattened with dots (``clip.threshold``) and the summary under ``summary.``."""
    rows = []
    reasons = reasons if reasons is not None else [""] * len(run_ids)
    for run_id, config, summary, reason in zip(run_ids, run_configs, summaries, reasons, strict=True):
        row = {"run_id": run_id, "reason": reason}
        flatten(config, "", row)
        flatten(summary, "summary", row)
        rows.append(row)
    return _pandas().DataFrame(rows, columns=None if rows else ["run_id", "reason", "summary.status"])


def metrics_frame(histories: Iterable[tuple[str, list[dict]]]) -> pd.DataFrame:
    """Per-step metrics in long form: run_id, step, metric, value (one row per number)."""
    records = []
    for run_id, rows in histories:
        for row in rows:
            step = row.get("step")
            if not isinstance(step, int) or isinstance(step, bool):  # not a row of ours
                continue
            for key, value in row.items():
                if key == "step" or key.startswith("_") or not isinstance(value, (int, float)):
                    continue
                records.append((run_id, step, key, float(value)))
    frame = _pandas().DataFrame.from_records(records, columns=["run_id", "step", "metric", "value"])
    return frame.astype({"step": "int64", "value": "float64"})


def load_runs(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read local run records into (runs, metrics) frames.

    ``sources``: run or sweep directories, or glob patterns (``runs/stability/**``). ``run_id``
    is the run directory's path, which is unique and lets a figure find the raw files.
    Any folder the runner can leave behind loads: ``summary.status`` is the status as a reader
    should take it (:func:`run_state`: a dead ``running`` run reads ``interrupted``, a corrupt
    record ``failed``), ``reason`` says why; a job stopped by bad input has no config columns.
    """
    run_dirs = find_run_dirs(sources)
    configs, summaries, ids, reasons = [], [], [], []
    for run_dir in run_dirs:
        state = run_state(run_dir)
        configs.append(state.config or {})
        summaries.append(state.summary | {"status": state.status})
        ids.append(str(run_dir))
        reasons.append(state.reason)
    runs = runs_frame(configs, summaries, ids, reasons)
    metrics = metrics_frame((i, _read_jsonl(d / METRICS_FILE)) for i, d in zip(ids, run_dirs))
    return runs, metrics


def load_units(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's units.jsonl in long form: step, lr, param, unit, weight_norm, step_norm."""
    records = []
    for row in _read_jsonl(Path(run_dir) / UNITS_FILE):
        for param, norms in row["units"].items():
            for unit, (w, d) in enumerate(zip(norms["weight_norm"], norms["step_norm"], strict=True)):
                records.append((row["step"], row["lr"], param, unit, w, d))
    return _pandas().DataFrame.from_records(records, columns=["step", "lr", "param", "unit", "weight_norm", "step_norm"])


def load_theta(run_dir: str | os.PathLike) -> dict[str, dict]:
    """A run's theta.npz as {"initial": {name: array}, "final": ..., "average": ..., "average_late": ...,
    "steps": {"average_from": n, "average_late_from": n}}; raises RecordError, naming the file,
    where it is missing or cannot be read."""
    import zipfile

    import numpy as np

    path = Path(run_dir) / THETA_FILE
    try:
        with np.load(path) as arrays:
            found: dict[str, dict] = {"initial": {}, "final": {}, "average": {}, "average_late": {}, "steps": {}}
            for key in arrays.files:
                group, _, name = key.partition("/")
                found[group][name] = int(arrays[key]) if group == "steps" else arrays[key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise RecordError(f"{path}: cannot be read ({type(error).__name__}: {error}); {remedy(Path(run_dir))}") from None
    return found


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
    summaries = [_clean_summary(r.summary) for r in runs]
    ids = [f"{entity}/{project}/{r.id}" for r in runs]
    reasons = [summary_reason(s) for s in summaries]
    metrics = metrics_frame((i, list(r.scan_history())) for i, r in zip(ids, runs))
    return runs_frame(configs, summaries, ids, reasons), metrics


def _clean_summary(summary) -> dict:
    """W&B's summary as plain dicts, without W&B's own keys (``_runtime``, ...) and NaN. The
    public API hands nested values over as its own SummarySubDict, which is not a Mapping: it
    is turned into a dict here, so that ``summary.final.*`` is flattened like a local record."""
    plain = _plain(summary)
    return {k: v for k, v in plain.items() if not k.startswith("_") and not (isinstance(v, float) and math.isnan(v))}


def _plain(value):
    """Nested dict-like objects (W&B's SummarySubDict: keys() and [] but no Mapping) to dicts."""
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        return {str(k): _plain(value[k]) for k in value.keys()}
    return value
