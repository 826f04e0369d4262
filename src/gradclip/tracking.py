"""Weights & Biases mirror of a run's local record.

The local record (gradclip.records) is the source of truth; W&B mirrors the same rows so runs
can be browsed on a dashboard. W&B is offline by default (no account, no network): a single
run's W&B files land in ``<run dir>/wandb/offline-run-*``, a sweep's in one folder for all its
jobs, ``<sweep dir>/wandb/offline-run-*`` (each record's summary names its own under
``wandb``), so ``wandb leet <sweep dir>/wandb`` browses the whole sweep offline and
``wandb sync <sweep dir>/wandb/offline-run-*`` uploads it. Set ``WANDB_MODE=online`` (after
``wandb login``) to log live.

Any W&B failure is reported once as a warning and turns the mirror off: it never stops a run
or loses its local record.
"""

from __future__ import annotations

import logging
import shutil
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies

from gradclip.checks import require_choice, require_known_keys
from gradclip.labels import agc_exemption

log = logging.getLogger(__name__)

LOGGERS = ("none", "wandb")
PROBE_TIMEOUT_S = 3.0
INIT_TIMEOUT_S = 15.0
_probed: dict[str, str | None] = {}  # per process: base URL -> why unreachable (None: reachable)
# The keys of each logger (configs/logger/<name>.yaml) and W&B's modes.
KEYS = {"none": ("name",), "wandb": ("name", "project", "entity", "mode", "group", "tags")}
MODES = ("offline", "online", "disabled")


def validate_logger_config(cfg: Mapping) -> None:
    """Check a ``logger`` config before any work; raise ConfigError naming the key."""
    require_choice(cfg, "logger", "name", LOGGERS)
    require_known_keys(cfg, "logger", KEYS[cfg["name"]], f"logger.name={cfg['name']}")
    if cfg["name"] == "wandb" and cfg.get("mode") is not None:
        require_choice(cfg, "logger", "mode", MODES)


