"""start=loss_minimum (gradclip.start): a run that begins at the minimum of its training loss with
weight decay, found once per seed and kept for the sweep's other populations and relaunches."""

import math

import numpy as np
import pytest

from gradclip.data import load_dataset
from gradclip.netfield import TanhMLPField
from gradclip.records import load_theta
from gradclip.runner import train, train_population
from gradclip.start import CACHE_FOLDER

SMALL = ["model.width=6", "model.depth=1", "model.activation=tanh", "data.n_train=64", "weight_decay=0.1",
         "start=loss_minimum", "steps=6", "batch_size=8", "eval_every=0", "average_from=0.5"]


def field_of(cfg) -> TanhMLPField:
    data = load_dataset(cfg.data)
    return TanhMLPField(data.x_train.numpy(), data.y_train.numpy(), cfg.model.width, data.num_outputs,
                        cfg.weight_decay)


def test_a_run_starts_at_a_minimum_of_its_loss_with_weight_decay_and_the_search_is_kept(make_cfg, tmp_path):
    """The initial theta zeroes the gradient of L + lambda/2 ||theta||^2 (computed apart, in
    float64, by gradclip.netfield) to float32 rounding, where the seed's initialisation does not;
    the search is kept beside the run, and a second run of the same seed (another population of
    the sweep) reads it and starts at the same bits."""
    cfg = make_cfg(*SMALL)
    first = train(cfg, tmp_path / "sweep" / "a")
    assert first["status"] == "completed" and first["start"]["lbfgs_iterations"] > 10
    assert "cached" not in first["start"] and first["start"]["gradient_norm"] < 1e-6
    field = field_of(cfg)
    start = field.flatten(load_theta(tmp_path / "sweep" / "a")["initial"])
    assert field(start, math.inf).norm() < 1e-5
    plain = make_cfg(*[o for o in SMALL if not o.startswith("start=")])
    train(plain, tmp_path / "plain")
    initialisation = field.flatten(load_theta(tmp_path / "plain")["initial"])
    assert field(initialisation, math.inf).norm() > 1e-2 and (start - initialisation).norm() > 0.1

    kept = list((tmp_path / "sweep" / CACHE_FOLDER).glob("*.pt"))
    assert len(kept) == 1
    again = train(make_cfg(*SMALL, "schedule.a0=0.05"), tmp_path / "sweep" / "b")
    assert again["start"]["cached"] == str(kept[0])
    assert again["start"]["lbfgs_iterations"] == first["start"]["lbfgs_iterations"]
    assert all(np.array_equal(load_theta(tmp_path / "sweep" / "b")["initial"][name], value)
               for name, value in load_theta(tmp_path / "sweep" / "a")["initial"].items())


def test_the_kept_search_is_keyed_by_what_decides_it_and_a_damaged_file_is_searched_again(make_cfg, tmp_path,
                                                                                           caplog):
    """Another seed, another weight decay or other data is its own search; a damaged file is
    searched again (with a warning naming it) and replaced, and the start is the same."""
    train(make_cfg(*SMALL), tmp_path / "sweep" / "a")
    train(make_cfg(*SMALL, "seed=1"), tmp_path / "sweep" / "b")
    train(make_cfg(*SMALL, "weight_decay=0.2"), tmp_path / "sweep" / "c")
    train(make_cfg(*SMALL, "data.n_train=48"), tmp_path / "sweep" / "d")
    kept = sorted((tmp_path / "sweep" / CACHE_FOLDER).glob("*.pt"))
    assert len(kept) == 4
    for path in kept:
        path.write_bytes(b"not a torch file")
    with caplog.at_level("WARNING", logger="gradclip.start"):
        summary = train(make_cfg(*SMALL, "schedule.a0=0.05"), tmp_path / "sweep" / "e")
    assert "cached" not in summary["start"] and "cannot be read" in caplog.text and CACHE_FOLDER in caplog.text
    first, again = load_theta(tmp_path / "sweep" / "a")["initial"], load_theta(tmp_path / "sweep" / "e")["initial"]
    assert all(np.array_equal(again[name], value) for name, value in first.items())
    assert train(make_cfg(*SMALL, "schedule.a0=0.02"), tmp_path / "sweep" / "f")["start"]["cached"]


