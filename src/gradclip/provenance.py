"""What a run records about the code and software that made it: the git commit (and whether
tracked files had uncommitted changes) and the versions of the packages that matter."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import gradclip


def git_state() -> dict:
    """The commit of the code that ran, and whether tracked files had uncommitted changes."""
    repo = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    """Versions of Python and of every package a run's results depend on. wandb's comes from its
    metadata: importing it (for logger=none) costs a second and leaves temporary folders behind
    if the process is killed."""
    import hydra
    import numpy
    import omegaconf
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "hydra": hydra.__version__, "omegaconf": omegaconf.__version__,
            "wandb": _installed("wandb"), "gradclip": gradclip.__version__}


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
