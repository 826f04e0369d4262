"""Tests for gradclip.data: shapes, determinism, caching, noise models and config errors."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gradclip.data import DATASETS, DataError, Dataset, load_dataset, validate_data_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"


def cfg(**kw):
    return OmegaConf.create(kw)


def tree(path: Path) -> list[str]:
    """Everything under ``path`` (files and directories), to check nothing was left behind."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def assert_same(a: Dataset, b: Dataset) -> None:
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


# ----------------------------------------------------------------------------- mnist1d


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory) -> Path:
    """Generate MNIST-1D (seed 0) once; checks RNG restoration and caching on the way."""
    root = tmp_path_factory.mktemp("mnist1d")
    random.seed(123)
    np.random.seed(123)
    py_state, np_state = random.getstate(), np.random.get_state()

    load_dataset(cfg(name="mnist1d", root=str(root)))

    # make_dataset reseeds both global RNGs; load_dataset must have put them back.
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]
    assert os.listdir(root) == ["mnist1d_seed0.npz"]  # no temp files left behind
    return root


def test_mnist1d_shapes(mnist1d_cache):
    d = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache)))
    assert (d.name, d.task, d.num_outputs) == ("mnist1d", "classification", 10)
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.y_train.shape == (4000,) and d.y_test.shape == (1000,)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.input_shape == (40,) and d.num_train == 4000
    assert set(d.y_train.tolist()) == set(range(10))
    # standardize=true: train statistics (scalar) are 0 and 1.
    assert abs(d.x_train.mean().item()) < 1e-4
    assert abs(d.x_train.std(correction=0).item() - 1) < 1e-4


def test_mnist1d_label_noise_and_imbalance_corrupt_the_training_split_only(mnist1d_cache):
    clean = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache)))
    noisy = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), label_noise=0.2))
    wrong = (noisy.y_train != clean.y_train)
    assert int(wrong.sum()) == 800 and torch.equal(noisy.x_train, clean.x_train)  # 20% of 4000, always another class
    assert torch.equal(noisy.y_test, clean.y_test) and torch.equal(noisy.x_test, clean.x_test)
    again = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), label_noise=0.2))
    assert torch.equal(again.y_train, noisy.y_train)  # fixed by the data seed
    flipped_to = noisy.y_train[wrong]
    assert len(set(flipped_to.tolist())) == 10  # to every class
    skewed = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), imbalance=10))
    counts = np.bincount(skewed.y_train.numpy(), minlength=10)
    full = np.bincount(clean.y_train.numpy(), minlength=10)
    assert np.array_equal(counts[:5], full[:5]) and np.array_equal(counts[5:], np.ceil(full[5:] / 10).astype(int))
    assert skewed.num_train == counts.sum() and torch.equal(skewed.y_test, clean.y_test)
    both = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), imbalance=10, label_noise=0.4))
    assert both.num_train == skewed.num_train and int((both.y_train != skewed.y_train).sum()) == round(
        0.4 * skewed.num_train)


def test_mnist1d_n_train_keeps_a_seeded_subset_of_the_training_split(mnist1d_cache):
    clean = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache)))
    small = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), n_train=512))
    assert small.num_train == 512 and torch.equal(small.x_test, clean.x_test) and torch.equal(small.y_test, clean.y_test)
    # Rows of the whole split, in its order, with their labels and its standardisation.
    rows = {tuple(x.tolist()): k for k, x in enumerate(clean.x_train)}
    index = [rows[tuple(x.tolist())] for x in small.x_train]
    assert index == sorted(index) and len(set(index)) == 512
    assert torch.equal(small.y_train, clean.y_train[index])
    assert torch.equal(load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), n_train=512)).x_train, small.x_train)
    assert torch.equal(load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), n_train=4000)).x_train, clean.x_train)
    noisy = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), n_train=512, label_noise=0.25))
    assert torch.equal(noisy.x_train, small.x_train) and int((noisy.y_train != small.y_train).sum()) == 128


