"""`make reproduce` at smoke scale, end to end: sweeps, tables, every figure and the report."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from script_modules import script

ROOT = Path(__file__).resolve().parents[1]
REPRODUCE, FIGURES_PY = script("reproduce"), script("figures")
FIGURES = ["stability", "increments", "agc_small_weights", "convergence", "step_sizes", "limit_set", "ode_tracking",
           "clipping_bias", "batch_fixed_point", "label_noise", "eq22_network", "batch_network"]
TABLES = ["stability.csv", "increments.csv", "stability_trajectories.csv", "agc_units_step1.csv",
          "agc_unit_ratios.csv", "agc_settings.csv", "convergence.csv", "convergence_summary.csv",
          "step_sizes.csv", "step_sizes_paths.csv", "step_sizes_distance.csv", "limit_set.csv", "ode_paths.csv",
          "ode_gaps.csv", "ode_seed_mean_gaps.csv", "ode_solution.csv", "clipping_bias.csv", "batch_fixed_point.csv",
          "label_noise.csv", "eq22_network.csv", "REPORT.md"]


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """The process has ended (and been reaped, or is a zombie about to be)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.05)
    return False


def _stop_at(command: list[str], began, log: Path) -> str:
    """Launch `command` in the folder of `log`, send SIGTERM once `began()` is true, and check the
    stop: reproduce says where it stopped and exits 128 + SIGTERM, and no process it started
    outlives it."""
    import signal
    import time

    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=log.parent)
    deadline = time.monotonic() + 300  # it never got there: fail, do not hang
    children = set()
    while not began() and proc.poll() is None and time.monotonic() < deadline:
        children |= _children(proc.pid)
        time.sleep(0.02)
    children |= _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    out = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out
    assert "reproduce: stopped by SIGTERM in: " in out
    assert children and all(_gone(pid) for pid in children), "a process reproduce started outlived it"
    return out


@pytest.mark.slow
def test_smoke_reproduce_stopped_twice_then_writes_every_figure_and_the_report(tmp_path, monkeypatch):
    """`make reproduce` at smoke scale, as a user on a cluster meets it: SIGTERM as the first runs
    of its first sweep begin in the worker processes (the sweeps run in reproduce's own process,
    sharing two workers); relaunched, SIGTERM again as it starts building the tables (every
    sweep trained by then); relaunched, it finishes. Each stop: reproduce says where it stopped
    and exits 128 + SIGTERM, no process it started outlives it and every record reads as
    finished or interrupted. The last launch trains nothing and writes every table, figure and
    the report. (One test: the three launches cost about one plain run and the stops.)"""
    from gradclip.records import run_state

    runs, results, figures = tmp_path / "runs", tmp_path / "results", tmp_path / "figures"
    # --logger none: W&B (tested in test_cli.py, test_tracking.py and test_faults.py) would cost
    # every run its own W&B run. Launched in tmp_path, with its folders named relative to it.
    command = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--scale", "smoke", "--logger", "none",
               "--workers", "2", "--runs", "runs", "--results", "results", "--figures", "figures"]

    def states() -> set[str]:
        return {run_state(summary.parent).status for summary in runs.rglob("summary.json")}

    _stop_at(command, lambda: list(runs.glob("stability/*/summary.json")), tmp_path / "training.log")
    assert states() and states() <= {"completed", "diverged", "interrupted"}
    log = tmp_path / "tables.log"
    _stop_at(command, lambda: "figures.py collect" in log.read_text(), log)
    assert states() <= {"completed", "diverged"}  # the tables began: every run had ended
    assert not figures.exists() or not list(figures.iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("summary.json")}
    last = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    # Nothing trained again: every sweep found each job's finished record, and said so.
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("summary.json")} == stamps
    skipped = re.findall(r"gradclip: sweep .*: (\d+) jobs?: (\d+) already finished \(skipped\)$", last.stderr, re.M)
    assert len(skipped) == 19 and all(total == done for total, done in skipped), last.stderr[-3000:]
    # Every figure and nothing else: reproduce runs `figures.py plot all` (`make figures`), which
    # reads the tables alone, in a process of its own.
    assert sorted(p.name for p in figures.iterdir()) == sorted(f"{n}{s}" for n in FIGURES for s in (".png", ".pdf"))
    for name in FIGURES:
        for suffix in (".png", ".pdf"):
            assert (figures / f"{name}{suffix}").stat().st_size > 1000
    # figures.py in one process (this one: its main, as the command line calls it): the tables
    # two processes wrote (--jobs 2, reproduce's two workers, one experiment each), byte for
    # byte, and both figures of an experiment that has two.
    again, redrawn = tmp_path / "again", tmp_path / "redrawn"
    for argv in (["collect", "ode_tracking", "--runs", str(runs), "--results", str(again), "--jobs", "1"],
                 ["plot", "stability", "--results", str(results), "--figures", str(redrawn), "--jobs", "1"]):
        monkeypatch.setattr(sys, "argv", ["figures.py", *argv])
        FIGURES_PY.main()
    assert sorted(p.name for p in again.iterdir()) == ["ode_gaps.csv", "ode_paths.csv", "ode_seed_mean_gaps.csv",
                                                       "ode_solution.csv"]
    for table in again.iterdir():
        assert table.read_bytes() == (results / table.name).read_bytes(), table.name
    assert sorted(p.name for p in redrawn.iterdir()) == ["increments.pdf", "increments.png", "stability.pdf",
                                                         "stability.png"]
    for name in TABLES:
        if name.endswith(".csv"):
            assert len(pd.read_csv(results / name)) > 0, name
    report = (results / "REPORT.md").read_text()
    for number in range(1, 13):  # predictions 1-7, the bias (8), the batch fixed point (9), label noise (10), eq. 22
        # on a network (11) and batch clipping there (12)
        assert f"## {number}. " in report
        section = report.split(f"## {number}. ")[1].split("\n## ")[0]
        assert "**Verdict: " in section, f"section {number} has no verdict"
    increments = report.split("## 1. ")[1].split("## 2. ")[0]
    assert increments.splitlines()[2].startswith("**Verdict: holds.**")  # bounded increments hold at any scale
    # It says how far it got, and keeps for the time-left estimate of the next run the time of
    # each sweep of an experiment trained whole in one launch (all but stability, stopped in its
    # first sweep) and of the tables.
    assert "reproduce: sweep 19 of 19 (eq22_network)" in last.stdout
    # (stability's first sweep is timed too if the first SIGTERM came just after it ended)
    timing = json.loads((runs / "reproduce_timing.json").read_text())
    keys = [" ".join([name, *overrides]) for name, sweeps in REPRODUCE.EXPERIMENTS.items() for overrides in sweeps("smoke")]
    whole = {key for key in keys if not key.startswith("stability ")} | {REPRODUCE.TABLES_KEY}
    assert len(keys) == 19 and whole <= set(timing) <= whole | {keys[0]}, timing
    assert all(seconds > 0 for seconds in timing.values())
