"""Faults, tried as a user meets them: signals to real runs and sweeps, a full disk, corrupt and
stale records, dead processes, non-finite or unknown settings, W&B without a server. Each test
asserts the status, the exit code, the message, and that every earlier record is intact."""

import errno
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import hydra._internal.utils as hydra_utils
import pytest

from gradclip import interrupts, records, sweep
from gradclip.checks import ConfigError
from gradclip.records import RecordError, load_runs, run_state
from gradclip.runner import train
from gradclip.train import main

FAST = ["batch_size=16", "log_every=5", "eval_every=0", "progress=false", "logger=none"]
JOB = "batch_size=16,eval_every=0,log_every=5,"  # how a sweep job's folder name starts, with FAST


def launch(*args, cwd, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradclip.train", *args], cwd=cwd, text=True,
                            env=dict(os.environ, HYDRA_FULL_ERROR="0", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_rows(folder: Path, pattern: str, timeout: float = 120) -> Path:
    """The first metrics.jsonl under ``folder`` matching ``pattern`` once it holds a row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in folder.glob(pattern):
            if path.stat().st_size > 0:
                return path
        time.sleep(0.05)
    raise AssertionError(f"no rows under {folder}/{pattern} after {timeout} s")


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def cfg(make_cfg):
    """The tiny test config without full-data evaluation: these tests are about records."""
    return lambda *overrides: make_cfg("eval_every=0", *overrides)


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


def signal_sweep(tmp_path: Path, signum: int, *overrides: str) -> tuple[int, str, Path]:
    """A sweep of runs that never end on their own (``overrides`` name its seeds and launcher):
    once seeds 0 and 1 log rows, ``signum`` goes to the sweep's own process alone. Returns the
    exit code, stderr (checked to hold no traceback) and the sweep's folder."""
    proc = launch("-m", *FAST, "steps=1000000", "name=pool", *overrides, cwd=tmp_path)
    root = tmp_path / "runs" / "pool"
    wait_for_rows(root, "*seed=0*/metrics.jsonl")
    wait_for_rows(root, "*seed=1*/metrics.jsonl")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    no_traceback(err)
    return proc.returncode, err, root


# -- signals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_a_stop_signal_ends_a_run_at_a_step_boundary_as_interrupted(tmp_path, signum):
    """What SLURM sends before it kills a job (SIGTERM, or the --signal of a cluster: SIGUSR2):
    the record says interrupted, with the step reached, its rows whole; one line, exit 128 +
    signal; nothing of W&B is imported or left in TMPDIR."""
    (tmp_path / "tmp").mkdir()
    proc = launch(*FAST, "steps=1000000", "name=term", cwd=tmp_path, TMPDIR=str(tmp_path / "tmp"))
    metrics = wait_for_rows(tmp_path / "runs" / "single" / "term", "*/metrics.jsonl")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    no_traceback(err)
    run_dir = metrics.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["finished_at"]
    step = summary["steps_completed"]
    assert summary["interrupted_reason"] == f"{signum.name} after step {step} of 1000000"
    assert rows(run_dir)[-1]["step"] == step  # the step reached has its row, and every row is whole
    assert err.strip().splitlines() == [f"gradclip: interrupted by {signum.name} after step {step} of 1000000; "
                                        f"recorded in {run_dir / 'summary.json'}"]
    assert run_state(run_dir).status == "interrupted"
    assert not list((tmp_path / "tmp").glob("*wandb*"))  # logger=none: no wandb-* temporary folders
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".summary")]


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_which_reports_and_a_relaunch_finishes_it(tmp_path):
    """SIGINT to a sweep run by the default launcher (two populations: the step counts differ):
    the running job ends interrupted, the other does not start, the report counts both, exit
    130; the same command then trains what is missing (the interrupted run afresh) and exits 0."""
    mirrored = [a for a in FAST if a != "logger=none"] + ["logger=wandb"]  # W&B offline
    command = [sys.executable, "-m", "gradclip.train", "-m", *mirrored, "steps=1500,40", "seed=0", "name=ctrlc"]
    proc = subprocess.Popen(command, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = tmp_path / "runs" / "ctrlc"
    wait_for_rows(root, "*steps=1500/metrics.jsonl")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    no_traceback(err)
    long_run = root / f"{JOB}seed=0,steps=1500"
    assert json.loads((long_run / "summary.json").read_text())["status"] == "interrupted"
    assert not (root / f"{JOB}seed=0,steps=40" / "summary.json").exists()  # never launched
    assert "gradclip: sweep runs/ctrlc: stopped by SIGINT; 2 jobs: 1 interrupted, 1 not started" in err
    assert "not started: " + f"{JOB}seed=0,steps=40: SIGINT before its population began" in err
    # its W&B run was finished too, with the run's exit code and status (W&B's own reader)
    wandb_run = json.loads((long_run / "summary.json").read_text())["wandb"]
    state = json.loads(subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary",
                                       "--json", wandb_run], capture_output=True, text=True, check=True).stdout)
    assert state["exit_code"] == 130, state  # W&B calls a run that ends non-zero "failed"
    assert state["summary"]["status"] == "interrupted"
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert {d.name: run_state(d).status for d in root.iterdir() if d.name.startswith(JOB)} == {
        f"{JOB}seed=0,steps=1500": "completed", f"{JOB}seed=0,steps=40": "completed"}
    assert "2 jobs: 2 completed" in again.stderr


