"""What a run records about the code and software that made it: the git commit (and whether
tracked files had uncommitted changes) and the versions of the packages that matter."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
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
    if the process is killed. torchvision's comes from its version file, as its import would
    give it (with the build, e.g. ``+cu130``, which its metadata lacks), without the import's
    1.4 s."""
    import hydra
    import numpy
    import omegaconf
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": _torchvision_version(), "numpy": numpy.__version__,
            "hydra": hydra.__version__, "omegaconf": omegaconf.__version__,
            "wandb": _installed("wandb"), "gradclip": gradclip.__version__}


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torchvision_version() -> str | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
        found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    except OSError:
        found = None
    if found:
        return found.group(1)
    import torchvision  # another layout: ask the package

    return torchvision.__version__
