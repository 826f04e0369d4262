"""Data sets for the clipped-SGD experiments, built from a ``data`` config.

:func:`load_dataset` returns a whole data set as in-memory tensors (:class:`Dataset`). Inputs
are float32; classification targets are int64 ``[N]``, regression targets float32 ``[N, 1]``.
Everything is deterministic given ``data.seed``, which is the *data-generation* seed: the data
stay fixed while the training seed varies. No global state is changed (the global ``random``
and numpy RNG states are restored after MNIST-1D generation).

Data sets (config files under ``configs/data/``):

- ``mnist1d``: MNIST-1D (Greydanus 2020), generated locally with
  ``mnist1d.data.make_dataset`` and the library's default arguments except ``seed``: 4000
  train / 1000 test signals of length 40, 10 classes. The generated arrays are cached in
  ``<root>/mnist1d_seed<seed>.npz``. ``make_dataset`` already centres and scales the whole set
  (train and test together); with ``standardize=true`` we standardise again with the *train*
  mean and std (one scalar each, over all features), so no test statistics leak into the inputs.
  ``n_train`` keeps a seeded subset of the training split; ``label_noise`` and ``imbalance``
  corrupt the training split only (see ``_training_split``).
- ``digits``: scikit-learn's 8x8 digits (bundled, no download), inputs ``[N, 64]`` in [0, 1],
  10 classes, split by a seeded permutation into ``1 - test_fraction`` / ``test_fraction``.
- ``location``: the location problem of the paper, loss 1/2 (theta - y)^2. Inputs are all ones
  ``[N, 1]`` (so a bias-free linear model's weight is theta); targets are ``loc + noise``.
- ``linreg``: linear regression, x ~ N(0, I_dim), y = x @ beta + bias + noise, with
  beta ~ N(0, I_dim / dim) drawn once from the seed (shared by train and test).
- ``mnist``, ``fashion_mnist``, ``cifar10``: torchvision data sets read from ``root`` (nothing
  is downloaded unless ``download=true``), as ``[N, C, H, W]`` in [0, 1], optionally
  standardised per channel with train statistics. Missing files raise :class:`DataError` naming
  the directory torchvision expects; directories created by a failed attempt are removed.

Noise models (``data.noise`` of the synthetic problems; the draw is multiplied by ``scale``):

- ``gaussian``: Z ~ N(0, 1). Symmetric: mean = median = 0.
- ``student_t``: Student's t with ``df`` degrees of freedom. Symmetric, heavy tails: the
  variance is infinite for df <= 2 and the mean undefined for df <= 1.
- ``mixture``: a symmetric scale mixture (Huber's contaminated normal): N(0, 1) with probability
  1 - ``mixture_weight``, N(0, ``mixture_scale``^2) otherwise. Symmetric, with outliers.
- ``lognormal``: exp(sigma * Z). Skewed and deliberately NOT centred: its mean
  exp(sigma^2 / 2) differs from its median 1, so the minimiser of the expected squared loss
  (the mean) differs from the median. That gap is the point of this noise model.
- ``exponential``: Exp(1). Skewed and not centred, with a lighter tail: mean 1, median log 2.

Train and test draws come from independent streams of ``numpy.random.SeedSequence(seed)``, so
changing ``n_test`` does not change the training data.

``root`` may be relative: it is resolved against the current working directory at load time.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from gradclip.checks import BOOL, FINITE, ConfigError, Rule, int_at_least, is_int, is_number

DATASETS: tuple[str, ...] = (
    "mnist1d", "digits", "location", "linreg", "mnist", "fashion_mnist", "cifar10",
)
NOISE_DISTS: tuple[str, ...] = ("gaussian", "student_t", "mixture", "lognormal", "exponential")
SYMMETRIC_NOISE: tuple[str, ...] = ("gaussian", "student_t", "mixture")  # the others are skewed


class DataError(ConfigError):
    """A bad data config, or data files that are missing or could not be fetched.

    The message names the key (``data.<key>``) and what is allowed, or where to put the files.
    """


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class Dataset:
    """A whole data set in memory. See the module docstring for dtypes and shapes."""

    name: str
    task: str  # "classification" or "regression"
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_outputs: int  # number of classes, or 1 for regression

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with all four tensors on ``device`` (the training loop moves data once)."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


# ----------------------------------------------------------------------------- config checking


def _positive() -> Rule:
    return "a finite number > 0", lambda v: is_number(v) and v > 0


# np.random.seed (used inside mnist1d) accepts exactly this range.
_SEED: Rule = ("an integer in [0, 2**32 - 1]", lambda v: is_int(v) and 0 <= v < 2**32)
_ROOT: Rule = ("a non-empty path", lambda v: isinstance(v, (str, os.PathLike)) and str(v) != "")
_FRACTION: Rule = ("a number in the open interval (0, 1)", lambda v: is_number(v) and 0 < v < 1)
_PROPORTION: Rule = ("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1)

_NOISE_SPEC: dict[str, tuple[Any, Rule]] = {
    "dist": ("gaussian", ("one of: " + ", ".join(NOISE_DISTS), lambda v: v in NOISE_DISTS)),
    "scale": (1.0, _positive()),
    "df": (3.0, _positive()),
    "sigma": (1.0, _positive()),
    "mixture_weight": (0.1, _FRACTION),
    "mixture_scale": (10.0, _positive()),
}
_NOISE = "noise"  # marks the nested noise sub-config in _SPECS

# Per data set: key -> (default, rule). configs/data/*.yaml repeat these defaults. The root
# default is filled in at resolve time (it reads GRADCLIP_DATA, like the YAML files).
_COMMON: dict[str, tuple[Any, Rule]] = {"root": (None, _ROOT), "seed": (0, _SEED)}
_IMAGES: dict[str, tuple[Any, Rule]] = {"download": (False, BOOL), "standardize": (True, BOOL)}
_SYNTHETIC: dict[str, tuple[Any, Rule]] = {
    "n_train": (1000, int_at_least(1)),
    "n_test": (1000, int_at_least(1)),
    _NOISE: (None, ("a mapping", lambda v: isinstance(v, Mapping))),
}
MNIST1D_TRAIN = 4000  # training examples of MNIST-1D with the library's default arguments
_SPECS: dict[str, dict[str, tuple[Any, Rule]]] = {
    "mnist1d": {**_COMMON, "standardize": (True, BOOL),
                "n_train": (None, (f"null (all {MNIST1D_TRAIN}) or an integer in [1, {MNIST1D_TRAIN}]",
                                   lambda v: v is None or (is_int(v) and 1 <= v <= MNIST1D_TRAIN))),
                "label_noise": (0.0, _PROPORTION),
                "imbalance": (1.0, ("a number >= 1", lambda v: is_number(v) and v >= 1))},
    "digits": {**_COMMON, "test_fraction": (0.2, _FRACTION)},
    "location": {**_COMMON, **_SYNTHETIC, "loc": (0.0, FINITE)},
    "linreg": {**_COMMON, **_SYNTHETIC, "dim": (5, int_at_least(1)), "bias": (0.0, FINITE)},
    "mnist": {**_COMMON, **_IMAGES},
    "fashion_mnist": {**_COMMON, **_IMAGES},
    "cifar10": {**_COMMON, **_IMAGES},
}


def _check_keys(cfg: Mapping, spec: Mapping[str, Any], section: str, owner: str) -> dict[str, Any]:
    """Fill in defaults and check every value; unknown keys are errors, so that a typo
    (data.n_trian) does not silently fall back to the default."""
    unknown = sorted(str(k) for k in cfg if k != "name" and k not in spec)
    if unknown:
        raise DataError(
            f"{section}.{unknown[0]} is not a key of {owner}; allowed keys: {', '.join(spec)}"
        )
    params = {key: cfg.get(key, default) for key, (default, _) in spec.items()}
    for key, (_, (allowed, ok)) in spec.items():
        value = params[key]
        if key == _NOISE and value is None:
            value = params[key] = {}
        if key == "root" and value is None:
            value = params[key] = os.environ.get("GRADCLIP_DATA", "data")
        if not ok(value):
            verb = "is not" if allowed.startswith("one of") else "must be"
            raise DataError(f"{section}.{key}={value!r} {verb} {allowed}")
        if key == _NOISE:
            params[key] = _check_keys(value, _NOISE_SPEC, f"{section}.noise", "data.noise")
    return params


def _resolve(cfg: Mapping[str, Any] | DictConfig) -> tuple[str, dict[str, Any]]:
    """Return the data set name and its keys with defaults filled in, or raise DataError."""
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except Exception as e:  # missing (???) value or broken interpolation
            raise DataError(f"data config could not be resolved: {e}") from e
    if not isinstance(cfg, Mapping):
        raise DataError(
            f"data config must be a mapping with a 'name' key; got {type(cfg).__name__}"
        )
    name = cfg.get("name")
    if name not in DATASETS:
        raise DataError(f"data.name={name!r} is not one of: {', '.join(DATASETS)}")
    return name, _check_keys(cfg, _SPECS[name], "data", f"data.name={name!r}")


def validate_data_config(cfg: Mapping[str, Any] | DictConfig) -> None:
    """Check the data config's name, keys and values (cheap: no file access, no generation)."""
    _resolve(cfg)


