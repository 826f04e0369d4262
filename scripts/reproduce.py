"""`make reproduce`: run every experiment sweep, then rebuild every table, figure and the report.

    python scripts/reproduce.py --scale smoke|default|full [--launcher population|joblib|submitit_slurm]

Sweeps run one after another in this process, each exactly as ``python -m gradclip.train -m
...`` would run it (the line before each sweep prints that command), through gradclip's
population launcher (the jobs of a sweep that differ only in seed, step sizes, tau or lambda
train together in one vectorised program), its populations side by side in ``--workers``
processes (one per core by default), into ``runs/<scale>/<experiment>/``. Torch is imported
once and the worker processes start once, not once a sweep (gradclip.pool.kept): at the default
scale, that was about 3 s of each of its 11 sweeps.
Jobs are named by their overrides and skip themselves when their record is finished, so a second
run after an interruption only trains what is missing. The full scale made the committed files and
writes ``results/`` and ``paper_figures/``; other scales write ``runs/<scale>/results`` and
``runs/<scale>/paper_figures``, and the default scale also keeps its verdicts in
``results/verdicts_default.json``, which the full scale's report shows beside its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gradclip import interrupts, pool  # (standard library only: torch is imported by the first sweep)

ROOT = Path(__file__).resolve().parents[1]
SCALES = ("smoke", "default", "full")
COMMITTED = "full"  # the scale that writes results/ and paper_figures/
COMPARED = "default"  # the scale whose verdicts the committed report shows beside its own


def stability_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/stability.yaml holds the default grid; other scales override it. The full
    scale's grid is cut to fit an hour on 2 cores, by the wall time of each sweep at the last full
    run (commit 293eb78, two workers): per-sample clipping and AGC with every unit clipped run on
    the deep tanh MLP and the MLP only (on the RNN they took 202 s, 168 s and 153 s, on the LSTM
    and the 1-D ResNet the head-clipped arm 130 s), norm clipping runs tau in {1, 10} (tau = 0.1
    reached past B only at a0 = 1e4), and the LSTM and the 1-D ResNet run batch clipping, 100
    steps, four a0 and one setting per method (model-steps/s of a 32-member population at 2
    threads: LSTM 225 batch / 106 per-sample, 1-D ResNet 272 / 115, against RNN 890 / 310, deep
    tanh 1,900 / 980, MLP 6,700 / 6,000). No model runs a0 = 0.1: at the last run with it (commit
    ad7de75) every method, unclipped included, kept all 32 seeds there on all five models, and
    its stable runs, which train every step, cost a quarter of the sweep; the LSTM and the 1-D
    ResNet run a0 = 1 instead (unclipped, the ResNet kept 22 of 32 seeds at a0 = 10). The deep tanh
    MLP, the MLP and the RNN no longer run a0 = 1 either, nor the RNN, the LSTM and the 1-D ResNet
    a0 = 10 (cut at 99d6de9, when the full scale had reached the hour): at those points plain SGD
    kept 32 of 32 seeds (the ResNet 22 of 32 at a0 = 10, a Wilson interval above one half), so no
    point there is judged, while every run there trains all its steps (about 6 minutes of the
    sweep by its model-steps); the LSTM and the 1-D ResNet keep a0 = 1, the deep tanh MLP and the
    MLP a0 = 10, as the smallest step.
    Records of dropped points in an output root are collected with the rest: start the full scale
    in an empty one."""
    if scale != "full":
        grid = {"smoke": ["model=deep_tanh", "schedule.a0=1,1000", "seed=0,1", "steps=20"], "default": []}[scale]
        tau = {"smoke": "1.0", "default": "0.1,1.0"}[scale]
        lam = {"smoke": "0.1", "default": "0.01,0.1"}[scale]
        granularity = "batch" if scale == "smoke" else "batch,sample"
        sweeps = [grid + ["clip=none"],
                  grid + ["clip=norm", f"clip.threshold={tau}", f"clip.granularity={granularity}"],
                  grid + ["clip=agc", f"clip.clip_factor={lam}", f"clip.granularity={granularity}"]]
        if scale == "smoke":  # the head-clipped AGC arm of the full scale, so that the pipeline sees it
            sweeps.append(grid + ["clip=agc", "clip.clip_factor=0.1", "clip.exclude=[]"])
        return sweeps
    seeds = "seed=range(0,32)"
    main = [seeds, "steps=300", "schedule.a0=10,100,1000,10000"]
    rnn = [seeds, "steps=300", "schedule.a0=100,1000,10000", "model=rnn_exploding"]
    extra = ["model=lstm,resnet", seeds, "steps=100", "schedule.a0=1,1000,10000"]
    return [
        main + ["model=deep_tanh,mlp", "clip=none"],
        main + ["model=deep_tanh,mlp", "clip=norm", "clip.threshold=1.0,10.0", "clip.granularity=batch,sample"],
        main + ["model=deep_tanh,mlp", "clip=agc", "clip.clip_factor=0.01,0.1", "clip.granularity=batch,sample"],
        main + ["model=deep_tanh,mlp", "clip=agc", "clip.clip_factor=0.01,0.1", "clip.exclude=[]"],
        rnn + ["clip=none"],
        rnn + ["clip=norm", "clip.threshold=1.0,10.0"],
        rnn + ["clip=agc", "clip.clip_factor=0.01,0.1"],
        extra + ["clip=none"],
        extra + ["clip=norm", "clip.threshold=1.0"],
        extra + ["clip=agc", "clip.clip_factor=0.1"],
    ]


