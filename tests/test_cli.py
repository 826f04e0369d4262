"""The command line a user types: single runs, exit codes, and a real joblib sweep."""

import json
import os
import pty
import re
import select
import signal
import time
from pathlib import Path
import subprocess
import sys

import pytest

from gradclip.records import load_runs

FAST = ["steps=20", "batch_size=16", "log_every=5", "eval_every=0", "progress=false"]


def gradclip_train(*args, cwd):
    env = dict(os.environ, WANDB_MODE="offline", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "gradclip.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def leet_screen(wandb_dir: Path, until: str, seconds: float = 20.0) -> str:
    """What `wandb leet WANDB_DIR` (W&B's terminal UI) draws in a pseudo-terminal, as text, once
    it shows ``until`` (or after ``seconds``)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: W&B's CLI in the venv of this interpreter
        os.execv(str(Path(sys.executable).parent / "wandb"), ["wandb", "leet", str(wandb_dir)])
    screen, deadline = b"", time.monotonic() + seconds

    def text() -> str:  # the screen without its escape sequences
        return re.sub(rb"\x1b\[[0-9;?$>]*[a-zA-Z]", b"", screen).decode(errors="replace")

    try:
        while time.monotonic() < deadline and until not in text():
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    screen += os.read(fd, 1 << 16)
                except OSError:
                    break
    finally:  # the whole group: `wandb leet` draws through a wandb-core child, which a kill of the
        os.killpg(pid, signal.SIGKILL)  # CLI alone left running (pty.fork's child leads its own session)
        os.waitpid(pid, 0)
    return text()


def summaries(root):
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("summary.json")}


def test_single_run_and_a_diverged_run_exit_zero(tmp_path):
    ok = gradclip_train(*FAST, "logger=none", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = gradclip_train(*FAST, "logger=none", "name=blowup", "clip=none", "model=deep_tanh",
                         "schedule=constant", "schedule.a0=50", "steps=200", cwd=tmp_path)
    assert bad.returncode == 0, bad.stderr
    runs = {s["status"]: s for s in summaries(tmp_path / "runs" / "single").values()}
    assert set(runs) == {"completed", "diverged"}
    assert runs["diverged"]["diverged_step"] >= 1


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path):
    result = gradclip_train(*FAST, "logger=none", "clip=agc", "clip.clip_factor=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "gradclip: bad input: clip.clip_factor=-1 is not allowed: must be a finite number > 0")
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("summary.json"))


@pytest.mark.slow
def test_bad_input_in_one_job_of_a_sweep_stops_only_that_job(tmp_path):
    result = gradclip_train("-m", *FAST, "logger=none", "name=mixed", "clip.threshold=1.0,-1", cwd=tmp_path)
    assert result.returncode == 2
    assert "clip.threshold=-1 is not allowed: must be a finite number > 0" in result.stderr
    runs = {("good" if "threshold=1.0" in name else "bad"): s for name, s in summaries(tmp_path / "runs" / "mixed").items()}
    assert runs["good"]["status"] == "completed"
    assert runs["bad"]["status"] == "failed" and runs["bad"]["bad_input"]


@pytest.mark.slow
def test_joblib_sweep_with_wandb_offline_loads_back_and_resumes(tmp_path):
    sweep = ["-m", *FAST, "name=sweeptest", "logger=wandb", "clip=none,norm", "seed=0,1",
             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    first = gradclip_train(*sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    root = tmp_path / "runs" / "sweeptest"
    assert (root / "multirun.yaml").is_file()
    runs, metrics = load_runs(root)
    assert len(runs) == 4 and set(runs["summary.status"]) == {"completed"}
    assert sorted(zip(runs["clip.method"], runs["seed"])) == [("none", 0), ("none", 1), ("norm", 0), ("norm", 1)]
    assert set(metrics.run_id) == set(runs.run_id)
    # One W&B run per job, all in the sweep's own W&B folder, each named by its record.
    offline = sorted(str(p) for p in (root / "wandb").glob("offline-run-*"))
    assert len(offline) == 4 and sorted(runs["summary.wandb"]) == offline
    assert all(len(list(Path(p).glob("run-*.wandb"))) == 1 for p in offline)
    # ... so that W&B's own terminal UI browses the whole sweep, offline
    assert "Runs [4 items]" in leet_screen(root / "wandb", until="Runs [4 items]")
    # Jobs are named by their overrides, so a relaunch finds every finished record.
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}
    os.remove(next(iter(stamps)))  # as if that job had been interrupted
    second = gradclip_train(*sweep, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    after = {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}
    assert set(after) == set(stamps)
    rerun = [p for p in after if after[p] != stamps.get(p)]
    assert rerun == [next(iter(stamps))]  # only the missing job ran again
    assert len(list((root / "wandb").glob("offline-run-*"))) == 5  # its summary was gone: its old W&B files stay
