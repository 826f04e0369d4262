"""W&B run names and tags: every run of every experiment's real sweep, at every scale, is named
apart from the others. The sweeps are expanded as Hydra expands them, from the experiment
configs (hydra.sweeper.params) and the overrides scripts/reproduce.py adds at each scale."""

import copy
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from gradclip.tracking import run_name, run_tags
from gradclip.config import CONFIG_DIR
from script_modules import script

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
PARSER = OverridesParser.create()


REPRODUCE = script("reproduce")


@cache
def composed(experiment: str, groups: tuple[str, ...]) -> tuple[dict, dict]:
    """The experiment's config with these group choices, resolved, and its sweeper params."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={experiment}", *groups], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    del cfg.hydra
    return OmegaConf.to_container(cfg, resolve=True), params


@cache
def parsed(override: str):
    return PARSER.parse_override(override)


def sweep_configs(experiment: str, scale: str):
    """Every job's config of every sweep reproduce.py runs for ``experiment`` at ``scale``."""
    for overrides in REPRODUCE.EXPERIMENTS[experiment](scale):
        _, params = composed(experiment, ())
        args = [f"{k}={v}" for k, v in params.items()] + list(overrides)
        (jobs,) = BasicSweeper.split_arguments(PARSER.parse_overrides(args), None)
        for job in jobs:
            groups = tuple(o for o in job if parsed(o).key_or_group in GROUPS)
            cfg = copy.deepcopy(composed(experiment, groups)[0])
            for override in job:
                o = parsed(override)
                if o.key_or_group in GROUPS:
                    continue
                *path, key = o.key_or_group.split(".")
                node = cfg
                for part in path:
                    node = node[part]
                node[key] = o.value()
            yield cfg


@pytest.mark.parametrize("scale", REPRODUCE.SCALES)
@pytest.mark.parametrize("experiment", sorted(REPRODUCE.EXPERIMENTS))
def test_every_run_of_every_sweep_has_its_own_name(experiment, scale):
    names, count = set(), 0
    for cfg in sweep_configs(experiment, scale):
        count += 1
        names.add(run_name(cfg))
        tags = run_tags(cfg)
        assert f"seed:{cfg['seed']}" in tags and f"method:{cfg['clip']['method']}" in tags
    assert count > 0 and len(names) == count


def test_a_preset_names_its_runs_and_tags(make_cfg):
    """deep_tanh is an mlp preset: its runs must not share names and tags with the mlp's."""
    deep, plain = (OmegaConf.to_container(make_cfg(f"model={m}"), resolve=True) for m in ("deep_tanh", "mlp"))
    assert run_name(deep) != run_name(plain)
    assert "model:deep_tanh" in run_tags(deep) and "model:mlp" in run_tags(plain)
    assert run_name(deep) == "normtau1.0-batch-deep_tanh-mnist1d-robbins_monro0.75-a0.1-B16-s0"


def test_tags_name_the_noise_and_the_exponent(make_cfg):
    cfg = OmegaConf.to_container(make_cfg("+experiment=limit_set", "data.noise.dist=lognormal"), resolve=True)
    assert {"noise:lognormal", "power:0.6", "data:location", "threshold:1.0"} <= set(run_tags(cfg))
    assert run_name(cfg) == "normtau1.0-batch-linear-location_lognormal-robbins_monro0.6-a1.0-B16-s0"