def test_population_members_of_a_seed_share_its_start_and_match_their_single_runs(make_cfg, tmp_path):
    cfgs = [make_cfg(*SMALL, f"seed={seed}", "clip=norm", "clip.granularity=sample", f"clip.threshold={tau}")
            for seed in (0, 1) for tau in (0.5, 2.0)]
    summaries = train_population(cfgs, [tmp_path / "pop" / str(k) for k in range(4)])
    assert all(s["status"] == "completed" for s in summaries)
    assert [("cached" in s["start"]) for s in summaries] == [False, False, False, False]
    starts = [load_theta(tmp_path / "pop" / str(k))["initial"] for k in range(4)]
    for a, b in ((0, 1), (2, 3)):
        assert all(np.array_equal(starts[a][n], starts[b][n]) for n in starts[a])
    assert not np.array_equal(starts[0]["head.weight"], starts[2]["head.weight"])
    single = train(cfgs[2], tmp_path / "pop" / "single")
    assert single["start"]["cached"]  # the population kept seed 1's search
    alone = load_theta(tmp_path / "pop" / "single")
    assert all(np.array_equal(alone["initial"][n], starts[2][n]) for n in alone["initial"])
    np.testing.assert_allclose(alone["final"]["head.weight"], load_theta(tmp_path / "pop" / "2")["final"]["head.weight"],
                               rtol=1e-5, atol=1e-6)


def test_a_cache_that_cannot_be_written_costs_only_the_search(make_cfg, tmp_path, monkeypatch, caplog):
    """A full disk or read-only folder (write_bytes_atomic's RecordWriteError) and a file where
    the folder should be: the run completes from its own search, and the log says why the
    next will search again; rerun=true searches again even where a kept result exists."""
    import gradclip.start as start
    from gradclip.records import RecordWriteError

    def full_disk(path, data, in_place_on_full_disk=False):
        raise RecordWriteError(path, OSError(28, "No space left on device"))

    monkeypatch.setattr(start, "write_bytes_atomic", full_disk)
    with caplog.at_level("WARNING", logger="gradclip.start"):
        assert train(make_cfg(*SMALL), tmp_path / "full" / "a")["status"] == "completed"
    assert "could not be kept" in caplog.text and "No space left" in caplog.text
    monkeypatch.undo()
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / CACHE_FOLDER).write_text("not a folder")
    assert train(make_cfg(*SMALL), tmp_path / "blocked" / "a")["status"] == "completed"
    train(make_cfg(*SMALL), tmp_path / "sweep" / "a")
    again = train(make_cfg(*SMALL, "rerun=true"), tmp_path / "sweep" / "a")
    assert again["status"] == "completed" and "cached" not in again["start"]


def test_a_record_from_before_start_existed_is_the_same_config(make_cfg, tmp_path):
    """Records written before configs/train.yaml had `start` trained from the initialisation: a
    relaunch of the same config skips them (gradclip.config.ADDED_KEYS) instead of refusing them
    as another config's; start=loss_minimum is another config."""
    import yaml

    from gradclip.checks import ConfigError

    cfg = make_cfg("steps=3", "eval_every=0")
    train(cfg, tmp_path / "old")
    path = tmp_path / "old" / "config.yaml"
    recorded = yaml.safe_load(path.read_text())
    del recorded["start"]
    path.write_text(yaml.safe_dump(recorded))
    assert train(cfg, tmp_path / "old")["skipped"]
    with pytest.raises(ConfigError, match="differing keys: start"):
        train(make_cfg("steps=3", "eval_every=0", "start=loss_minimum"), tmp_path / "old")