def test_mnist1d_reads_cache(mnist1d_cache, monkeypatch):
    import mnist1d.data

    generated = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache)))

    def fail(*args, **kwargs):
        raise AssertionError("make_dataset called although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    cached = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache)))
    assert_same(generated, cached)


def test_mnist1d_standardize_false_keeps_library_scaling(mnist1d_cache):
    raw = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), standardize=False))
    std = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache), standardize=True))
    assert torch.equal(raw.y_train, std.y_train)
    assert not torch.equal(raw.x_train, std.x_train)
    # Standardisation is a single affine map fitted on train, applied to train and test.
    mean, sd = raw.x_train.double().mean(), raw.x_train.double().std(correction=0)
    assert torch.allclose(((raw.x_test.double() - mean) / sd).float(), std.x_test, atol=1e-5)


def test_mnist1d_corrupt_cache_is_regenerated(mnist1d_cache, tmp_path):
    good = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache)))
    (tmp_path / "mnist1d_seed0.npz").write_bytes(b"not an npz")
    again = load_dataset(cfg(name="mnist1d", root=str(tmp_path)))
    assert_same(good, again)


def test_mnist1d_relative_root_and_env_default(mnist1d_cache, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    shutil.copy(mnist1d_cache / "mnist1d_seed0.npz", tmp_path / "sub")
    expected = load_dataset(cfg(name="mnist1d", root=str(mnist1d_cache)))

    # A relative root resolves against the working directory.
    monkeypatch.chdir(tmp_path)
    assert_same(expected, load_dataset(cfg(name="mnist1d", root="sub")))

    # The YAML default reads GRADCLIP_DATA.
    monkeypatch.setenv("GRADCLIP_DATA", str(tmp_path / "sub"))
    yaml_cfg = OmegaConf.load(CONFIG_DIR / "mnist1d.yaml")
    assert_same(expected, load_dataset(yaml_cfg))
    assert os.listdir(tmp_path / "sub") == ["mnist1d_seed0.npz"]


def test_mnist1d_other_seed_differs(mnist1d_cache, tmp_path):
    shutil.copy(mnist1d_cache / "mnist1d_seed0.npz", tmp_path)
    a = load_dataset(cfg(name="mnist1d", root=str(tmp_path), seed=0))
    b = load_dataset(cfg(name="mnist1d", root=str(tmp_path), seed=1))
    assert (tmp_path / "mnist1d_seed1.npz").is_file()
    assert b.x_train.shape == a.x_train.shape
    assert not torch.equal(a.x_train, b.x_train)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_determinism():
    d = load_dataset({"name": "digits"})  # a plain dict works too
    assert (d.task, d.num_outputs, d.input_shape) == ("classification", 10, (64,))
    assert d.num_train + d.x_test.shape[0] == 1797
    assert d.x_test.shape[0] == round(0.2 * 1797)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.min() == 0 and d.x_train.max() == 1
    assert_same(d, load_dataset(cfg(name="digits", seed=0)))
    other = load_dataset(cfg(name="digits", seed=1))
    assert not torch.equal(d.y_train, other.y_train)
    half = load_dataset(cfg(name="digits", test_fraction=0.5))
    assert half.x_test.shape[0] == round(0.5 * 1797)


def test_digits_split_too_small():
    with pytest.raises(DataError, match=r"data\.test_fraction"):
        load_dataset(cfg(name="digits", test_fraction=1e-6))


# ----------------------------------------------------------------------------- synthetic


def test_location_shapes_and_determinism():
    d = load_dataset(cfg(name="location", n_train=30, n_test=20, loc=2.0))
    assert (d.task, d.num_outputs, d.input_shape) == ("regression", 1, (1,))
    assert d.x_train.shape == (30, 1) and d.y_train.shape == (30, 1)
    assert d.x_test.shape == (20, 1) and d.y_test.shape == (20, 1)
    for t in (d.x_train, d.y_train, d.x_test, d.y_test):
        assert t.dtype == torch.float32
    assert torch.all(d.x_train == 1) and torch.all(d.x_test == 1)
    assert_same(d, load_dataset(cfg(name="location", n_train=30, n_test=20, loc=2.0)))
    other = load_dataset(cfg(name="location", n_train=30, n_test=20, loc=2.0, seed=1))
    assert not torch.equal(d.y_train, other.y_train)
    # Train and test are independent draws; the test size does not change the training data.
    assert not torch.equal(d.y_train[:20], d.y_test)
    more_test = load_dataset(cfg(name="location", n_train=30, n_test=50, loc=2.0))
    assert torch.equal(d.y_train, more_test.y_train)


def test_linreg_shapes_and_model():
    # Small noise: least squares on either split must recover the same beta and bias.
    c = cfg(name="linreg", n_train=200, n_test=100, dim=3, bias=0.5, noise={"scale": 1e-3})
    d = load_dataset(c)
    assert (d.task, d.num_outputs, d.input_shape) == ("regression", 1, (3,))
    assert d.x_train.shape == (200, 3) and d.y_train.shape == (200, 1)
    assert d.x_test.shape == (100, 3) and d.y_test.shape == (100, 1)

    def fit(x, y):
        a = np.hstack([x.double().numpy(), np.ones((len(x), 1))])
        return np.linalg.lstsq(a, y.double().numpy(), rcond=None)[0].ravel()

    w_train, w_test = fit(d.x_train, d.y_train), fit(d.x_test, d.y_test)
    assert np.allclose(w_train, w_test, atol=1e-2)
    assert abs(w_train[-1] - 0.5) < 1e-2
    assert np.linalg.norm(w_train[:-1]) > 0.1  # beta is not trivially zero

    assert_same(d, load_dataset(c))
    other = load_dataset(cfg(name="linreg", n_train=200, n_test=100, dim=3, bias=0.5, seed=1,
                             noise={"scale": 1e-3}))
    assert not torch.equal(d.x_train, other.x_train)
    assert not np.allclose(fit(other.x_train, other.y_train), w_train, atol=1e-2)


def noise_sample(n=20000, **noise) -> np.ndarray:
    d = load_dataset(cfg(name="location", n_train=n, n_test=1, noise=noise))
    return d.y_train.double().numpy().ravel()  # loc = 0: the targets are the noise


def test_gaussian_noise():
    z = noise_sample(dist="gaussian", scale=2.0)
    assert abs(z.mean()) < 0.1 and abs(z.std() - 2.0) < 0.1
    assert abs(np.median(z) - z.mean()) < 0.1


def test_student_t_has_heavier_tails_than_gaussian():
    g = noise_sample(dist="gaussian")
    t = noise_sample(dist="student_t", df=3.0)
    # P(|N(0,1)| > 4) ~ 6e-5, P(|t_3| > 4) ~ 0.028: roughly 1 vs 560 of 20000 draws.
    assert (np.abs(t) > 4).sum() > 10 * (np.abs(g) > 4).sum() + 100
    assert abs(np.median(t)) < 0.1  # still symmetric around 0
    # A larger df is closer to Gaussian.
    t30 = noise_sample(dist="student_t", df=30.0)
    assert (np.abs(t30) > 4).sum() < (np.abs(t) > 4).sum() / 5


def test_lognormal_noise_is_skewed_and_not_centred():
    z = noise_sample(dist="lognormal", sigma=1.0, scale=1.0)
    assert np.all(z > 0)
    assert abs(np.median(z) - 1.0) < 0.05  # median exp(0) = 1
    assert abs(z.mean() - np.exp(0.5)) < 0.1  # mean exp(sigma^2 / 2) ~ 1.65
    assert z.mean() - np.median(z) > 0.4
    assert abs(np.median(noise_sample(dist="lognormal", scale=3.0)) - 3.0) < 0.15


def test_mixture_noise_is_symmetric_with_outliers_and_exponential_is_skewed():
    m = noise_sample(dist="mixture", mixture_weight=0.1, mixture_scale=10.0)
    assert abs(np.median(m)) < 0.05 and abs(m.mean()) < 0.15  # symmetric around 0
    assert (np.abs(m) > 5).mean() == pytest.approx(0.1 * 0.617, abs=0.01)  # P(|N(0,100)| > 5) = 0.617
    assert m.std() == pytest.approx(np.sqrt(0.9 + 0.1 * 100), rel=0.05)
    e = noise_sample(dist="exponential")
    assert np.all(e >= 0) and abs(e.mean() - 1.0) < 0.05 and abs(np.median(e) - np.log(2)) < 0.03


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"name": "foo"}, "data.name='foo' is not one of: mnist1d, digits, location, linreg, "
                          "mnist, fashion_mnist, cifar10"),
        ({}, "data.name=None is not one of"),
        ({"name": "location", "noise": {"dist": "cauchy"}},
         "data.noise.dist='cauchy' is not one of: gaussian, student_t, mixture, lognormal, exponential"),
        ({"name": "location", "noise": {"mixture_weight": 1.0}}, "data.noise.mixture_weight=1.0 must be"),
        ({"name": "mnist1d", "label_noise": 1.0}, "data.label_noise=1.0 must be a number in [0, 1)"),
        ({"name": "mnist1d", "imbalance": 0.5}, "data.imbalance=0.5 must be a number >= 1"),
        ({"name": "mnist1d", "n_train": 4001}, "data.n_train=4001 must be null (all 4000) or an integer in [1, 4000]"),
        ({"name": "mnist1d", "n_train": 0}, "data.n_train=0 must be null (all 4000) or an integer in [1, 4000]"),
        ({"name": "location", "noise": {"scale": 0.0}}, "data.noise.scale=0.0 must be"),
        ({"name": "linreg", "noise": {"scale": -1}}, "data.noise.scale=-1 must be"),
        ({"name": "location", "noise": {"df": 0}}, "data.noise.df=0 must be a finite number > 0"),
        ({"name": "location", "noise": {"sigma": -0.5}}, "data.noise.sigma=-0.5 must be"),
        ({"name": "location", "noise": {"dist": "gaussian", "sd": 1}},
         "data.noise.sd is not a key"),
        ({"name": "location", "noise": "gaussian"}, "data.noise='gaussian' must be a mapping"),
        ({"name": "location", "n_train": 0}, "data.n_train=0 must be an integer >= 1"),
        ({"name": "location", "n_train": 10.5}, "data.n_train=10.5 must be an integer >= 1"),
        ({"name": "location", "n_train": True}, "data.n_train=True must be an integer >= 1"),
        ({"name": "linreg", "n_test": -3}, "data.n_test=-3 must be an integer >= 1"),
        ({"name": "linreg", "dim": 0}, "data.dim=0 must be an integer >= 1"),
        ({"name": "linreg", "bias": float("nan")}, "data.bias=nan must be a finite number"),
        ({"name": "location", "loc": "zero"}, "data.loc='zero' must be a finite number"),
        ({"name": "location", "n_trian": 10}, "data.n_trian is not a key of data.name='location'"),
        ({"name": "digits", "test_fraction": 0}, "data.test_fraction=0 must be a number in the "
                                                 "open interval (0, 1)"),
        ({"name": "digits", "test_fraction": 1.0}, "data.test_fraction=1.0 must be"),
        ({"name": "digits", "seed": -1}, "data.seed=-1 must be an integer in [0, 2**32 - 1]"),
        ({"name": "mnist1d", "seed": 2**32}, "data.seed=4294967296 must be"),
        ({"name": "mnist1d", "standardize": "yes"}, "data.standardize='yes' must be true or false"),
        ({"name": "mnist", "download": "no"}, "data.download='no' must be true or false"),
        ({"name": "cifar10", "root": ""}, "data.root='' must be a non-empty path"),
        ({"name": "cifar10", "dim": 3}, "data.dim is not a key of data.name='cifar10'"),
    ],
)
def test_bad_config_raises_before_work(bad, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any accidental work would show up here
    for check in (validate_data_config, load_dataset):
        with pytest.raises(DataError) as info:
            check(OmegaConf.create(bad))
        assert message in str(info.value)
    assert isinstance(info.value, ValueError)
    assert tree(tmp_path) == []


def test_missing_value_and_non_mapping():
    with pytest.raises(DataError, match="could not be resolved"):
        validate_data_config(OmegaConf.create({"name": "location", "n_train": "???"}))
    with pytest.raises(DataError, match="must be a mapping"):
        validate_data_config(["location"])


def test_validate_does_no_file_access(tmp_path):
    root = tmp_path / "nowhere"
    for name in DATASETS:
        validate_data_config(cfg(name=name, root=str(root)))
    assert not root.exists()


# ----------------------------------------------------------------------------- torchvision

EXPECTED_DIR = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
}


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
@pytest.mark.parametrize("subdir", ["", "a/b"])  # root exists / root and a parent are missing
def test_missing_torchvision_files(name, subdir, tmp_path):
    (tmp_path / "keep").mkdir()  # pre-existing content must survive
    before = tree(tmp_path)
    root = tmp_path / subdir
    with pytest.raises(DataError) as info:
        load_dataset(cfg(name=name, root=str(root), download=False))
    msg = str(info.value)
    assert f"data.name='{name}'" in msg
    assert str(root / EXPECTED_DIR[name]) in msg
    assert "data.download=true" in msg
    assert tree(tmp_path) == before


