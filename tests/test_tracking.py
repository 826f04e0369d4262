"""W&B run names and tags: every run of an experiment's sweep is named apart from the others."""

import itertools

import pytest
from omegaconf import OmegaConf

from gradclip.tracking import run_name, run_tags

SWEEPS = {  # the axes each experiment sweeps (configs/experiment/*.yaml and scripts/reproduce.py)
    "step_sizes": {"schedule.power": [0, 0.3, 0.5, 0.6, 0.8, 1.0, 1.5], "seed": [0, 1]},
    "limit_set": {"data.noise.dist": ["gaussian", "lognormal", "student_t"], "clip.threshold": [0.1, 10],
                  "clip.granularity": ["sample", "batch"]},
    "ode_tracking": {"schedule.a0": [0.3, 0.003], "seed": [0, 1]},
    "convergence": {"model": ["mlp", "cnn1d"], "schedule.a0": [3, 30]},
}


@pytest.mark.parametrize("experiment", sorted(SWEEPS))
def test_runs_of_a_sweep_have_distinct_names(make_cfg, experiment):
    axes = SWEEPS[experiment]
    names = set()
    for values in itertools.product(*axes.values()):
        overrides = [f"{key}={value}" for key, value in zip(axes, values)]
        cfg = OmegaConf.to_container(make_cfg(f"+experiment={experiment}", *overrides, tiny=False), resolve=True)
        names.add(run_name(cfg))
        tags = run_tags(cfg)
        assert f"seed:{cfg['seed']}" in tags and f"method:{cfg['clip']['method']}" in tags
    assert len(names) == len(list(itertools.product(*axes.values())))


def test_tags_name_the_noise_and_the_exponent(make_cfg):
    cfg = OmegaConf.to_container(make_cfg("+experiment=limit_set", "data.noise.dist=lognormal"), resolve=True)
    assert {"noise:lognormal", "power:0.6", "data:location", "threshold:1.0"} <= set(run_tags(cfg))
    assert run_name(cfg) == "normtau1.0-batch-linear-location_lognormal-robbins_monro0.6-a1.0-s0"