def agc_small_weights_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/agc_small_weights.yaml holds the default run."""
    return [{"smoke": ["steps=100", "seed=0"], "default": [],
             "full": ["seed=range(0,12)", "steps=2000", "unit_log_every=100"]}[scale]]


def convergence_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/convergence.yaml holds the default grid (the MLP). The full scale runs
    the MLP 50,000 steps with 8 seeds (norm clipping) and AGC over a grid of lambda x a0 (a0 in
    {3, 30}: a0 * lambda from 3e-3 to 3, 4 seeds; a0 = 0.3 is not run: its 12 runs would add
    about 4.5 minutes). These long runs are bound mostly by the number of steps: the grid trains
    as two populations of 12, one a worker, and took 6m52s at 438b354 (as four of 6, two a worker
    one after the other, 11m02s at 12b0570, and its 16 runs without lambda = 0.001 8m15s).
    lambda = 0.001 stays: a0 * lambda = 3e-3 is where AGC makes no progress, and at 0.03 it is the
    second setting (a0 = 30 beside lambda = 0.01 at a0 = 3). And the 1-D CNN at a0 = 30, 5,000
    steps, 8 seeds (cut: at the measured 480 model-steps/s of its per-sample population, 50,000
    steps would take ~55 min)."""
    norm, agc = ["clip=norm", "clip.threshold=1.0", "clip.eps=0"], ["clip=agc", "clip.clip_factor=0.01", "clip.exclude=[]"]
    if scale == "full":
        long = ["model=mlp", "steps=50000", "eval_log_points=30", "log_every=500"]
        cnn = ["model=cnn1d", "schedule.a0=30", "seed=range(0,8)", "steps=5000"]
        return [long + ["seed=range(0,8)", *norm],
                long + ["seed=range(0,4)", "schedule.a0=3,30", "clip=agc", "clip.clip_factor=0.001,0.01,0.1",
                        "clip.exclude=[]"],
                cnn + norm, cnn + agc]
    grid = {"smoke": ["model=mlp", "schedule.a0=30", "seed=0", "steps=200", "eval_log_points=6"], "default": []}[scale]
    return [grid + norm, grid + agc]


