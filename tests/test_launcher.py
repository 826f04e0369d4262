"""The population launcher (the default of ``python -m gradclip.train -m``) and the progress line:
jobs grouped into populations by what they share, cut at ``max_members``, written to the same job
folders as one job each, resumed member by member; a model vmap cannot batch trains one run at a
time; progress counts runs, model-steps/s and time left."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading

import pytest
from test_cli import gradclip_train, summaries
from test_train import fake_images

from gradclip import sweep
from gradclip.train import Job, run_jobs

FAST = ["batch_size=16", "log_every=5", "eval_every=0", "progress=false", "logger=none"]


@pytest.mark.slow
def test_a_sweep_trains_as_populations_in_the_usual_folders_and_resumes_member_by_member(tmp_path):
    """Six jobs, two step counts: two groups of three, cut at max_members=2 into populations of
    2 and 1. A relaunch with one more seed trains only the two new jobs, here through submitit
    (backend=submitit_local, what submitit_slurm does on a cluster): the jobs are prepared in
    the sweep's process, each population is a submitit task that trains and journals its runs."""
    sweep_args = ["-m", *FAST, "steps=10,20", "hydra.launcher.max_members=2", "name=pop"]
    first = gradclip_train(*sweep_args, "seed=0,1,2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "gradclip: sweep runs/pop: 6 jobs: 6 completed" in first.stderr
    runs = summaries(tmp_path / "runs" / "pop")
    prefix = "batch_size=16,eval_every=0,log_every=5,"
    assert sorted(runs) == sorted(f"{prefix}seed={s},steps={n}" for s in (0, 1, 2) for n in (10, 20))
    for name, summary in runs.items():  # seeds 0 and 1 of each step count train together, seed 2 alone
        assert summary["population_size"] == (1 if "seed=2" in name else 2), name
        assert summary["steps_completed"] == int(name.rsplit("steps=", 1)[1])
    again = gradclip_train(*sweep_args, "seed=0,1,2,3", "hydra.launcher.backend=submitit_local", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "8 jobs: 2 completed, 6 already finished (skipped)" in again.stderr
    runs = summaries(tmp_path / "runs" / "pop")
    assert {runs[f"{prefix}seed=3,steps={n}"]["population_size"] for n in (10, 20)} == {1}
    assert len({runs[f"{prefix}seed=3,steps={n}"]["process"]["pid"] for n in (10, 20)}) == 2  # two tasks
    assert len([p for p in (tmp_path / "runs" / "pop" / ".submitit").iterdir() if p.name.isdigit()]) == 2
    assert all(runs[name]["finished_at"] == summary["finished_at"] for name, summary in summaries(
        tmp_path / "runs" / "pop").items() if "seed=3" not in name)


def test_runs_that_vmap_cannot_batch_train_one_at_a_time_with_one_line(make_cfg, tmp_path, monkeypatch, caplog):
    """ResNet-18 with BatchNorm updates its running statistics in the forward pass: the group
    trains one run after the other, each recorded as a population of one."""
    fake_images(monkeypatch)
    jobs = [Job(make_cfg("model=resnet18", "model.norm=batch", "batch_size=4", "steps=2", "eval_every=0",
                         f"seed={seed}"), tmp_path / f"run{seed}", tmp_path) for seed in range(3)]
    with caplog.at_level(logging.INFO, logger="gradclip.train"):
        run_jobs(jobs, max_members=8)
    lines = [r.message for r in caplog.records if "one at a time" in r.message]
    assert lines == ["3 runs train one at a time: model contains nn.BatchNorm2d (backbone.bn1), whose running "
                     "statistics torch.func cannot update per example; use model.norm=group"]
    for seed in range(3):
        summary = json.loads((tmp_path / f"run{seed}" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["population_size"] == 1
    outcomes = {e["job"]: e["outcome"] for e in sweep.read_journal(tmp_path)}
    assert outcomes == {f"run{seed}": "completed" for seed in range(3)}


def test_data_dependent_bad_input_fails_each_job_of_its_population(make_cfg, tmp_path, capsys):
    jobs = [Job(make_cfg("batch_size=5000", f"seed={seed}"), tmp_path / f"run{seed}", tmp_path) for seed in range(2)]
    run_jobs(jobs, max_members=8)
    assert {e["job"]: e["outcome"] for e in sweep.read_journal(tmp_path)} == {"run0": "bad_input", "run1": "bad_input"}
    assert capsys.readouterr().err.count("gradclip: bad input: batch_size=5000 is larger than the 4000") == 2


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_counts_runs_model_steps_and_time_left(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(sweep.time, "monotonic", lambda: clock[0])
    terminal = FakeTerminal()
    progress = sweep.Progress(runs=10, done=2, model_steps=8 * 1000, stream=terminal)
    clock[0] += 10
    progress.advance(4000)  # 400 model-steps/s; 4000 left: 10 s
    assert terminal.getvalue() == "\rgradclip: 2/10 runs done, 400 model-steps/s, 10s left"
    progress.run_done(count=3, skipped_steps=2000)  # one of them diverged 2000 steps early
    clock[0] += 0.1
    progress.advance(10)  # within half a second: no new line
    clock[0] += 0.5
    progress.advance(0)
    line = "gradclip: 5/10 runs done, 378 model-steps/s, 5s left"  # 4010 steps in 10.6 s; 1990 left
    assert terminal.getvalue().endswith("\r" + line + " ")  # padded over the longer line before
    progress.close()
    assert terminal.getvalue().endswith("\r" + " " * len(line) + "\r")

    log_file = io.StringIO()  # not a terminal: a log line every 30 s
    progress = sweep.Progress(runs=4, done=0, model_steps=4 * 60_000, stream=log_file)
    with caplog.at_level(logging.INFO, logger="gradclip.sweep"):
        clock[0] += 10
        progress.advance(1000)
        assert not caplog.records
        clock[0] += 20
        progress.advance(2000)
    assert [r.message for r in caplog.records] == ["0/4 runs done, 100 model-steps/s, 39m30s left"]
    assert log_file.getvalue() == ""


def test_a_stop_signal_journals_every_job_not_begun_even_when_populations_interleave(make_cfg, tmp_path,
                                                                                     monkeypatch):
    """Jobs A1 B1 A2 B2 (two populations, A and B, interleaved in the sweep's order; A of more
    steps, so trained first). A signal during population A: its runs end interrupted, and both B
    jobs are journaled not started; nothing A wrote is overwritten."""
    from gradclip import interrupts, runner

    jobs = [Job(make_cfg(f"steps={steps}", f"seed={seed}"), tmp_path / f"{name}", tmp_path)
            for name, steps, seed in [("A1", 20, 0), ("B1", 10, 0), ("A2", 20, 1), ("B2", 10, 1)]]
    signal = []

    def fake_population(cfgs, run_dirs, **kwargs):
        signal.append(15)  # SIGTERM arrives while the first population trains
        return [{"status": "interrupted", "interrupted_reason": "SIGTERM after step 3 of 20"} for _ in cfgs]

    monkeypatch.setattr(runner, "train_population", fake_population)
    monkeypatch.setattr(interrupts, "received", lambda: signal[0] if signal else None)
    run_jobs(jobs, max_members=8)
    assert {e["job"]: e["outcome"] for e in sweep.read_journal(tmp_path)} == {
        "A1": "interrupted", "A2": "interrupted", "B1": "not_started", "B2": "not_started"}


def test_a_run_whose_folder_cannot_be_written_fails_alone(make_cfg, tmp_path):
    """One member's folder is a file (rerun=true: past the check of existing records): that
    member fails naming it, the others train."""
    from gradclip.runner import train_population

    (tmp_path / "run1").write_text("a file where the run's folder should be")
    cfgs = [make_cfg("steps=5", "eval_every=0", "rerun=true", f"seed={seed}") for seed in range(3)]
    summaries = train_population(cfgs, [tmp_path / f"run{k}" for k in range(3)])
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed"]
    assert str(tmp_path / "run1") in summaries[1]["error"]
    assert (tmp_path / "run1").read_text() == "a file where the run's folder should be"



def test_job_files_are_omegaconfs_yaml_and_the_job_configs_resolve_as_hydras_copies():
    """The launcher writes each job's .hydra files with libyaml's emitter and builds the task
    and HydraConfig configs from the job's own nodes: the same text as OmegaConf.to_yaml, and
    the same resolved values as Hydra's masked copies, for a composed config with its hydra node
    (strings that read as numbers or booleans stay quoted), and the job's config unharmed."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from gradclip.config import CONFIG_DIR
    from hydra_plugins.gradclip_launcher.job_files import to_yaml
    from hydra_plugins.gradclip_launcher.population_launcher import _holding

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose("train", overrides=["+experiment=stability", "name='1e3'", "logger.tags=[yes,'0.5']"],
                         return_hydra_config=True)
    for node in (config, config.hydra, config.hydra.overrides.task, config.logger):
        assert to_yaml(node) == OmegaConf.to_yaml(node)
    assert "'1e3'" in to_yaml(config) and "- 'yes'" in to_yaml(config)
    hydra_copy = OmegaConf.masked_copy(config, "hydra")
    hydra_copy.hydra._set_parent(config)
    expected_task = OmegaConf.to_container(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))
    expected_sweep_dir = hydra_copy.hydra.sweep.dir  # ${output_root}/${name}: the task's keys
    task_cfg = _holding(config, [k for k in config if k != "hydra"])
    hydra_cfg = _holding(config, ["hydra"])
    hydra_cfg.hydra._set_parent(config)
    assert OmegaConf.to_container(task_cfg) == expected_task
    assert hydra_cfg.hydra.sweep.dir == expected_sweep_dir == "runs/1e3"
    # the job's whole config, which the callbacks get, is as it was: parents, struct mode, values
    assert config.clip._get_parent() is config and config.hydra._get_parent() is config
    assert config.hydra.sweep.dir == "runs/1e3" and OmegaConf.to_container(config.logger) == expected_task["logger"]
    with pytest.raises(Exception, match="not_a_key"):
        config.clip.not_a_key = 1
    assert to_yaml(task_cfg) == OmegaConf.to_yaml(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))


# -- worker processes (hydra.launcher.workers, gradclip.pool) ----------------------------------------

def test_workers_train_populations_side_by_side_with_the_same_records_as_one_process(make_cfg, tmp_path):
    """Three groups (three step counts) of four seeds: trained here as three populations of four,
    and by a sweep in two worker processes, which halves the first into two populations of two so
    that the workers share four. The same rows and statuses, to the bit (one thread each way):
    halving changes nothing."""
    import torch

    from gradclip.train import prepare_job

    two = gradclip_train("-m", *FAST, "steps=10,20,30", "seed=0,1,2,3", "threads=1", "name=two",
                         "hydra.launcher.workers=2", "hydra.verbose=[gradclip.pool,gradclip.train]",
                         cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert "4 populations in 2 worker processes" in two.stdout
    # The workers log at the sweep's hydra.verbose: their DEBUG lines (without it there are none:
    # test_a_worker_stopped_alone_ends_its_run_and_the_others_train_the_rest).
    assert (two.stdout + two.stderr).count(": a population of 2 runs") == 2, two.stdout
    assert (two.stdout + two.stderr).count(": a population of 4 runs") == 2, two.stdout
    assert "gradclip: sweep runs/two: 12 jobs: 12 completed" in two.stderr
    side_by_side = summaries(tmp_path / "runs" / "two")
    here = tmp_path / "here"
    jobs = [prepare_job(make_cfg(*FAST, f"steps={n}", f"seed={s}", "threads=1", tiny=False),
                        here / f"{FAST[0]},eval_every=0,log_every=5,seed={s},steps={n}", here)
            for n in (10, 20, 30) for s in range(4)]
    threads = torch.get_num_threads()
    try:
        run_jobs(jobs, max_members=4)
    finally:
        torch.set_num_threads(threads)
    alone = summaries(here)
    assert sorted(alone) == sorted(side_by_side) and len(alone) == 12
    for name, summary in side_by_side.items():
        assert summary["status"] == alone[name]["status"] == "completed"
        halved = "steps=10" in name  # the first group, the one halved
        assert (summary["population_size"], alone[name]["population_size"]) == (2 if halved else 4, 4)
        assert ((tmp_path / "runs" / "two" / name / "metrics.jsonl").read_text()
                == (here / name / "metrics.jsonl").read_text())
    # Trained in the workers, not in the sweep's process (which worker took which population
    # depends on which was ready first: a worker that is not yet ready is sent nothing).
    sweep_pid = json.loads((tmp_path / "runs" / "two" / ".sweep" / "launch.json").read_text())["process"]["pid"]
    workers = {summary["process"]["pid"] for summary in side_by_side.values()}
    assert sweep_pid not in workers and 1 <= len(workers) <= 2


def test_a_sweeps_process_loads_torch_after_composing_and_skips_the_last_collection_at_exit():
    """What ``python -m gradclip.train`` imports before Hydra composes the sweep holds no torch
    (about 2 s): the sweep's process starts its workers first, and its own import of torch (with
    the first job it prepares) overlaps theirs. And a process that imported gradclip freezes the
    objects still alive when it exits, so the interpreter's last collection does not walk them
    (gradclip/__init__.py)."""
    import subprocess
    import sys

    code = ("import atexit, gc, sys, gradclip.train; loaded = 'torch' in sys.modules; "
            "import torch; before = gc.get_freeze_count(); atexit._run_exitfuncs(); "
            "print(loaded, before, gc.get_freeze_count() > 100_000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "0", "True"], out.stderr


def test_a_signal_to_a_sweep_with_workers_stops_them_and_journals_what_had_not_begun(tmp_path):
    """SIGTERM to the sweep's process alone: passed on to both workers, whose runs end
    interrupted at a step boundary; the third population, still queued, is journaled as not
    started; the report comes and the exit code is 128 + SIGTERM."""
    from test_faults import JOB, signal_sweep

    from gradclip.records import run_state

    code, err, root = signal_sweep(tmp_path, signal.SIGTERM, "seed=0,1,2", "hydra.launcher.workers=2",
                                   "hydra.launcher.max_members=1")
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM; 3 jobs: 2 interrupted, 1 not started" in err
    assert {run_state(root / f"{JOB}seed={s},steps=1000000").status for s in (0, 1)} == {"interrupted"}
    assert not (root / f"{JOB}seed=2,steps=1000000" / "summary.json").exists()


def test_a_worker_that_dies_leaves_its_runs_as_recorded_and_the_others_finish(tmp_path):
    """SIGKILL to the worker of one population (as an out-of-memory kill would): one log line;
    its run reads interrupted (its process is gone); the other population completes; exit 1."""
    from test_faults import JOB, launch, wait_for_rows

    from gradclip.records import run_state

    proc = launch("-m", *FAST, "steps=300,1000000", "name=pool", "hydra.launcher.workers=2", cwd=tmp_path)
    root = tmp_path / "runs" / "pool"
    doomed = wait_for_rows(root, "*steps=1000000/metrics.jsonl").parent
    os.kill(json.loads((doomed / "summary.json").read_text())["process"]["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "ended (exit code -9) during a population of 1 runs" in out + err
    assert run_state(doomed).status == "interrupted"
    assert run_state(root / f"{JOB}steps=300").status == "completed"


def test_populations_are_halved_until_the_workers_share_them_evenly(make_cfg, tmp_path):
    """Grouped by what they must share (seed varies, steps does not), cut at max_members, then
    the largest halved while there are fewer than the workers or a number they cannot share
    evenly, never below two members; handed out costliest first (steps x (fixed part + members x
    batch size)), ties in the sweep's order."""
    from gradclip.train import populations

    jobs = [Job(make_cfg(f"seed={s}"), tmp_path / f"s{s}", tmp_path) for s in range(5)]
    jobs.append(Job(make_cfg("steps=7"), tmp_path / "t", tmp_path))
    names = lambda groups: [[job.run_dir.name for job in group] for group in groups]  # noqa: E731
    assert names(populations(jobs, 64)) == [["s0", "s1", "s2", "s3", "s4"], ["t"]]
    assert names(populations(jobs, 2)) == [["s0", "s1"], ["s2", "s3"], ["s4"], ["t"]]
    # two populations share evenly between two workers: left whole (two rounds of steps would
    # cost twice one); between three they are cut to three
    assert names(populations(jobs, 64, workers=2)) == [["s0", "s1", "s2", "s3", "s4"], ["t"]]
    assert names(populations(jobs, 64, workers=3)) == [["s0", "s1", "s2"], ["s3", "s4"], ["t"]]
    # three cannot be shared by two: the largest is halved, to four, and the four go out costliest
    # first: the whole one of four before the halves of two
    eight = [Job(make_cfg(f"seed={s}"), tmp_path / f"s{s}", tmp_path) for s in range(8)] + jobs[-1:]
    assert names(populations(eight, 4, workers=2)) == [["s4", "s5", "s6", "s7"], ["s0", "s1"], ["s2", "s3"], ["t"]]
    # the sweep's order does not decide: of the same steps, the population of larger batches goes
    # first; twice the steps outweigh 16 times the batch (the fixed part of a step dominates)
    mixed = [Job(make_cfg(overrides), tmp_path / name, tmp_path)
             for name, overrides in [("narrow", "steps=30"), ("wide", "batch_size=256"), ("long", "steps=60")]]
    assert names(populations(mixed, 64, workers=2)) == [["long"], ["wide"], ["narrow"]]
    # never below two members: a population of one would round differently
    assert names(populations(jobs, 64, workers=8)) == [["s0", "s1", "s2"], ["s3", "s4"], ["t"]]


def test_a_worker_stopped_alone_ends_its_run_and_the_others_train_the_rest(tmp_path):
    """SIGTERM to one worker only (not the sweep): its run ends interrupted and it takes no more
    populations (a stopped worker would otherwise mark each one it took as not started); the
    other worker trains every population left; the sweep reports the interrupted run, exit 1."""
    from test_faults import JOB, launch, wait_for_rows

    from gradclip.records import run_state

    proc = launch("-m", *FAST, "steps=1000000,600,700,800", "name=pool", "hydra.launcher.workers=2",
                  cwd=tmp_path)
    root = tmp_path / "runs" / "pool"
    doomed = wait_for_rows(root, "*steps=1000000/metrics.jsonl").parent
    os.kill(json.loads((doomed / "summary.json").read_text())["process"]["pid"], signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "4 jobs: 3 completed, 1 interrupted" in err
    assert "was stopped by SIGTERM" in out + err
    assert ": a population of" not in out + err  # a worker's DEBUG line: hydra.verbose is off
    assert run_state(doomed).status == "interrupted"
    assert {run_state(root / f"{JOB}steps={n}").status for n in (600, 700, 800)} == {"completed"}


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["Launching 4 jobs", "worker processes"])
def test_a_signal_while_the_workers_start_stops_the_sweep_cleanly(tmp_path, moment):
    """SIGTERM to the sweep's process the moment it starts its workers, as it begins to prepare
    its jobs, or as it hands them their populations (the workers are still importing torch
    either way): noted, not fatal anywhere; the sweep reports and exits 128 + SIGTERM; no job is
    left started or running: each is not started, or interrupted at a step boundary."""
    from test_faults import launch, no_traceback

    from gradclip.records import run_state

    proc = launch("-m", *FAST, "steps=1000000", "seed=0,1,2,3", "name=pool", "hydra.launcher.workers=2",
                  cwd=tmp_path)
    guard = threading.Timer(120, proc.kill)  # the line never came: fail, do not hang
    guard.start()
    try:
        for line in proc.stdout:
            if moment in line:  # the workers start right after the first line; the second comes as they train
                break
        proc.send_signal(signal.SIGTERM)
    finally:
        guard.cancel()
    out, err = proc.communicate(timeout=120)
    no_traceback(err)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "gradclip: sweep runs/pool: stopped by SIGTERM;" in err  # (jobs not yet prepared are not counted)
    outcomes = {entry["outcome"] for entry in sweep.read_journal(tmp_path / "runs" / "pool")}
    assert outcomes <= {"not_started", "interrupted"}, outcomes
    for summary in (tmp_path / "runs" / "pool").glob("*seed=*/summary.json"):  # the runs that began
        assert run_state(summary.parent).status == "interrupted", summary


KEPT_SWEEPS = """
import gc, json, os, signal, sys
from gradclip import interrupts, pool, train

interrupts.install()
fast = json.loads(sys.argv[1])
seen, started, start = [], [], pool.Workers.__init__
# (whether this process had imported torch when it started them)
pool.Workers.__init__ = lambda self, *args, **kwargs: (started.append("torch" in sys.modules),
                                                       start(self, *args, **kwargs))[1]


def sweep(name):
    return train.run_command(["-m", *fast, "steps=20", "seed=0,1,2,3", f"name={name}", "threads=1",
                              "hydra.launcher.workers=2", "hydra.launcher.max_members=2"])


with pool.kept():
    for name in ("a", "b", "c"):
        code = sweep(name)
        workers = [process.pid for process in pool._kept.processes.values()]
        seen.append({"code": code, "workers": workers, "frozen": gc.get_freeze_count()})
        if name == "b":  # one worker dies between the second and third sweeps (an out-of-memory kill)
            os.kill(workers[0], signal.SIGKILL)
            pool._kept.processes[next(iter(pool._kept.processes))].join()
pairs = len(started)
seen.append({"code": sweep("a"), "started": len(started) - pairs, "pairs": pairs,  # every job finished already
             "torch_at_first_start": started[0]})
print(json.dumps(seen))
"""


def test_sweeps_of_one_process_share_its_workers_until_it_ends(tmp_path):
    """Three sweeps run in one process within gradclip.pool.kept (as scripts/reproduce.py runs
    them): the first two train in the same two worker processes, started once; a worker that
    died before the third is replaced by a fresh pair; every worker has ended when the process
    has, and each pair trains the same rows (that workers train the rows of a sweep without them:
    test_workers_train_populations_side_by_side_with_the_same_records_as_one_process). The first
    pair starts before this process imports torch (so that their imports overlap); the first
    sweep relaunched, every job of it finished, starts no worker process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", KEPT_SWEEPS, json.dumps(FAST)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first, second, third, relaunch = json.loads(done.stdout.splitlines()[-1])
    assert relaunch == {"code": 0, "started": 0, "pairs": 2, "torch_at_first_start": False}, done.stderr
    assert "gradclip: sweep runs/a: 4 jobs: 4 already finished (skipped)" in done.stderr
    assert first["code"] == second["code"] == third["code"] == 0, done.stderr
    assert first["frozen"] == second["frozen"] == third["frozen"] == 0  # what the launcher froze preparing jobs
    assert len(first["workers"]) == len(second["workers"]) == len(third["workers"]) == 2
    assert first["workers"] == second["workers"]
    assert not set(second["workers"]) & set(third["workers"])
    for pid in first["workers"] + third["workers"]:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    runs = {name: summaries(tmp_path / "runs" / name) for name in "abc"}
    assert len(runs["a"]) == len(runs["b"]) == len(runs["c"]) == 4
    for name, seen in zip("abc", (first, second, third)):
        assert {summary["process"]["pid"] for summary in runs[name].values()} <= set(seen["workers"])
    for job in runs["a"]:
        rows = (tmp_path / "runs" / "a" / job / "metrics.jsonl").read_text()
        assert (tmp_path / "runs" / "b" / job / "metrics.jsonl").read_text() == rows
        assert (tmp_path / "runs" / "c" / job / "metrics.jsonl").read_text() == rows


def _node_flags(node, path="") -> dict:
    """Every node's flags and types under ``node``, by path (what a YAML comparison misses)."""
    from omegaconf import DictConfig, ListConfig

    found = {path: (dict(node._metadata.flags or {}), node._metadata.object_type, node._metadata.ref_type)}
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in items:
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            found.update(_node_flags(child, f"{path}.{key}"))
        else:
            found[f"{path}.{key}"] = (dict(child._metadata.flags or {}), type(child), child._metadata.ref_type)
    return found


def test_sweep_configs_from_a_template_are_hydras_own_with_every_flag_and_type():
    """The launcher's job configs (SweepConfigs: Hydra composes the first job of a signature,
    the others are its pickled template with their own values): for jobs of two signatures, the
    same YAML as Hydra's composition of each job, the same flags (struct, read-only) and node
    types at every node; and a job's changes to its own config do not reach the next job."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from gradclip.config import CONFIG_DIR
    from hydra_plugins.gradclip_launcher.sweep_configs import SweepConfigs

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", overrides=["+experiment=stability"], run_mode=RunMode.MULTIRUN)
        configs = SweepConfigs(loader)
        configs.checking = False
        jobs = [["+experiment=stability", f"model={model}", f"seed={seed}", f"schedule.a0={a0}"]
                for model in ("mlp", "rnn_exploding") for seed, a0 in ((0, 1), (1, 10), (2, 100))]
        for overrides in jobs:
            ours, hydras = configs(master, overrides), configs.compose(master, overrides)
            assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras), overrides
            assert _node_flags(ours) == _node_flags(hydras), overrides
            with open_dict(ours):
                ours.seed, ours.new_key = 99, 1  # a job's own changes: the next job does not see them
        assert all(template.config is not None and template.checked for template in configs.templates.values())


def test_job_files_from_a_template_are_to_yamls_own_text():
    """The .hydra files of a job that SweepConfigs made from a template (job_files.TemplateFiles:
    the template's YAML nodes with those at the job's own keys made anew) are to_yaml's text of
    the job's own config, for value overrides of every kind (a nested key, a list, strings that
    read back as numbers or booleans, an interpolation, text beyond ASCII), with the keys the
    launcher sets; a job whose key is not in the template's tree is left to to_yaml."""
    import pickle

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import open_dict

    from gradclip.config import CONFIG_DIR
    from hydra_plugins.gradclip_launcher.job_files import TemplateFiles, job_yaml
    from hydra_plugins.gradclip_launcher.population_launcher import LAUNCHER_KEYS, _holding
    from hydra_plugins.gradclip_launcher.sweep_configs import SweepConfigs

    base = ["+experiment=stability", "clip=agc", "logger.mode=disabled"]
    values = [["seed=0", "clip.exclude=[]", "logger.tags=[]", "logger.project=gradclip", "schedule.a0=1"],
              ["seed=1", "clip.exclude=[head.weight,'0.5']", "logger.tags=[yes,'1e3',null]",
               "logger.project='été'", "schedule.a0=${steps}"],
              ["seed=2", "clip.exclude=[x]", "logger.tags=['no']", "logger.project='true'", "schedule.a0=0.5"]]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", overrides=base, run_mode=RunMode.MULTIRUN)
        configs = SweepConfigs(loader)
        configs.checking = False
        derived_jobs = 0
        for idx, overrides in enumerate(base + [f"model={model}"] + job for model in ("mlp", "rnn_exploding")
                                        for job in values):
            config, derived = configs.job(master, overrides)
            with open_dict(config):  # what the launcher sets (LAUNCHER_KEYS)
                config.hydra.job.id = config.hydra.job.num = idx
                config.hydra.runtime.output_dir = f"/somewhere/{idx}"
            expected = job_yaml(config, _holding(config, [k for k in config if k != "hydra"]),
                                _holding(config, ["hydra"]))
            if derived is not None:
                derived_jobs += 1
                files = TemplateFiles(pickle.loads(derived.template.blob))
                assert files.job_yaml(config, derived.keys + LAUNCHER_KEYS) == expected, overrides
                assert files.job_yaml(config, ("logger.no_such_key",)) is None
        assert derived_jobs == 4  # the first job of each model is Hydra's


def test_resolved_job_configs_are_omegaconfs_own(make_cfg):
    """prepare_job's config for training (ResolvedConfigs.create) is OmegaConf.create's, with
    every flag and node type, for configs of one shape that differ in values of every kind
    (equal values of other types: 1 and 1.0, 0.0 and -0.0, True and 1; None; an interpolation
    string) and of another shape; a job's changes to its config reach no other."""
    import copy

    from omegaconf import OmegaConf

    from gradclip.config import ResolvedConfigs, resolve_config

    resolved = ResolvedConfigs()
    base = resolve_config(make_cfg())
    variants = []
    for seed, a0, decay, deterministic, threads, name, tags in (
            (0, 1, 0.0, True, None, "a", ["a", 1]), (1, 1.0, -0.0, 1, 2, "${seed}", ["a", 1.0]),
            (2, 0.5, 0.0, False, None, "b", ["b", None])):  # (leaves in a list of one length, too)
        config = copy.deepcopy(base)
        config.update(seed=seed, weight_decay=decay, deterministic=deterministic, threads=threads, name=name)
        config["logger"] = dict(config["logger"], tags=tags)
        config["schedule"]["a0"] = a0
        variants.append(config)
    other = copy.deepcopy(base) | {"extra": [1, {"x": "y"}]}
    for config in variants + [other] + variants:
        ours, omegaconfs = resolved.create(config), OmegaConf.create(config)
        assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(omegaconfs)
        assert _node_flags(ours) == _node_flags(omegaconfs)
        assert OmegaConf.to_container(ours) == config
        for key in ("weight_decay", "deterministic", "threads", "name"):
            assert repr(ours._get_node(key)._value()) == repr(config[key]), key
        assert repr(ours.schedule.a0) == repr(config["schedule"]["a0"])
        if "tags" in config["logger"]:  # (not in the other shape)
            tags = ours.logger._get_node("tags")
            assert [repr(tags._get_node(k)._value()) for k in range(len(tags))] == \
                [repr(v) for v in config["logger"]["tags"]]
        ours.seed = 99  # a job's own change
    assert len(resolved.shapes) == 2


@pytest.mark.parametrize("override", ["steps=0", "data.root=???", "clip.threshold=[1]", "+divergence.x=1",
                                      "schedule.a0=${oops}", "seed=-1", "steps=10"])
def test_checks_on_the_resolved_config_say_what_the_configs_own_say(make_cfg, override):
    """validate_resolved(cfg, config) passes, or raises the very error, where validate_config(cfg)
    does: bad input of several kinds, a missing value (which only cfg's own check sees), and a
    config that is fine."""
    from gradclip.checks import ConfigError
    from gradclip.config import resolve_config, validate_config, validate_resolved

    cfg = make_cfg(override)
    try:
        config = resolve_config(cfg)
    except ConfigError:
        return  # prepare_job reports it before any check
    outcomes = []
    for check in (lambda: validate_config(cfg), lambda: validate_resolved(cfg, config)):
        try:
            check()
            outcomes.append(None)
        except Exception as error:  # noqa: BLE001
            outcomes.append((type(error), str(error)))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] is None) == (override == "steps=10")


def test_a_job_file_that_holds_its_text_already_is_not_rewritten(tmp_path):
    from hydra_plugins.gradclip_launcher.population_launcher import _write_text

    path = tmp_path / "config.yaml"
    _write_text(path, "a: 1\n")
    os.utime(path, ns=(0, 0))
    _write_text(path, "a: 1\n")
    assert path.stat().st_mtime_ns == 0
    _write_text(path, "a: 2\n")
    assert path.read_text() == "a: 2\n" and path.stat().st_mtime_ns != 0


@pytest.mark.parametrize("jobs", [
    # a value set, then its key deleted: the template (eps deleted) must not take job 2's eps
    [["clip=norm", f"clip.eps={eps}", "~clip.eps"] for eps in (1, 2)],
    # a value, then the same key forced: Hydra keeps the later one, a template would not
    [["clip=norm", f"clip.eps={eps}", "++clip.eps=5"] for eps in (1, 2)],
])
def test_sweep_configs_compose_overrides_that_do_not_commute_with_a_value_as_hydra_does(jobs):
    """A value override followed by a ~ or ++ override of the same node cannot be re-applied on
    a template after it: each job's config is Hydra's own (the first raised on the template path;
    the second, where a template would take the job's own value and Hydra keeps the later one,
    the comparison of each signature's second job caught already)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from gradclip.config import CONFIG_DIR
    from hydra_plugins.gradclip_launcher.sweep_configs import SweepConfigs

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", overrides=[], run_mode=RunMode.MULTIRUN)
        configs = SweepConfigs(loader)
        configs.checking = False  # (the launcher's calls; the second job is where the template is first used)
        for overrides in jobs:
            ours, hydras = configs(master, overrides), configs.compose(master, overrides)
            assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras), overrides