@pytest.mark.slow
def test_a_second_sweep_into_a_running_sweeps_folder_stops_at_once_and_harms_nothing(tmp_path):
    """Two sweeps into one folder would share one journal (each clears it when it starts), and
    the first's report would count the second's jobs. The second stops before any work with one
    line naming the folder and the running sweep's process, exit 1; the first goes on, and its
    report counts its own jobs only."""
    proc = launch("-m", *FAST, "steps=1000000", "name=pool", "seed=0,1", cwd=tmp_path)
    root = tmp_path / "runs" / "pool"
    wait_for_rows(root, "*seed=0*/metrics.jsonl")
    second = subprocess.run([sys.executable, "-m", "gradclip.train", "-m", *FAST, "steps=5", "name=pool", "seed=7"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"gradclip: runs/pool is the folder of a sweep that is still running (process {proc.pid} on "
        f"{socket.gethostname()}, holding runs/pool/.sweep/launch.lock): its report would be wrong if this "
        "one shared it; wait for it, or give this sweep another name= or hydra.sweep.dir="]
    assert not list(root.glob("*seed=7*"))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    no_traceback(err)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; 2 jobs: " in err, err  # (once it has ended, a relaunch may use the
    # folder: test_ctrl_c_stops_a_sweep_which_reports_and_a_relaunch_finishes_it)


@pytest.mark.slow
def test_a_signal_to_a_joblib_sweep_stops_its_workers_too(tmp_path):
    """SIGUSR1 (a cluster's warning signal) to the sweep's parent process alone: it is passed on
    to the loky workers, whose runs end interrupted; the report comes, exit 128 + SIGUSR1."""
    code, err, root = signal_sweep(tmp_path, signal.SIGUSR1, "seed=0,1,2,3", "hydra/launcher=joblib",
                                   "hydra.launcher.n_jobs=2")
    assert code == 128 + signal.SIGUSR1
    assert "UserWarning" not in err
    statuses = {d.name: run_state(d).status for d in root.iterdir() if (d / "summary.json").exists()}
    assert statuses == {f"{JOB}seed=0,steps=1000000": "interrupted", f"{JOB}seed=1,steps=1000000": "interrupted"}
    assert "stopped by SIGUSR1; 2 jobs: 2 interrupted" in err


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_of_a_joblib_sweep_reaches_every_process(tmp_path):
    """Ctrl-C sends SIGINT to the terminal's whole process group: the parent, its loky workers
    (and their resource trackers, which ignore it). Each worker's run ends interrupted, the
    parent reports, exit 130, and no traceback or warning is printed."""
    proc = subprocess.Popen([sys.executable, "-m", "gradclip.train", "-m", *FAST, "steps=1000000", "seed=0,1,2",
                             "name=group", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], cwd=tmp_path,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    root = tmp_path / "runs" / "group"
    wait_for_rows(root, "*seed=0*/metrics.jsonl")
    wait_for_rows(root, "*seed=1*/metrics.jsonl")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    no_traceback(err)
    assert "UserWarning" not in err and "stopped by SIGINT; 2 jobs: 2 interrupted" in err
    assert {run_state(d).status for d in root.glob(f"{JOB}seed=[01]*")} == {"interrupted"}
    assert not (root / f"{JOB}seed=2,steps=1000000" / "summary.json").exists()


@pytest.mark.slow
def test_a_run_killed_without_a_word_reads_interrupted_and_trains_again(tmp_path, capsys):
    """SIGKILL (or a power cut): the summary still says running, but its process is gone;
    load_runs and a relaunch's record check tell it from a live run."""
    proc = launch("-m", *FAST, "steps=1000000", "seed=0", "name=killed", cwd=tmp_path)
    root = tmp_path / "runs" / "killed"
    metrics = wait_for_rows(root, "*/metrics.jsonl")
    state = run_state(metrics.parent)
    assert state.status == "running" and "is writing it" in state.reason  # alive: not to be touched
    proc.kill()
    proc.communicate(timeout=60)
    assert json.loads((metrics.parent / "summary.json").read_text())["status"] == "running"
    runs, _ = load_runs(root)
    assert list(runs["summary.status"]) == ["interrupted"]
    assert "died without a word" in runs["reason"].iloc[0]
    # the sweep's report (what its parent prints at the end) counts it as interrupted too
    assert sweep.report(root) == 1
    assert "1 job: 1 interrupted" in capsys.readouterr().err
    # and the same command trains it again, in the same folder: a new attempt by a new process
    relaunch = launch("-m", *FAST, "steps=1000000", "seed=0", "name=killed", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while run_state(metrics.parent).summary.get("process", {}).get("pid") != relaunch.pid:
        assert time.monotonic() < deadline and relaunch.poll() is None
        time.sleep(0.05)
    assert run_state(metrics.parent).status == "running"
    relaunch.send_signal(signal.SIGTERM)
    relaunch.communicate(timeout=60)
    assert run_state(metrics.parent).status == "interrupted"


# -- full disk, write errors -------------------------------------------------------------------------


def full_disk_after(monkeypatch, budget: int) -> None:
    """Let new files take ``budget`` more bytes, then fail as a full disk does: part of a write
    first, then ENOSPC. An existing file can be rewritten within the blocks it already holds,
    and no further."""
    real_write, real_open = os.write, os.open
    left, room = {"bytes": budget}, {}  # room: fd of an existing file -> bytes it may still take

    def open_(path, flags, mode=0o777, **kwargs):
        if flags & os.O_CREAT and left["bytes"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        fd = real_open(path, flags, mode, **kwargs)
        if flags & os.O_CREAT:
            room.pop(fd, None)
        else:
            room[fd] = os.fstat(fd).st_blocks * 512
        return fd

    def write(fd, data):
        limit = room.get(fd, left["bytes"])
        if limit <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[:limit]))
        if fd in room:
            room[fd] -= n
        else:
            left["bytes"] -= n
        return n

    monkeypatch.setattr(records.os, "write", write)
    monkeypatch.setattr(records.os, "open", open_)


def test_a_full_disk_records_the_run_as_failed_with_whole_rows(cfg, tmp_path, monkeypatch):
    train(cfg("clip=norm"), tmp_path / "earlier")
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "earlier").iterdir()}
    full_disk_after(monkeypatch, 6000)  # the disk fills in the middle of a row
    summary = train(cfg("clip=norm", "steps=400", "log_every=1"), tmp_path / "run")
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    assert summary["status"] == "failed"
    assert summary["error"] == f"cannot write {run_dir / 'metrics.jsonl'}: No space left on device"
    assert "traceback" not in summary and "summary_write_error" not in summary
    saved = json.loads((run_dir / "summary.json").read_text())  # written in place: no space for a copy
    assert saved["status"] == "failed" and saved["error"] == summary["error"]
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())  # no half row
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "metrics.jsonl", "summary.json"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "earlier").iterdir()} == earlier