def step_sizes_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/step_sizes.yaml holds the default grid (the MNIST-1D MLP). The full scale
    runs the regression 50,000 steps and the MLP 20,000 (cut: 50,000 would take ~11 min of the hour
    at its measured 6,000 model-steps/s), 8 seeds each."""
    regression = ["model=linear", "model.bias=true", "data=linreg", "data.noise.dist=student_t", "schedule.a0=1",
                  "batch_size=32"]
    if scale == "full":
        full = ["seed=range(0,8)", "eval_log_points=30", "log_every=500"]
        return [full + ["steps=20000"], full + ["steps=50000"] + regression]
    grid = {"smoke": ["schedule.power=0,0.8,1.5", "seed=0", "steps=300", "eval_log_points=6"], "default": []}[scale]
    # The default scale runs the regression with 4 seeds: prediction 4 is decided per seed, and 4
    # of 4 is the fewest that can decide (the MLP's 2 seeds leave its freeze untested there).
    seeds = ["seed=range(0,4)"] if scale == "default" else []
    return [grid, grid + regression + seeds]


def limit_set_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/limit_set.yaml holds the default grid (the location problem). The full
    scale runs 4 seeds, the location problem 30,000 steps and the regression 100,000 (at tau =
    0.1 it converges slowly: H is flat there)."""
    regression = ["data=linreg", "model.bias=true", "clip.granularity=sample"]
    if scale == "full":
        full = ["seed=range(0,4)", "log_every=500"]
        return [full + ["steps=30000", "eval_every=30000"],
                full + ["steps=100000", "eval_every=100000"] + regression]
    grid = {"smoke": ["clip.threshold=0.3,3", "seed=0", "steps=500", "eval_every=500"], "default": []}[scale]
    return [grid, grid + regression]


def ode_tracking_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/ode_tracking.yaml holds the default grid. The full scale's 11 values of a0,
    about four a decade, give each seed's slope of log gap against log a0 the 10 points every
    slope of a rule needs (gradclip.verdicts.MIN_A0)."""
    return [{"smoke": ["schedule.a0=0.1,0.01", "seed=0", "steps=600"], "default": [],
             "full": ["schedule.a0=0.3,0.2,0.1,0.05,0.03,0.02,0.01,0.005,0.003,0.002,0.001", "seed=range(0,8)",
                      "steps=6000"]}[scale]]


def clipping_bias_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/clipping_bias.yaml holds the default grid. The full scale runs 12 values
    of tau and 32 seeds for 5,000 steps, and logs theta every 100 (26 iterates averaged). 10,000
    steps (3m42s against about 2 minutes) gave the same verdicts: the first 5,000 steps of those
    runs are these runs, and their tallies differ by one point each way."""
    taus = "clip.threshold=0.1,0.17,0.3,0.5,0.8,1.4,2.3,4,6.5,11,18,30"
    return [{"smoke": ["clip.threshold=0.3,3", "seed=0", "steps=300", "eval_every=300"], "default": [],
             "full": [taus, "seed=range(0,32)", "steps=5000", "eval_every=5000", "log_every=100"]}[scale]]


def batch_fixed_point_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/batch_fixed_point.yaml holds the default grid (the location problem).
    The full scale runs B in {1, 4, 16, 64, 256} and 32 seeds for 4,000 steps, on the location
    problem and on the regression (tau = 1); 6,000 steps gave the same tallies."""
    regression = ["data=linreg", "model.bias=true", "clip.threshold=1.0"]
    if scale == "full":
        full = ["batch_size=1,4,16,64,256", "seed=range(0,32)", "steps=4000", "eval_every=4000", "log_every=100"]
        return [full, full + regression]
    return [{"smoke": ["batch_size=1,16", "seed=0", "steps=300", "eval_every=300"], "default": []}[scale]]


def label_noise_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/label_noise.yaml holds plain SGD's default grid (40% noise). Each method
    runs its own a0 grid (clipping shrinks the steps: per-sample clipping needs about ten times
    plain SGD's a0 for the same progress); the full scale runs plain SGD at a0 in {1, 1.5, 2, 2.5,
    3, 4, 5, 10} (with {1, 2, 3, 5, 10} the linear reading of its curve between grid points
    overstated its memorisation where the curve bends: the control, batch clipping, then "held"),
    32 seeds, and each method at one a0 (its best test accuracy at 40% noise in the pilot) without
    noise, at 20% noise and under a 10:1 class imbalance (there only the accuracy is compared)."""
    norm = ["clip=norm", "clip.threshold=1.0", "clip.eps=0"]
    sample, batch = norm + ["clip.granularity=sample"], norm + ["clip.granularity=batch"]
    if scale == "smoke":
        smoke = ["seed=0", "steps=100", "eval_every=100"]
        return [smoke + ["schedule.a0=1,10"], smoke + sample + ["schedule.a0=10,100"]]
    if scale == "default":
        return [[], sample + ["schedule.a0=10,30,100"], batch + ["schedule.a0=3"]]
    seeds = ["seed=range(0,32)"]
    others = ["data.label_noise=0,0.2", "data.label_noise=0 data.imbalance=10"]
    sweeps = [seeds + ["schedule.a0=1,1.5,2,2.5,3,4,5,10"], seeds + sample + ["schedule.a0=10,30,100"],
              seeds + batch + ["schedule.a0=1,3,10"]]
    for setting in others:
        sweeps += [seeds + setting.split() + ["schedule.a0=3"], seeds + sample + setting.split() + ["schedule.a0=30"],
                   seeds + batch + setting.split() + ["schedule.a0=3"]]
    return sweeps