def test_failed_download_cleans_up(tmp_path, monkeypatch):
    """No network is touched: torchvision's download is replaced by one that creates its folder
    (as the real one does) and then fails."""
    import torchvision.datasets

    def offline(self):
        os.makedirs(self.raw_folder, exist_ok=True)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="downloading MNIST into .* failed") as info:
        load_dataset(cfg(name="mnist", root=str(root), download=True))
    assert "no network" in str(info.value)
    assert tree(tmp_path) == []


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the (uncompressed) idx format torchvision's MNIST reads."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)  # magic: uint8 type, ndim
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + dims + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_fake_mnist_loads(name, folder, tmp_path):
    # MNIST's existence check does not verify checksums, so tiny fake files load.
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)

    d = load_dataset(cfg(name=name, root=str(tmp_path), standardize=False))
    assert (d.name, d.task, d.num_outputs) == (name, "classification", 10)
    assert d.input_shape == (1, 28, 28)
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert d.y_test.tolist() == [0, 1, 2, 3, 4]

    s = load_dataset(cfg(name=name, root=str(tmp_path)))
    assert abs(s.x_train.mean().item()) < 1e-5
    assert abs(s.x_train.std(correction=0).item() - 1) < 1e-4


def test_fake_cifar10_loads(tmp_path, monkeypatch):
    # torchvision checks the md5 of every CIFAR-10 file; a fake cannot match, so the check is
    # replaced by a plain existence check for this test only.
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = {}
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)  # rows are CHW-flattened
        images[batch] = data
        with open(folder / batch, "wb") as f:
            pickle.dump({"data": data, "labels": [0, 1, 2, 9]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)

    d = load_dataset(cfg(name="cifar10", root=str(tmp_path), standardize=False))
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.num_outputs == 10 and d.input_shape == (3, 32, 32)
    assert d.y_test.tolist() == [0, 1, 2, 9] and d.y_train.dtype == torch.int64
    # The [N, C, H, W] layout matches the CHW layout of the pickled rows.
    expected = torch.from_numpy(images["test_batch"].reshape(4, 3, 32, 32)).float() / 255
    assert torch.equal(d.x_test, expected)

    s = load_dataset(cfg(name="cifar10", root=str(tmp_path)))
    mean = s.x_train.mean(dim=(0, 2, 3))
    std = s.x_train.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5)
    assert torch.allclose(std, torch.ones(3), atol=1e-4)


# ----------------------------------------------------------------------------- YAML configs


def test_every_dataset_has_a_yaml():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(DATASETS)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_configs_validate(path, tmp_path, monkeypatch):
    monkeypatch.delenv("GRADCLIP_DATA", raising=False)
    c = OmegaConf.load(path)
    assert c.name == path.stem
    assert c.root == "data" and c.seed == 0  # shared defaults
    validate_data_config(c)
    if c.name in ("digits", "location", "linreg"):  # cheap enough to load here
        c.root = str(tmp_path)
        d = load_dataset(c)
        assert d.name == c.name and d.num_train > 0


def test_dataset_to_device():
    d = load_dataset(cfg(name="location", n_train=5, n_test=3))
    moved = d.to("cpu")
    assert isinstance(moved, Dataset) and moved.name == d.name and moved.num_outputs == 1
    assert_same(d, moved)
    assert "x_train" not in repr(d)  # tensors are kept out of the repr