def test_a_full_disk_keeps_the_essentials_of_a_summary_too_big_to_rewrite(cfg, tmp_path, monkeypatch):
    """The disk fills after the last row: the final summary (61 logged parameters make it larger
    than the blocks the first one holds) cannot be rewritten in place; its essentials are."""
    close_rows = records.RunRecorder.close_rows

    def close_rows_then_fill(self):
        close_rows(self)
        full_disk_after(monkeypatch, 0)

    monkeypatch.setattr(records.RunRecorder, "close_rows", close_rows_then_fill)
    summary = train(cfg("model=linear", "data=linreg", "data.dim=60", "model.bias=true", "log_theta=true",
                        "steps=20"), tmp_path)
    monkeypatch.undo()
    assert len(json.dumps(summary, indent=2)) > (tmp_path / "summary.json").stat().st_blocks * 512
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == saved["status"] == "completed" and saved["truncated"] is True
    assert saved["steps_completed"] == 20 and {"finished_at", "process"} <= set(saved)
    assert "initial_theta" not in saved and "summary_write_error" not in summary
    assert run_state(tmp_path).status == "completed"


@pytest.mark.slow
def test_a_write_error_in_a_sweep_fails_that_job_and_the_sweep_goes_on(tmp_path):
    """A real OS write error in a real sweep: a file size limit (RLIMIT_FSIZE, EFBIG) that each
    job's metrics.jsonl outgrows. Every job is recorded failed, naming the file; the sweep runs
    them all, reports, and exits 1."""
    limit = 20_000  # bytes: the summaries and configs fit, a few hundred rows do not
    result = subprocess.run(
        [sys.executable, "-m", "gradclip.train", "-m", *FAST, "log_every=1", "steps=400", "seed=0,1", "name=efbig"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert result.returncode == 1
    no_traceback(result.stderr)
    root = tmp_path / "runs" / "efbig"
    for seed in (0, 1):
        run_dir = root / f"{JOB.replace('log_every=5', 'log_every=1')}seed={seed},steps=400"
        state = run_state(run_dir)
        assert state.status == "failed" and state.reason == f"cannot write {run_dir / 'metrics.jsonl'}: File too large"
        assert all(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
        assert not list(run_dir.glob(".*.tmp"))
    assert "gradclip: sweep runs/efbig: 2 jobs: 2 failed" in result.stderr


def test_a_write_error_reported_only_at_close_fails_the_run(cfg, tmp_path, monkeypatch):
    """Network file systems report quota and full-disk errors at fsync/close: the rows are closed
    before the final summary, so such a run is recorded failed, never completed."""
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real_fsync(fd)

    monkeypatch.setattr(records.os, "fsync", fsync)
    summary = train(cfg("clip=norm"), tmp_path)
    monkeypatch.undo()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == saved["status"] == "failed"
    assert saved["error"] == f"cannot write {tmp_path / 'metrics.jsonl'}: Disk quota exceeded"


def test_when_not_even_the_summary_can_be_written_the_run_says_so(cfg, tmp_path, monkeypatch):
    real_replace = os.replace
    train_cfg = cfg("clip=norm")

    def no_summary(src, dst):
        if str(dst).endswith("summary.json") and json.loads(Path(src).read_text())["status"] != "running":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(records.os, "replace", no_summary)
    summary = train(train_cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["summary_write_error"] == f"cannot write {tmp_path / 'summary.json'}: Read-only file system"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    monkeypatch.undo()
    # on disk the run still reads 'running' from a live process (this one); once its process is
    # gone it reads interrupted, and a relaunch trains it again
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "running"


def test_summary_has_the_mode_of_the_other_record_files(cfg, tmp_path):
    previous = os.umask(0o022)  # the usual umask: every record file then reads 0644
    try:
        train(cfg("clip=agc", "unit_log_every=10"), tmp_path)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert set(modes) == {"config.yaml", "metrics.jsonl", "summary.json", "units.jsonl"}
    assert len(set(modes.values())) == 1 and modes["summary.json"] & 0o044 == 0o044  # others can read


# -- corrupt, stale and live records -----------------------------------------------------------------


@pytest.mark.parametrize("content, words", [("", "is empty"), ('{"status": "compl', "is not valid JSON"),
                                            ("[1, 2]", "holds a list")])
def test_a_corrupt_summary_is_one_error_naming_the_file_and_the_remedy(cfg, tmp_path, content, words):
    train(cfg("clip=norm"), tmp_path)
    (tmp_path / "summary.json").write_text(content)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RecordError) as error:
        train(cfg("clip=norm"), tmp_path)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and str(tmp_path / "summary.json") in message and words in message
    assert message.endswith(f"rerun=true trains this run again, or delete {tmp_path}")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    assert train(cfg("clip=norm", "rerun=true"), tmp_path)["status"] == "completed"


def test_a_temporary_file_left_by_a_killed_write_goes_with_the_next_attempt(cfg, tmp_path):
    train(cfg("clip=norm"), tmp_path)
    (tmp_path / ".summary.json.4242-0badc0de.tmp").write_text('{"status": "comp')  # SIGKILL mid-write
    train(cfg("clip=norm", "rerun=true"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "metrics.jsonl", "summary.json"]


def test_a_corrupt_config_of_a_finished_run_is_an_error_too(cfg, tmp_path):
    train(cfg("clip=norm"), tmp_path)
    (tmp_path / "config.yaml").write_text("clip: [norm\n")
    with pytest.raises(RecordError, match=r"config.yaml is not valid YAML .*rerun=true"):
        train(cfg("clip=norm"), tmp_path)


def test_a_record_a_live_process_writes_is_never_touched(cfg, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.joinpath("summary.json").write_text(json.dumps(
            {"status": "running", "process": records._proc_start(sleeper.pid) | {
                "host": socket.gethostname(), "pid": sleeper.pid}}))
        for rerun in ("false", "true"):
            with pytest.raises(RecordError, match=r"is being written by a live process .*not starting a second copy"):
                train(cfg("clip=norm", f"rerun={rerun}"), tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run_state(tmp_path).status == "interrupted"  # its process is gone now
    assert train(cfg("clip=norm"), tmp_path)["status"] == "completed"


@pytest.mark.parametrize("where", ["another host", "another PID namespace", "an earlier boot"])
def test_a_record_this_process_cannot_check_is_judged_by_its_heartbeat(tmp_path, where):
    """Another host, or a container with this host name but its own PIDs: the heartbeat (the
    summary's age) decides. A record of an earlier boot of this host is dead at once."""
    mine = records.process_identity()
    writer = {"another host": {"host": "node-7", "pid": 1},
              "another PID namespace": mine | {"pid_ns": mine["pid_ns"] + 1},
              "an earlier boot": mine | {"boot_id": "an-earlier-boot"}}[where]
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running", "process": writer}))
    assert run_state(tmp_path).status == ("interrupted" if where == "an earlier boot" else "running")
    old = time.time() - records.HEARTBEAT_STALE_S - 1
    os.utime(tmp_path / "summary.json", (old, old))
    state = run_state(tmp_path)
    assert state.status == "interrupted" and f"process {writer['pid']} on {writer['host']} died without a word" in state.reason


@pytest.mark.slow
def test_a_sweep_with_bad_input_a_stale_and_a_corrupt_record_goes_on_and_exits_2(make_cfg, tmp_path):
    """One launch, four jobs: a stale finished record of another config (bad input), a corrupt
    summary (failed), a bad value (bad input), a good job. The good one trains, no record
    already written changes, the report names each problem, the exit code is 2."""
    root = tmp_path / "runs" / "mixed"
    stale, corrupt = root / f"{JOB}seed=0,steps=10", root / f"{JOB}seed=1,steps=10"
    # what the sweep's jobs would compose, but with another clip.eps, as if the default had changed
    train(make_cfg(*FAST, "steps=10", "seed=0", "name=mixed", "clip.eps=0.5", tiny=False), stale)
    train(make_cfg(*FAST, "steps=10", "seed=1", "name=mixed", tiny=False), corrupt)
    (corrupt / "summary.json").write_text("")
    before = {p: p.read_bytes() for d in (stale, corrupt) for p in d.iterdir()}
    command = [sys.executable, "-m", "gradclip.train", "-m", *FAST, "steps=10", "name=mixed", "seed=0,1,2,-1"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    no_traceback(result.stderr)
    assert {p: p.read_bytes() for p in before} == before
    assert run_state(root / f"{JOB}seed=2,steps=10").status == "completed"
    bad = run_state(root / f"{JOB}seed=-1,steps=10")
    assert bad.status == "failed" and bad.reason.startswith("bad input: cfg.seed=-1 is not allowed")
    err = result.stderr
    assert "gradclip: sweep runs/mixed: 4 jobs: 1 completed, 1 failed, 2 bad input" in err
    assert (f"  bad input: {JOB}seed=0,steps=10: {stale} holds a finished run of another config (differing keys: "
            "clip.eps)") in err
    assert f"  failed: {JOB}seed=1,steps=10: {corrupt / 'summary.json'} is empty" in err
    assert f"  bad input: {JOB}seed=-1,steps=10: cfg.seed=-1 is not allowed" in err


# -- loading whatever is on disk ---------------------------------------------------------------------


def test_load_runs_reads_every_state_a_fault_can_leave(cfg, tmp_path, caplog):
    root = tmp_path / "sweep"
    train(cfg("clip=norm"), root / "done")
    train(cfg("clip=norm"), root / "half-row")
    half = root / "half-row" / "metrics.jsonl"  # a cut-off row, then more rows
    lines = half.read_text().splitlines()
    half.write_text("\n".join(lines[:2] + [lines[2][:17]] + lines[3:]) + "\n")
    (root / "bad").mkdir()
    (root / "bad" / "summary.json").write_text(json.dumps({"status": "failed", "bad_input": True,
                                                           "error": "clip.threshold=-1 is not allowed"}))
    train(cfg("clip=norm"), root / "corrupt")
    (root / "corrupt" / "summary.json").write_text("{")
    train(cfg("clip=norm"), root / "dead")
    summary = json.loads((root / "dead" / "summary.json").read_text())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    summary |= {"status": "running", "process": summary["process"] | {"pid": gone.pid}}  # this boot, pid gone
    (root / "dead" / "summary.json").write_text(json.dumps(summary))
    runs, metrics = load_runs(root)
    got = {Path(r).name: (s, reason) for r, s, reason in zip(runs.run_id, runs["summary.status"], runs.reason)}
    assert {name: s for name, (s, _) in got.items()} == {
        "bad": "failed", "corrupt": "failed", "dead": "interrupted", "done": "completed", "half-row": "completed"}
    assert got["bad"][1] == "bad input: clip.threshold=-1 is not allowed"
    assert got["corrupt"][1].startswith(f"corrupt record: {root / 'corrupt' / 'summary.json'} is not valid JSON")
    assert "died without a word" in got["dead"][1]
    assert f"{root / 'half-row' / 'metrics.jsonl'} line 3 is not a whole row" in caplog.text
    per_run = metrics.groupby(metrics.run_id.map(lambda r: Path(r).name)).size()
    assert per_run["half-row"] == per_run["done"] - (len(rows(root / "done")[2]) - 1)
    assert runs.loc[runs.run_id.str.endswith("bad"), "clip.method"].isna().all()  # no config: no config columns


# -- input values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["schedule.a0=inf"], r"schedule.a0=inf is not allowed: must be a finite number > 0"),
        (["schedule.a0=nan"], r"schedule.a0=nan is not allowed: must be a finite number > 0"),
        (["weight_decay=inf"], r"weight_decay=inf .* finite number >= 0"),
        (["momentum=nan"], r"momentum=nan .* finite number in \[0, 1\)"),
        (["clip.eps=inf"], r"clip.eps=inf .* finite number >= 0"),
        (["clip.threshold=-inf"], r"clip.threshold=-inf .* finite number > 0"),
        (["clip=agc", "clip.clip_factor=inf"], r"clip.clip_factor=inf .* finite number > 0"),
        (["schedule.power=inf"], r"schedule.power=inf .* finite number in \[0, 10\]"),
        (["schedule.power=200"], r"schedule.power=200 .* finite number in \[0, 10\]"),
        (["schedule.n0=inf"], r"schedule.n0=inf .* finite number > 0"),
        (["divergence.max_norm=inf"], r"divergence.max_norm=inf .* finite number > 0"),
        (["schedule=step", "schedule.gamma=1e-300", "schedule.step_size=1"],
         r"schedule.a0=0.1, schedule.gamma=1e-300, schedule.step_size=1 gives a\(29\) = 0.0 with steps=30"),
        (["schedule.a0=1e300", "schedule.n0=1e-300", "schedule.power=2"], r"gives a\(0\) = nan"),
        (["+clip.thresh=1"], r"clip.thresh is not a key of clip.method=norm; known keys: method, granularity, "
                             r"threshold, eps"),
        (["+schedule.p=1"], r"schedule.p is not a key of schedule.name=robbins_monro; known keys: name, a0, power, n0"),
        (["+stpes=10"], r"cfg.stpes is not a key of configs/train.yaml; known keys: name, output_root, seed"),
        (["+divergence.max=1"], r"divergence.max is not a key; known keys: max_norm"),
        (["+logger.projet=x"], r"logger.projet is not a key of logger.name=none; known keys: name"),
        (["logger=wandb", "logger.mode=sync"], r"logger.mode='sync' is not one of: offline, online, disabled"),
        (["deterministic=maybe"], r"deterministic='maybe' is not one of: True, False"),
        (["schedule.a0=${oops}"], r"the config cannot be resolved: Interpolation key 'oops' not found \(key schedule.a0\)"),
    ],
)
def test_every_setting_is_finite_known_and_in_range_before_any_work(cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(cfg(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def in_process_main(monkeypatch):
    """gradclip.train.main run in this process, with what it changes process-wide put back:
    pytest keeps its own Ctrl-C handler, the logging flag and Hydra's error reporting."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(interrupts, "install", lambda on_signal=None: True)
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    monkeypatch.setattr(hydra_utils, "run_and_report", hydra_utils.run_and_report)
    return main


def test_hydra_composition_errors_are_bad_input_too(tmp_path, monkeypatch, capsys, in_process_main):
    """The console entry point, in this process: an unknown group option, or an override of a
    key the config lacks, is one line of bad input and exit 2, before any folder is made."""
    monkeypatch.chdir(tmp_path)
    for override, line in [("clip=clamp", "gradclip: bad input: In 'train': Could not find 'clip/clamp'; available "
                                          "options in 'clip': agc, none, norm, value"),
                           ("clip.thresh=1", "gradclip: bad input: Could not override 'clip.thresh': Key 'thresh' "
                                             "is not in struct")]:
        monkeypatch.setattr(sys, "argv", ["gradclip-train", override])
        with pytest.raises(SystemExit) as stop:
            in_process_main()
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [line]
    assert not (tmp_path / "runs").exists()


def test_a_folder_hydra_cannot_make_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys, in_process_main):
    """output_root names a file: Hydra cannot create the run's folder, before any job."""
    (tmp_path / "taken").write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gradclip-train", "output_root=taken", "logger=none", "steps=1"])
    with pytest.raises(SystemExit) as stop:
        in_process_main()
    assert stop.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradclip: Hydra cannot write ") and "taken" in lines[0]


# -- W&B without a server ----------------------------------------------------------------------------


def test_wandb_online_without_a_server_mirrors_offline_at_once(cfg, tmp_path, monkeypatch, caplog, request):
    """A closed local port stands for a network that is down: no 90 s wait in wandb.init, one
    warning, an offline mirror to sync later, and the local record complete."""
    from gradclip import tracking

    with socket.socket() as s:  # a port that was free a moment ago and is closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "_probed", {})
    import wandb

    # W&B keeps the settings of its first setup in this process: start from none, so that the
    # server above is the one probed whatever ran before, and leave none behind.
    wandb.teardown()
    request.addfinalizer(wandb.teardown)

    modes = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: modes.append(kw["mode"]) or real_init(**kw))
    summary = train(cfg("logger=wandb", "logger.mode=online"), tmp_path)
    assert summary["status"] == "completed" and modes == ["offline"]
    assert summary["wandb"] == str(next((tmp_path / "wandb").glob("offline-run-*")))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("gradclip")]
    assert len(warnings) == 1 and f"127.0.0.1:{port} is unreachable" in warnings[0]
    assert [r["step"] for r in rows(tmp_path) if "train/loss" in r] == [5, 10, 15, 20, 25, 30]


def test_logger_none_imports_nothing_of_wandb(cfg, tmp_path, monkeypatch):
    """With sys.modules["wandb"] = None any import of wandb raises ImportError: the run must not
    need one (the SIGTERM test checks that no wandb-* temporary folder is left)."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    summary = train(cfg("logger=none"), tmp_path)
    assert summary["status"] == "completed" and summary["versions"]["wandb"]