def eq22_network_sweeps(scale: str) -> list[list[str]]:
    """configs/experiment/eq22_network.yaml holds the default grid: no clipping (tau = inf), then
    per-sample clipping at tau in {1, 0.5}, 2 seeds; the full scale runs tau in {4, 2, 1, 0.5,
    0.25} and 32 seeds (at 12,000 steps and batch 64 the unclipped averages lie 0.05 from theta_L;
    with 8,000 steps and batch 32, twice that). Every scale adds the batch-size arm of experiment
    12 at tau = 0.5: batch clipping at B in {16} (smoke), {4, 16, 64} (default) or {4, 16, 64, 256}
    (full, with per-sample clipping at B in {1, 4, 16, 256} beside the grid's 64)."""
    sample = ["clip=norm", "clip.eps=0", "clip.granularity=sample"]
    batch = ["clip=norm", "clip.eps=0", "clip.granularity=batch", "clip.threshold=0.5"]
    if scale == "smoke":
        smoke = ["seed=0", "steps=300", "eval_every=300", "data.n_train=128"]
        return [smoke, smoke + sample + ["clip.threshold=0.5"], smoke + batch + ["batch_size=16"]]
    if scale == "default":
        return [[], sample + ["clip.threshold=1,0.5"], batch + ["batch_size=4,16,64"]]
    seeds = ["seed=range(0,32)"]
    # The batch-size arm (experiment 12) at tau = 0.5: per-sample clipping at B = 1, 4, 16 and 256
    # beside the tau grid's B = 64, batch clipping at B = 4 to 256 (at B = 1 the two are one algorithm:
    # tests/test_netfield.py).
    return [seeds, seeds + sample + ["clip.threshold=4,2,1,0.5,0.25"],
            seeds + sample + ["clip.threshold=0.5", "batch_size=1,4,16,256"], seeds + batch + ["batch_size=4,16,64,256"]]


EXPERIMENTS = {"stability": stability_sweeps, "agc_small_weights": agc_small_weights_sweeps,
               "convergence": convergence_sweeps, "step_sizes": step_sizes_sweeps, "limit_set": limit_set_sweeps,
               "ode_tracking": ode_tracking_sweeps, "clipping_bias": clipping_bias_sweeps,
               "batch_fixed_point": batch_fixed_point_sweeps, "label_noise": label_noise_sweeps,
               "eq22_network": eq22_network_sweeps}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def sweep(argv: list[str]) -> None:
    """Run one sweep, ``python -m gradclip.train <argv>``, in this process (torch is imported
    once, and the worker processes start once: gradclip.pool.kept). A stop signal ends the runs
    under way at a step boundary, and the sweep reports; a sweep that fails or is stopped ends
    reproduce with its exit code and one line."""
    from gradclip import train  # (torch loads with the first job a sweep prepares)

    print("+ python -m gradclip.train", " ".join(argv), flush=True)
    signum = interrupts.received()  # (a signal between two sweeps: the next one does not begin)
    code = interrupts.exit_code(signum) if signum else train.run_command(argv)
    signum = interrupts.received()
    if signum and not code:  # the sweep had just finished: stop here all the same
        code = interrupts.exit_code(signum)
    if code:
        _stopped(code, argv[1:6])


