"""Run records into pandas frames: local directories and globs, and the W&B API."""

import json
from types import SimpleNamespace

import yaml

from gradclip.records import RunRecorder, find_run_dirs, load_runs, load_wandb_runs, run_state


def write_run(run_dir, config, rows, status="completed"):
    recorder = RunRecorder(run_dir)
    recorder.start(config, {"status": "running"})
    for row in rows:
        recorder.log(row)
    recorder.write_summary({"status": status, "final": recorder.final_values()})
    recorder.close()


def test_recorder_writes_and_flags_finished_runs(tmp_path):
    write_run(tmp_path / "a", {"clip": {"method": "norm"}}, [{"step": 1, "train/loss": 2.0}])
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text()) == {"clip": {"method": "norm"}}
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["final"] == {"step": 1, "train/loss": 2.0}
    assert run_state(tmp_path / "a").finished
    write_run(tmp_path / "b", {}, [], status="failed")
    assert not run_state(tmp_path / "b").finished and not run_state(tmp_path / "never-ran").finished


def test_load_runs_from_directories_and_globs(tmp_path):
    for method, seed in [("none", 0), ("norm", 0), ("norm", 1)]:
        rows = [{"step": s, "train/loss": 1.0 / s, "train/lr": 0.1} for s in (1, 2, 3)]
        rows.append({"step": 3, "eval/H_norm": float("nan")})  # a diverged value stays NaN
        write_run(tmp_path / "sweep" / f"clip={method},seed={seed}", {"clip": {"method": method}, "seed": seed}, rows)
    (tmp_path / "sweep" / "multirun.yaml").write_text("x: 1\n")
    runs, metrics = load_runs(tmp_path / "sweep")
    assert len(runs) == 3 and list(runs.columns[:1]) == ["run_id"]
    assert sorted(runs["clip.method"]) == ["none", "norm", "norm"]
    assert len(metrics) == 3 * (3 * 2 + 1)
    loss = metrics[(metrics.metric == "train/loss") & (metrics.step == 2)]
    assert list(loss.value) == [0.5, 0.5, 0.5]
    assert metrics[metrics.metric == "eval/H_norm"].value.isna().all()
    only_norm, _ = load_runs(str(tmp_path / "sweep" / "clip=norm*"))
    assert len(only_norm) == 2
    assert find_run_dirs([tmp_path / "sweep" / "clip=none,seed=0" / "summary.json"]) == [
        tmp_path / "sweep" / "clip=none,seed=0"]


class HistoryService:
    """What W&B's HistoryScan asks of wandb-core, answered with W&B's own protobuf messages."""

    def __init__(self, rows):
        self.rows = rows

    def send_api_request(self, request):
        from wandb.proto import wandb_api_pb2 as pb

        asked, response = request.read_run_history_request, pb.ApiResponse()
        if asked.HasField("scan_run_history_init"):
            response.read_run_history_response.scan_run_history_init.request_id = 1
            return response
        low, high = asked.scan_run_history.min_step, asked.scan_run_history.max_step
        for row in self.rows:
            if low <= row["_step"] < high:
                history_row = response.read_run_history_response.run_history.history_rows.add()
                for key, value in row.items():
                    history_row.history_items.add(key=key, value_json=json.dumps(value))
        return response

    def finalize(self, owner, request):
        pass


def test_load_wandb_runs_reads_every_row_through_the_api(tmp_path):
    """A stand-in for wandb.Api around W&B's own types: the summary as HTTPSummary (whose nested
    values come as SummarySubDict, not a Mapping), flattened like a local record; every row
    through HistoryScan, the iterator behind scan_history (never the sampled history), paged."""
    from wandb.apis.public.history import HistoryScan
    from wandb.apis.public.summary import HTTPSummary, SummarySubDict

    rows = [{"_step": s, "step": s, "train/loss": float(s), "_runtime": 0.1} for s in range(1, 701)]
    summary = HTTPSummary(SimpleNamespace(dir=str(tmp_path)), service_api=None, summary={
        "status": "diverged", "diverged_step": 700, "diverged_reason": "non-finite loss", "_timestamp": 5.0,
        "final": {"step": 700, "train/loss": float("inf")}})
    assert isinstance(summary["final"], SummarySubDict)
    run = SimpleNamespace(
        id="abc123", entity="me", project="gradclip",
        config={"clip": {"method": "agc", "clip_factor": 0.01}, "seed": 2, "_wandb": {"x": 1}},
        summary=summary,
        scan_history=lambda: HistoryScan(run, service_api=HistoryService(rows), min_step=1, max_step=701,
                                         page_size=250),
        history=lambda: (_ for _ in ()).throw(AssertionError("history() is down-sampled")),
    )
    calls = []

    class FakeApi:
        def runs(self, path, filters):
            calls.append((path, filters))
            return [run]

    runs, metrics = load_wandb_runs("me", "gradclip", {"group": "stability"}, api=FakeApi())
    assert calls == [("me/gradclip", {"group": "stability"})]
    assert runs.loc[0, "run_id"] == "me/gradclip/abc123"
    assert runs.loc[0, "clip.clip_factor"] == 0.01 and runs.loc[0, "summary.status"] == "diverged"
    assert runs.loc[0, "summary.final.step"] == 700 and runs.loc[0, "summary.final.train/loss"] == float("inf")
    assert runs.loc[0, "reason"] == "non-finite loss"
    assert "_wandb.x" not in runs.columns and "summary._timestamp" not in runs.columns
    assert len(metrics[metrics.metric == "train/loss"]) == 700
    assert set(metrics.metric) == {"train/loss"}
