"""Shared fixtures: real configs composed from configs/, data cached once per test session."""

import os

import pytest
from hydra import compose, initialize_config_dir

from gradclip.config import CONFIG_DIR

# Tiny but real: MNIST-1D, the default MLP, a few dozen steps, W&B off unless a test turns it on.
TINY = ["steps=30", "batch_size=16", "log_every=5", "eval_every=10", "eval_chunk=1000",
        "logger=none", "progress=false"]


def pytest_configure(config):
    """`make test` runs the tests not marked slow in pytest-xdist processes, one a core: torch's
    own threads in each would then only compete, and did (on this project's 2 cores, two
    processes of two threads took 117 s, against 130 s serial; of one thread each, 86 s).
    The processes the tests launch (sweeps, workers) set their threads themselves."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def data_root(tmp_path_factory):
    """One data cache for the whole session (MNIST-1D is generated once)."""
    root = tmp_path_factory.mktemp("data")
    os.environ["GRADCLIP_DATA"] = str(root)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    return root


@pytest.fixture
def make_cfg():
    """Compose configs/train.yaml with overrides, exactly as the command line would."""

    def _make(*overrides: str, tiny: bool = True):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("train", overrides=(TINY if tiny else []) + list(overrides))

    return _make