class NullTracker:
    """``logger=none``: keeps only the local record."""

    run_path: str | None = None

    def log(self, row: Mapping) -> None:
        pass

    def finish(self, summary: Mapping, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    """One W&B run per job, finished in ``finish`` (call it from a ``finally``), so jobs that
    share a worker process (joblib's loky reuses them) never merge into one run.

    Online, the W&B server is probed first (a TCP connection, ``PROBE_TIMEOUT_S``), and
    ``wandb.init`` gets ``INIT_TIMEOUT_S`` instead of W&B's 90 s: without a reachable server the
    run is mirrored offline instead (one warning; ``wandb sync`` uploads it later), so that a
    sweep without network costs seconds, not 90 s a job.
    """

    def __init__(
        self,
        wandb_dir: Path,
        config: Mapping,
        *,
        previous: str | None,
        project: str,
        entity: str | None,
        mode: str,
        name: str,
        group: str,
        tags: Sequence[str],
        job_type: str,
    ) -> None:
        self.run = None
        self.run_path = None
        try:
            import wandb

            # A new attempt at this run replaces the W&B files of an earlier one, so that
            # `wandb sync` uploads one run per job.
            if previous and Path(previous).parent == Path(wandb_dir) / "wandb":
                shutil.rmtree(previous, ignore_errors=True)
            if mode == "online":
                unreachable = _unreachable(wandb.setup().settings.base_url)
                if unreachable:
                    log.warning("W&B server %s; this run is mirrored offline instead (upload it later with "
                                "`wandb sync %s/wandb/offline-run-*`)", unreachable, wandb_dir)
                    mode = "offline"
            kwargs = dict(project=project, entity=entity, dir=str(wandb_dir), name=name, group=group, tags=list(tags),
                          job_type=job_type, config=dict(config), reinit="create_new")
            # W&B's own system metadata (git, pip list, hardware) cost ~0.3 s per run, the pip
            # list alone 0.16 s (it reads every installed package's metadata) and finding the git
            # root a git process per run: a population starts dozens of runs. The local summary
            # records versions, commit and host, and W&B gets it at finish.
            settings = dict(console="off", silent=True, x_disable_stats=True, x_disable_meta=True,
                            x_disable_machine_info=True, x_save_requirements=False, save_code=False,
                            disable_git=True, init_timeout=INIT_TIMEOUT_S)
            try:
                self.run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)
            except Exception as error:  # noqa: BLE001 - the server went away between probe and init
                if mode != "online":
                    raise
                log.warning("W&B online init failed (%s: %s); this run is mirrored offline instead",
                            type(error).__name__, error)
                mode = "offline"
                self.run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)
            self.run_path = self.run.path if mode == "online" else str(Path(self.run.dir).parent)
        except Exception as error:  # noqa: BLE001 - W&B must never take the run down
            self._disable("init", error)

    def log(self, row: Mapping) -> None:
        if self.run is None:
            return
        try:
            self.run.log(dict(row), step=int(row["step"]))
        except Exception as error:  # noqa: BLE001
            self._disable("log", error)

    def finish(self, summary: Mapping, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(dict(summary))
            self.run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001
            self._disable("finish", error)
        self.run = None

    def _disable(self, what: str, error: Exception) -> None:
        log.warning("W&B %s failed (%s: %s); the local record is unaffected, W&B is off for this run.",
                    what, type(error).__name__, error)
        if self.run is not None:
            try:
                self.run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass
        self.run = None


def _unreachable(base_url: str) -> str | None:
    """Why the W&B server at ``base_url`` cannot be reached (None if a TCP connection opens).
    Asked once per process: the jobs a worker runs after the first do not wait again."""
    if base_url not in _probed:
        url = urlsplit(base_url)
        if getproxies().get(url.scheme):  # behind a proxy a direct connection proves nothing:
            return None  # wandb.init's own (short) timeout decides
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
            _probed[base_url] = None
        except OSError as error:
            _probed[base_url] = f"{url.hostname}:{port} is unreachable ({error.strerror or error})"
    return _probed[base_url]


def model_label(cfg: Mapping) -> str:
    """The model as a run is named and tagged: its preset (deep_tanh, an mlp) or its class."""
    return cfg["model"].get("preset") or cfg["model"]["name"]


def run_name(cfg: Mapping) -> str:
    """A name a dashboard sorts by: method+setting-granularity-model-data-schedule-a0-batch-seed
    (the model by its preset where it has one: deep_tanh, not mlp; AGC's exemption where it is
    not the default head: agclam0.1_headclipped), with the noise of synthetic data
    (location_lognormal) and MNIST-1D's split where it is not the whole clean set
    (mnist1d_n1000_flip0.4), the exponent of a Robbins-Monro schedule (robbins_monro0.75) and the
    batch size (B64), so that the runs of one sweep never share a name."""
    clip, data, schedule = cfg["clip"], cfg["data"], cfg["schedule"]
    setting = {"norm": f"tau{clip.get('threshold')}", "agc": f"lam{clip.get('clip_factor')}",
               "value": f"v{clip.get('threshold')}"}.get(clip["method"], "")
    exemption = agc_exemption(clip["method"], clip.get("exclude"))
    if exemption:  # AGC with the head clipped is another method than timm's default: its own name
        setting += "_" + exemption.replace(" ", "").replace("*", "")
    noise = f"_{data['noise']['dist']}" if "noise" in data else ""
    power = f"{schedule['power']}" if schedule["name"] == "robbins_monro" else ""
    parts = [clip["method"] + setting, clip["granularity"], model_label(cfg), data["name"] + noise
             + "".join(f"_{SPLIT_NAME[key]}{value}" for key, value in _split(data).items()),
             schedule["name"] + power, f"a{schedule['a0']}", f"B{cfg['batch_size']}", f"s{cfg['seed']}"]
    return "-".join(parts)


def _split(data: Mapping) -> dict:
    """MNIST-1D's training-split settings that make it other than the whole clean set (n_train,
    label_noise, imbalance), by key; none for other data (the synthetic problems' n_train is
    their size, always set)."""
    if data["name"] != "mnist1d":
        return {}
    shown = {"n_train": data.get("n_train") is not None, "label_noise": bool(data.get("label_noise")),
             "imbalance": data.get("imbalance", 1) != 1}
    return {key: data[key] for key, show in shown.items() if show}


# How a run name spells each split setting: _n1000 (a subset), _flip0.4 (label noise), _imb10.
SPLIT_NAME = {"n_train": "n", "label_noise": "flip", "imbalance": "imb"}


def run_tags(cfg: Mapping) -> list[str]:
    """Tags for filtering: each is ``key:value`` for the axes a sweep varies."""
    clip, data, schedule = cfg["clip"], cfg["data"], cfg["schedule"]
    tags = [f"method:{clip['method']}", f"granularity:{clip['granularity']}",
            f"model:{model_label(cfg)}", f"data:{data['name']}",
            f"schedule:{schedule['name']}", f"batch_size:{cfg['batch_size']}", f"seed:{cfg['seed']}"]
    if clip["method"] in ("norm", "value"):
        tags.append(f"threshold:{clip['threshold']}")
    if clip["method"] == "agc":
        tags.append(f"clip_factor:{clip['clip_factor']}")
        tags.append(f"exemption:{agc_exemption('agc', clip.get('exclude')) or 'head'}")
    if "noise" in data:
        tags.append(f"noise:{data['noise']['dist']}")
    tags += [f"{key}:{value}" for key, value in _split(data).items()]
    if schedule["name"] == "robbins_monro":
        tags.append(f"power:{schedule['power']}")
    return tags + list(cfg["logger"].get("tags") or [])


def make_tracker(logger_cfg: Mapping, wandb_dir: Path, config: Mapping, previous: str | None = None):
    """A WandbTracker for ``logger=wandb``, a NullTracker for ``logger=none``.

    ``wandb_dir``: W&B writes under ``<wandb_dir>/wandb/``: a single run's own folder, or the
    sweep's folder, shared by its jobs so that one ``wandb leet`` browses the whole sweep.
    ``previous``: the W&B folder of an earlier attempt at this run, removed first.
    """
    if logger_cfg["name"] == "none":
        return NullTracker()
    mode = logger_cfg.get("mode") or "offline"  # the config's default reads WANDB_MODE
    return WandbTracker(
        wandb_dir,
        config,
        previous=previous,
        project=logger_cfg["project"],
        entity=logger_cfg.get("entity"),
        mode=mode,
        name=run_name(config),
        group=logger_cfg.get("group") or config["name"],
        tags=run_tags(config),
        job_type=config["clip"]["method"],
    )