def load_dataset(cfg: Mapping[str, Any] | DictConfig) -> Dataset:
    """Load (generating or reading from ``root`` as needed) the data set ``cfg.name``."""
    name, p = _resolve(cfg)
    root = Path(os.path.abspath(os.path.expanduser(str(p["root"]))))
    if name == "mnist1d":
        return _training_split(_mnist1d(root, p["seed"], p["standardize"]), p["seed"], p["n_train"], p["imbalance"],
                               p["label_noise"])
    if name == "digits":
        return _digits(p["seed"], p["test_fraction"])
    if name == "location":
        return _location(p)
    if name == "linreg":
        return _linreg(p)
    return _torchvision(name, root, p["download"], p["standardize"])


# ----------------------------------------------------------------------------- MNIST-1D


def _mnist1d(root: Path, seed: int, standardize: bool) -> Dataset:
    path = root / f"mnist1d_seed{seed}.npz"
    arrays = _read_npz(path)
    if arrays is None:
        arrays = _generate_mnist1d(seed)
        _write_npz_atomic(path, arrays)
    x_train, x_test = arrays["x"], arrays["x_test"]
    if standardize:
        mean, std = x_train.mean(), x_train.std()
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Dataset(
        name="mnist1d",
        task="classification",
        x_train=torch.from_numpy(x_train.astype(np.float32)),
        y_train=torch.from_numpy(arrays["y"].astype(np.int64)),
        x_test=torch.from_numpy(x_test.astype(np.float32)),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_outputs=10,
    )