def _stopped(code: int, what: list[str]) -> None:
    names = {int(s): s.name for s in signal.Signals}
    how = f"stopped by {names[code - 128]}" if code - 128 in names else f"failed (exit {code})"
    print(f"reproduce: {how} in: {' '.join(what)}; the same command resumes, training only what is missing",
          file=sys.stderr)
    sys.exit(code)


def run(command: list[str]) -> None:
    """Run one step in a process of its own. A stop signal is passed on to the step (Ctrl-C
    reaches it directly too, and a repeat changes nothing; one noted before the step began
    stops reproduce before it); a step that fails or is stopped ends reproduce with its exit
    code and one line."""
    print("+", " ".join(command), flush=True)
    received, child = [], None

    def pass_on(signum, frame):
        received.append(signum)
        if len(received) == 1 and child is not None:  # (a child not yet started is told below)
            child.send_signal(signum)

    previous = {s: signal.signal(s, pass_on) for s in STOP_SIGNALS}
    try:
        if interrupts.received():  # noted by this process's own handler, before this step
            received.append(interrupts.received())
        code = 0
        if not received:
            child = subprocess.Popen(command, cwd=ROOT)
            if received:  # it came while the child was being started
                child.send_signal(received[0])
            code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code < 0:  # killed by a signal it did not handle (SIGKILL): report it as a shell would
        code = 128 - code
    if received and not code:  # the step had just finished (or never began): stop here all the same
        code = 128 + received[0]
    if code:
        _stopped(code, command[1:6])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default=os.environ.get("SCALE", COMMITTED))
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="processes that train populations side by side (--launcher population; each gets "
                             "torch's threads / workers)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel jobs (--launcher joblib only)")
    parser.add_argument("--launcher", default="population",
                        help="Hydra launcher: population (this machine, runs vectorised in one process), joblib "
                             "(one process per job), submitit_slurm (a cluster; set its hydra.launcher.* options "
                             "with --launcher-args)")
    parser.add_argument("--launcher-args", nargs="*", default=[], help="extra overrides, e.g. hydra.launcher.partition=gpu")
    # No W&B mirror by default: the tables, figures and report are built from the local records,
    # and a W&B run for each of the full scale's ~8,000 runs costs minutes of its hour (the full
    # runs at 14c6755 with it and 0b8b658 without: 64m22s and 57m01s) and 1.4 GB.
    parser.add_argument("--logger", choices=["wandb", "none"], default="none",
                        help="wandb: also mirror every run to W&B (offline unless WANDB_MODE=online; "
                             "default: none, the local records only, which the tables are built from)")
    parser.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS),
                        help="run these experiments' sweeps only (then the tables and figures of every "
                             "experiment with records under --runs, and the report once all have them)")
    parser.add_argument("--runs", default=None, help="output root (default runs/<scale>)")
    parser.add_argument("--results", default=None)
    parser.add_argument("--figures", default=None)
    args = parser.parse_args()
    runs = Path(args.runs or ROOT / "runs" / args.scale).resolve()
    # Absolute: the steps after the sweeps run in the repository's root, not in this folder.
    results = Path(args.results or (ROOT / "results" if args.scale == COMMITTED else runs / "results")).resolve()
    figures = Path(args.figures or (ROOT / "paper_figures" if args.scale == COMMITTED
                                    else runs / "paper_figures")).resolve()
    compared = ROOT / "results" / f"verdicts_{COMPARED}.json"
    interrupts.install()  # a stop signal from here on is noted: the sweep under way ends at a step boundary
    start = time.perf_counter()
    sweeps = [(name, overrides) for name in args.only for overrides in EXPERIMENTS[name](args.scale)]
    seconds = dict.fromkeys(args.only, 0.0)  # each experiment's sweeps, wall clock
    timing = Timing(runs / TIMING_FILE)
    fresh = {name for name in args.only if not (runs / name).exists()}  # timed only when trained whole
    keys = [" ".join([name, *overrides]) for name, overrides in sweeps]
    with pool.kept():  # one set of worker processes for every sweep
        for k, ((name, overrides), key) in enumerate(zip(sweeps, keys), 1):
            began = time.perf_counter()
            print(f"reproduce: sweep {k} of {len(sweeps)} ({name}), {_clock(began - start)} so far"
                  f"{timing.left(keys[k - 1:])}", flush=True)
            launcher = [f"hydra/launcher={args.launcher}", *args.launcher_args]
            if args.launcher == "joblib":
                launcher.append(f"hydra.launcher.n_jobs={args.jobs}")
            if args.launcher == "population":
                launcher.append(f"hydra.launcher.workers={args.workers}")
            sweep(["-m", f"+experiment={name}", *overrides, f"output_root={runs}", f"logger={args.logger}",
                   *launcher])
            seconds[name] += time.perf_counter() - began
            if name in fresh:
                timing.record(key, time.perf_counter() - began)
    trained = time.perf_counter() - start
    tables = time.perf_counter()
    # Tables and figures of every experiment that has records under --runs (with --only, the
    # others may not); the report needs them all.
    present = [name for name in EXPERIMENTS if (runs / name).is_dir()]
    missing = [name for name in EXPERIMENTS if name not in present]
    figures_py = [sys.executable, str(ROOT / "scripts" / "figures.py")]
    side_by_side = ["--jobs", str(args.workers)]
    run([*figures_py, "collect", *present, "--runs", str(runs), "--results", str(results), *side_by_side])
    run([*figures_py, "plot", *(present if missing else ["all"]), "--results", str(results), "--figures", str(figures),
         *side_by_side])
    if missing:
        verb = "has" if len(missing) == 1 else "have"
        print(f"reproduce: no report: {', '.join(missing)} {verb} no records under {runs} yet (run with --only)",
              file=sys.stderr)
    else:
        compare = ["--compare", str(compared)] if args.scale == COMMITTED and compared.is_file() else []
        run([sys.executable, str(ROOT / "scripts" / "report.py"), "--results", str(results), "--scale", args.scale,
             *compare])
        if args.scale == COMPARED and not args.results:
            shutil.copyfile(results / "verdicts.json", compared)
    timing.record(TABLES_KEY, time.perf_counter() - tables)
    if interrupts.received():  # (noted between the steps above: the last one had finished)
        _stopped(interrupts.exit_code(interrupts.received()), ["the tables, figures and report"])
    print(f"reproduce ({args.scale}): {', '.join(f'{name} {_clock(t)}' for name, t in seconds.items())}; "
          f"tables, figures and report {_clock(time.perf_counter() - tables)}; sweeps {_clock(trained)}, "
          f"total {_clock(time.perf_counter() - start)}")


TIMING_FILE = "reproduce_timing.json"
TABLES_KEY = "tables, figures and report"


class Timing:
    """How long each sweep (and the tables) took the last time it trained its experiment from
    scratch under this output root, kept in ``runs/<scale>/reproduce_timing.json``: the time
    left of a later run is estimated from it (a resumed run, which skips what is finished,
    takes less)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.seconds = {k: float(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            self.seconds = {}

    def left(self, keys: list[str]) -> str:
        if not self.seconds or any(key not in self.seconds for key in [*keys, TABLES_KEY]):
            return ""
        return f", about {_clock(sum(self.seconds[key] for key in [*keys, TABLES_KEY]))} left (as the last run took)"

    def record(self, key: str, seconds: float) -> None:
        self.seconds[key] = seconds
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.seconds, indent=1))
            os.replace(temporary, self.path)
        except OSError:  # bookkeeping only: a full disk is the sweeps' business
            pass


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


if __name__ == "__main__":
    main()
