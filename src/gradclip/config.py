"""The run config (configs/train.yaml and its groups): its schema, its checks, which keys make a
run's results, and which may differ between the members of one population.

Every check here needs no data and no model, so bad input fails before any work: one line
naming the key and what is allowed (gradclip.checks.ConfigError).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gradclip.checks import ConfigError, require_choice, require_int, require_known_keys, require_number
from gradclip.clipping import validate_clip_config
from gradclip.data import validate_data_config
from gradclip.models import validate_model_config
from gradclip.records import flatten
from gradclip.schedules import validate_schedule_config
from gradclip.tracking import validate_logger_config

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def _schema_keys() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The top-level keys of configs/train.yaml (its config groups included) and those of its
    ``divergence`` section: the schema that a key added with ``+`` must belong to."""
    with open(Path(CONFIG_DIR) / "train.yaml") as f:
        primary = yaml.safe_load(f)
    groups = [next(iter(entry)) for entry in primary["defaults"] if isinstance(entry, dict)]
    top = [key for key in primary if key not in ("defaults", "hydra")] + groups
    return tuple(top), tuple(primary["divergence"])


TOP_KEYS, DIVERGENCE_KEYS = _schema_keys()


def resolve_config(cfg: DictConfig) -> dict:
    """The config with every interpolation resolved, as a plain dict; a broken interpolation is
    bad input (ConfigError naming the key)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:  # e.g. schedule.a0=${oops}
        raise ConfigError(f"the config cannot be resolved: {str(error).splitlines()[0]} "
                          f"(key {getattr(error, 'full_key', '?')})") from None


def validate_config(cfg: Mapping) -> None:
    """Every check that needs no data or model: bad input fails here, before any work."""
    require_known_keys(cfg, "cfg", TOP_KEYS, "configs/train.yaml")
    require_known_keys(cfg["divergence"], "divergence", DIVERGENCE_KEYS)
    require_int(cfg, "cfg", "steps", lambda v: v >= 1, "an integer >= 1")
    require_int(cfg, "cfg", "batch_size", lambda v: v >= 1, "an integer >= 1")
    require_int(cfg, "cfg", "seed", lambda v: 0 <= v < 2**63, "an integer >= 0")
    require_int(cfg, "cfg", "log_every", lambda v: v >= 1, "an integer >= 1")
    require_int(cfg, "cfg", "eval_every", lambda v: v >= 0, "an integer >= 0 (0: no evaluation)")
    require_int(cfg, "cfg", "eval_log_points", lambda v: v >= 0, "an integer >= 0 (0: none)")
    require_int(cfg, "cfg", "eval_chunk", lambda v: v >= 1, "an integer >= 1")
    require_int(cfg, "cfg", "unit_log_every", lambda v: v >= 0, "an integer >= 0 (0: off)")
    if cfg.get("threads") is not None:
        require_int(cfg, "cfg", "threads", lambda v: v >= 1, "null or an integer >= 1")
    if cfg.get("average_from") is not None:
        require_number(cfg, "cfg", "average_from", lambda v: 0 <= v < 1, "in [0, 1) (or null: off)")
    require_number(cfg, "cfg", "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    require_number(cfg, "cfg", "weight_decay", lambda v: v >= 0, ">= 0")
    require_number(cfg["divergence"], "divergence", "max_norm", lambda v: v > 0, "> 0")
    require_choice(cfg, "cfg", "device", ("auto", "cpu", "cuda"))
    require_choice(cfg, "cfg", "sampling", ("iid", "shuffle"))
    require_choice(cfg, "cfg", "per_sample", ("auto", "vmap"))
    require_choice(cfg, "cfg", "progress", (True, False, "auto"))
    require_choice(cfg, "cfg", "log_theta", (True, False))
    require_choice(cfg, "cfg", "deterministic", (True, False))
    require_choice(cfg, "cfg", "rerun", (True, False))
    validate_logger_config(cfg["logger"])
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch finds no CUDA device here; use device=auto or device=cpu")
    validate_clip_config(cfg["clip"])
    validate_schedule_config(cfg["schedule"], cfg["steps"])
    validate_model_config(cfg["model"])
    validate_data_config(cfg["data"])


# Keys that do not change a run's results: a finished record with other values for them is
# still this run's record (configs/train.yaml leaves most of them out of sweep folder names too).
NON_RESULT_KEYS = ("name", "output_root", "logger", "progress", "rerun", "device", "threads",
                   "eval_chunk", "data.root", "model.preset", "per_sample")

# Keys in which the members of one population may differ: each member has its own seed (its
# initialisation and mini-batches), step sizes, clipping threshold and AGC factor. Everything
# else (model, data, batch size, steps, clipping method, logging) is shared.
POPULATION_KEYS = ("seed", "schedule", "clip.threshold", "clip.clip_factor")


def _without(flat: dict, prefixes: tuple[str, ...]) -> dict:
    return {key: value for key, value in flat.items()
            if not any(key == skip or key.startswith(skip + ".") for skip in prefixes)}


def result_config(config: Mapping) -> dict:
    """The resolved config, flattened, without NON_RESULT_KEYS (and what lies under them)."""
    return _without(flatten(config), NON_RESULT_KEYS)


def population_key(config: Mapping) -> str:
    """What the runs of one population must share: two configs with the same key train
    together (gradclip.population). They may differ in POPULATION_KEYS and in NON_RESULT_KEYS,
    except ``device``, ``threads`` and ``per_sample``, which the whole population uses."""
    shared = _without(flatten(config), tuple(k for k in NON_RESULT_KEYS if k not in ("device", "threads", "per_sample"))
                      + POPULATION_KEYS)
    return repr(sorted(shared.items()))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