def _training_split(data: Dataset, seed: int, n_train: int | None, imbalance: float, label_noise: float) -> Dataset:
    """The training split cut to a subset, made imbalanced and its labels noisy, in that order;
    the test split is left whole, clean and balanced, so that test accuracy measures the clean
    task. With ``n_train`` = m, m training examples drawn from the data seed are kept (in their
    original order; inputs keep the whole split's standardisation). With ``imbalance`` = r > 1 the upper
    half of the classes (5-9 of 10) keep ceil(n_c / r) of their n_c training examples, a subset
    drawn from the data seed; with ``label_noise`` = q > 0, round(q n) training examples drawn
    from the data seed get a label drawn uniformly from the other classes (so a fraction q of the
    labels is wrong). All three are fixed by the data seed alone: every training seed sees the
    same subset and the same corrupted set."""
    if n_train is None and imbalance == 1 and label_noise == 0:
        return data
    x, y = data.x_train.numpy(), data.y_train.numpy().copy()
    if n_train is not None:
        kept = np.random.default_rng(np.random.SeedSequence([seed, 0x5B5E7])).permutation(len(y))[:n_train]
        x, y = x[np.sort(kept)], y[np.sort(kept)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1AB]))  # apart from the generator's own stream
    classes = data.num_outputs
    if imbalance > 1:
        keep = np.ones(len(y), dtype=bool)
        for c in range(classes // 2, classes):
            members = np.flatnonzero(y == c)
            dropped = rng.permutation(members)[math.ceil(len(members) / imbalance):]
            keep[dropped] = False
        x, y = x[keep], y[keep]
    if label_noise > 0:
        flipped = rng.choice(len(y), size=round(label_noise * len(y)), replace=False)
        y[flipped] = (y[flipped] + rng.integers(1, classes, size=len(flipped))) % classes
    return replace(data, x_train=torch.from_numpy(np.ascontiguousarray(x)), y_train=torch.from_numpy(y))


def _generate_mnist1d(seed: int) -> dict[str, np.ndarray]:
    # Imported here: mnist1d pulls in matplotlib and requests at import time.
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.seed = seed
    # make_dataset reseeds the global random and numpy RNGs; put them back for the caller.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = mnist1d.data.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: np.asarray(data[key]) for key in ("x", "y", "x_test", "y_test")}


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if there is no readable cache (then it is regenerated)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return {key: f[key] for key in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # regenerate it
        return None


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temp file in the same directory, then rename: parallel jobs never see a
    half-written cache, and concurrent writers of identical data just replace each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- digits


def _digits(seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    n_test = round(test_fraction * len(y))
    if not 1 <= n_test < len(y):
        raise DataError(
            f"data.test_fraction={test_fraction!r} leaves {n_test} of {len(y)} digits for testing; "
            "both splits need at least one example"
        )
    perm = np.random.default_rng(seed).permutation(len(y))
    test, train = perm[:n_test], perm[n_test:]
    return Dataset(
        name="digits",
        task="classification",
        x_train=torch.from_numpy(x[train]),
        y_train=torch.from_numpy(y[train]),
        x_test=torch.from_numpy(x[test]),
        y_test=torch.from_numpy(y[test]),
        num_outputs=10,
    )


# ----------------------------------------------------------------------------- synthetic


def _noise(rng: np.random.Generator, n: int, noise: Mapping[str, Any]) -> np.ndarray:
    """``n`` noise draws (see the module docstring for the models)."""
    dist = noise["dist"]
    if dist == "gaussian":
        z = rng.standard_normal(n)
    elif dist == "student_t":
        z = rng.standard_t(noise["df"], n)
    elif dist == "mixture":  # symmetric: a wide normal with probability mixture_weight
        wide = rng.random(n) < noise["mixture_weight"]
        z = rng.standard_normal(n) * np.where(wide, noise["mixture_scale"], 1.0)
    elif dist == "exponential":  # not centred on purpose, mean 1 > median log 2
        z = rng.exponential(1.0, n)
    else:  # lognormal: not centred on purpose, mean exp(sigma^2/2) > median 1
        z = np.exp(noise["sigma"] * rng.standard_normal(n))
    return noise["scale"] * z


def _regression(name: str, x_train: np.ndarray, y_train: np.ndarray,
                x_test: np.ndarray, y_test: np.ndarray) -> Dataset:
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return Dataset(
        name=name,
        task="regression",
        x_train=t(x_train),
        y_train=t(y_train.reshape(-1, 1)),
        x_test=t(x_test),
        y_test=t(y_test.reshape(-1, 1)),
        num_outputs=1,
    )


def _location(p: Mapping[str, Any]) -> Dataset:
    rng_train, rng_test = (
        np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(2)
    )
    n_train, n_test = p["n_train"], p["n_test"]
    return _regression(
        "location",
        np.ones((n_train, 1)),
        p["loc"] + _noise(rng_train, n_train, p["noise"]),
        np.ones((n_test, 1)),
        p["loc"] + _noise(rng_test, n_test, p["noise"]),
    )


def _linreg(p: Mapping[str, Any]) -> Dataset:
    rng_beta, rng_train, rng_test = (
        np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(3)
    )
    dim = p["dim"]
    beta = rng_beta.normal(0.0, 1.0 / math.sqrt(dim), size=dim)  # E||beta||^2 = 1

    def split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, dim))
        return x, x @ beta + p["bias"] + _noise(rng, n, p["noise"])

    return _regression("linreg", *split(rng_train, p["n_train"]), *split(rng_test, p["n_test"]))


# ----------------------------------------------------------------------------- torchvision

_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _expected_layout(cls: type, root: Path) -> tuple[Path, list[str]]:
    """The directory torchvision reads and the file names it needs there."""
    if hasattr(cls, "base_folder"):  # CIFAR: python pickles in <root>/cifar-10-batches-py
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return root / cls.base_folder, files
    # MNIST-like: uncompressed idx files in <root>/<ClassName>/raw
    files = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    return root / cls.__name__ / "raw", files


def _remove_new_empty_dirs(dirs: list[Path]) -> None:
    """Remove the directories in ``dirs`` (ones that did not exist before) if they are empty,
    deepest first, so a failed attempt leaves no empty folders behind."""
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        try:
            d.rmdir()  # only succeeds on an empty directory
        except OSError:
            pass


def _torchvision(name: str, root: Path, download: bool, standardize: bool) -> Dataset:
    import torchvision.datasets  # slow to import; only needed here

    cls = getattr(torchvision.datasets, _TORCHVISION_CLASS[name])
    folder, files = _expected_layout(cls, root)
    # Directories torchvision may create: the data folders, root and root's missing parents.
    watched = [folder, root / cls.__name__, root / cls.__name__ / "processed", root, *root.parents]
    new_dirs = [d for d in watched if not d.exists()]
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except Exception as e:
        _remove_new_empty_dirs(new_dirs)
        if download:
            raise DataError(
                f"data.name={name!r}: downloading {cls.__name__} into {folder} failed "
                f"({type(e).__name__}: {e}). Without network access, copy the files "
                f"({', '.join(files)}) into {folder} and set data.download=false."
            ) from e
        if not isinstance(e, RuntimeError):  # torchvision's "not found"; anything else is a bug
            raise
        raise DataError(
            f"data.name={name!r}: {cls.__name__} files not found (or corrupted) in {folder}. "
            f"Put {', '.join(files)} there (or point data.root / GRADCLIP_DATA at the directory "
            f"that holds {folder.relative_to(root)}), or set data.download=true to fetch them "
            "where the network allows."
        ) from e

    x_train, x_test = _images(train.data), _images(test.data)
    if standardize:
        var, mean = torch.var_mean(x_train, dim=(0, 2, 3), correction=0, keepdim=True)
        std = var.sqrt().clamp_min(1e-8)  # guards a constant channel
        x_train.sub_(mean).div_(std)
        x_test.sub_(mean).div_(std)
    return Dataset(
        name=name,
        task="classification",
        x_train=x_train,
        y_train=torch.as_tensor(train.targets, dtype=torch.int64),
        x_test=x_test,
        y_test=torch.as_tensor(test.targets, dtype=torch.int64),
        num_outputs=len(train.classes),
    )


def _images(data: Any) -> torch.Tensor:
    """uint8 images ([N, H, W] tensor, or [N, H, W, C] array for CIFAR) -> float32 [N, C, H, W]
    in [0, 1]."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous().to(torch.float32).div_(255.0)
