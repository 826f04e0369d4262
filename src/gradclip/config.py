"""The run config (configs/train.yaml and its groups): its schema, its checks, which keys make a
run's results, and which may differ between the members of one population.

Every check here needs no data and no model, so bad input fails before any work: one line
naming the key and what is allowed (gradclip.checks.ConfigError).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gradclip import CONFIG_DIR
from gradclip.checks import ConfigError, require_choice, require_int, require_known_keys, require_number
from gradclip.clipping import validate_clip_config
from gradclip.data import validate_data_config
from gradclip.models import validate_model_config
from gradclip.records import flatten
from gradclip.schedules import validate_schedule_config
from gradclip.tracking import validate_logger_config


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
    require_choice(cfg, "cfg", "start", ("init", "loss_minimum"))
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


def validate_resolved(cfg: DictConfig, config: dict) -> None:
    """validate_config(cfg), for a thirtieth of its cost where ``config`` (cfg resolved:
    resolve_config) answers for it: DictConfig's access to each value is what costs. The checks
    look at values only, which are the same in both, except a missing value (???), which
    DictConfig raises on and the dict holds as a string: a config without one that passes here
    passes on cfg. Anything else is checked on cfg, whose error is the one to give."""
    if not _has_missing(config):
        try:
            validate_config(config)
            return
        except Exception:  # noqa: BLE001 - cfg's own check says what is wrong, and how
            pass
    validate_config(cfg)


def _has_missing(value) -> bool:
    if isinstance(value, dict):
        return any(_has_missing(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_missing(v) for v in value)
    return isinstance(value, str) and value == "???"


class ResolvedConfigs:
    """OmegaConf.create(config) of resolved configs (plain dicts: resolve_config), at a tenth of
    its cost for a config of a *shape* seen before (the same keys, in the same order, and lists
    of the same lengths): the jobs of a sweep have a few shapes, and differ in a few values.
    The first config of a shape is created by OmegaConf and kept pickled; the next ones are
    that one unpickled, with the value of each leaf that differs set on its node, as creating
    it would have set it (OmegaConf.create makes every leaf an AnyNode of its value). A config
    holding anything but dicts with str keys, lists and plain scalars is left to OmegaConf."""

    MAX_SHAPES = 64

    def __init__(self) -> None:
        self.shapes: dict[tuple, tuple[bytes, list, list]] = {}  # shape -> (pickled, leaves, their paths)

    def create(self, config: dict) -> DictConfig:
        shape, leaves = [], []
        if not _flatten_plain(config, shape, leaves):
            return OmegaConf.create(config)
        known = self.shapes.get(tuple(shape))
        if known is None:
            created = OmegaConf.create(config)
            if len(self.shapes) >= self.MAX_SHAPES:
                self.shapes.clear()
            paths: list = []
            _leaf_paths(config, (), paths)
            self.shapes[tuple(shape)] = (pickle.dumps(created, protocol=pickle.HIGHEST_PROTOCOL), leaves, paths)
            return created
        blob, known_leaves, paths = known
        created = pickle.loads(blob)
        for value, known_value, path in zip(leaves, known_leaves, paths):
            if not _same(value, known_value):
                node = created
                for key in path:
                    node = node._get_node(key)
                node._set_value(value)
        return created


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _flatten_plain(value, shape: list, leaves: list) -> bool:
    """Append ``value``'s shape (its keys and list lengths) to ``shape`` and its leaves to
    ``leaves``, in order; False if it holds anything else than ResolvedConfigs handles."""
    # Tokens: dict, then key (a str) and value after value, then None; list, then its length,
    # then its items; 0 for a leaf. No two shapes give the same tokens.
    if type(value) is dict:
        shape.append(dict)
        for key, item in value.items():
            if type(key) is not str:
                return False
            shape.append(key)
            if not _flatten_plain(item, shape, leaves):
                return False
        shape.append(None)
    elif type(value) is list:
        shape.append(list)
        shape.append(len(value))
        for item in value:
            if not _flatten_plain(item, shape, leaves):
                return False
    elif type(value) in _PLAIN_SCALARS:
        shape.append(0)
        leaves.append(value)
    else:
        return False
    return True


def _leaf_paths(value, path: tuple, paths: list) -> None:
    """The keys (and list indices) leading to each leaf, in _flatten_plain's order."""
    if type(value) is dict:
        for key, item in value.items():
            _leaf_paths(item, path + (key,), paths)
    elif type(value) is list:
        for index, item in enumerate(value):
            _leaf_paths(item, path + (index,), paths)
    else:
        paths.append(path)


def _same(a, b) -> bool:
    """The same value of the same type (1 == 1.0 == True, and 0.0 == -0.0, are not the same)."""
    return type(a) is type(b) and (a.hex() == b.hex() if type(a) is float else a == b)


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


# Keys added to configs/train.yaml after runs were recorded, with the value that every run
# recorded without them trained under: such a record compares equal to a config holding that
# value, so that a relaunch into an older sweep folder skips its finished runs rather than
# refusing them as another config's. (Keys whose default is null need no entry.)
ADDED_KEYS = {"start": "init"}


def result_config(config: Mapping) -> dict:
    """The resolved config, flattened, without NON_RESULT_KEYS (and what lies under them); a key
    of ADDED_KEYS that it lacks, at its value there."""
    return {**ADDED_KEYS, **_without(flatten(config), NON_RESULT_KEYS)}


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
