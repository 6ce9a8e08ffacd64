"""Data sets by name: shapes, train-only standardisation, seeded splits, RNG hygiene, CIFAR-10 safety."""
from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

from gradhealth.errors import ConfigError, DataError  # noqa: E402
from gradhealth.train.data import (  # noqa: E402
    DATASETS, EpochShuffleSampler, load_data, make_loader, split_indices,
)


def _all(bundle):
    train, val = bundle.train.tensors, bundle.val.tensors
    return torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])


@pytest.mark.parametrize("spec, total, shape, classes, kwargs", [
    ("digits", 1797, (64,), 10, {"in_features": 64, "num_classes": 10}),
    ("digits-image", 1797, (1, 8, 8), 10, {"in_chans": 1, "dims": 2, "num_classes": 10, "in_features": 64}),
    ("mnist1d:n=200", 200, (40,), 10, {"in_features": 40, "num_classes": 10}),
    ("mnist1d-seq:n=205", 200, (1, 40), 10, {"in_chans": 1, "dims": 1, "num_classes": 10, "in_features": 40}),
    ("synthetic:in=16,classes=3,n=100", 100, (16,), 3, {"in_features": 16, "num_classes": 3}),
    ("synthetic-image:chans=2,size=8,classes=4,n=60", 60, (2, 8, 8), 4, {"in_chans": 2, "dims": 2, "num_classes": 4, "in_features": 128}),
])
def test_shapes_dtypes_and_model_kwargs(spec, total, shape, classes, kwargs):
    bundle = load_data(spec, seed=0)
    x, y = _all(bundle)
    assert x.shape == (total, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert bundle.input_shape == shape and bundle.num_classes == classes
    assert len(bundle.val) == round(total * 0.2)
    assert 0 <= int(y.min()) and int(y.max()) < classes and len(y.unique()) > 1
    assert bundle.model_kwargs() == kwargs
    assert bundle.normalisation.endswith(".") and bundle.normalisation.count(".") <= 2


def test_default_specs_fill_in_their_options():
    assert load_data("synthetic").name == "synthetic:in=64,classes=10,n=4096"
    assert len(load_data("synthetic").train) + len(load_data("synthetic").val) == 4096
    bundle = load_data("synthetic-image")
    assert bundle.name == "synthetic-image:chans=3,size=32,classes=10,n=2048" and bundle.input_shape == (3, 32, 32)
    assert load_data("mnist1d").name == "mnist1d:n=5000"  # the package's default size


def test_model_kwargs_build_working_models():
    from gradhealth.models import create_model
    from gradhealth.train.setup import data_kwargs_for

    for spec, model in (("mnist1d-seq:n=50", "convnet:depth=2,width=4"), ("mnist1d-seq:n=50", "mlp:depth=2,width=8"),
                        ("digits", "mlp:depth=2,width=8")):
        bundle = load_data(spec)
        x, _ = bundle.train[:5]
        assert create_model(model, **data_kwargs_for(model, bundle.model_kwargs()))(x).shape == (5, 10)


def test_digits_standardised_with_train_statistics_only():
    from sklearn.datasets import load_digits

    bundle = load_data("digits", seed=3)
    raw = torch.from_numpy(load_digits().data).float() / 16
    train_idx, val_idx = split_indices(len(raw), 3, 0.2)
    mean, std = raw[train_idx].mean(), raw[train_idx].std(correction=0)
    torch.testing.assert_close(bundle.train.tensors[0], (raw[train_idx] - mean) / std)
    torch.testing.assert_close(bundle.val.tensors[0], (raw[val_idx] - mean) / std)
    assert abs(float(bundle.val.tensors[0].mean())) > 1e-4  # val statistics were not used
    assert torch.equal(bundle.val.tensors[1], torch.from_numpy(load_digits().target)[val_idx])


def test_mnist1d_is_the_package_generator_output():
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 200
    made = make_dataset(args)
    raw = torch.from_numpy(np.concatenate([made["x"], made["x_test"]])).float()
    labels = torch.from_numpy(np.concatenate([made["y"], made["y_test"]]))
    bundle = load_data("mnist1d:n=200", seed=5)
    train_idx, val_idx = split_indices(200, 5, 0.2)
    mean, std = raw[train_idx].mean(), raw[train_idx].std(correction=0)
    torch.testing.assert_close(bundle.val.tensors[0], (raw[val_idx] - mean) / std)
    assert torch.equal(bundle.train.tensors[1], labels[train_idx])


def test_mnist1d_leaves_global_rngs_untouched():
    def draws():
        return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()

    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = draws()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    load_data("mnist1d:n=100")
    load_data("synthetic:n=50")
    load_data("digits")
    assert draws() == expected


def test_split_is_deterministic_by_seed():
    a, b, c = (load_data("synthetic:in=8,n=200", seed=s) for s in (1, 1, 2))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    # the data set itself does not depend on the seed, only the split does
    assert torch.equal(_all(a)[0].sort(0).values, _all(c)[0].sort(0).values)
    half = load_data("synthetic:in=8,n=200", seed=1, val_fraction=0.5)
    assert len(half.train) == len(half.val) == 100


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, "0.2", True, float("nan")])
def test_bad_val_fraction(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        load_data("digits", val_fraction=fraction)


@pytest.mark.parametrize("spec, words", [
    ("imagenet", "choose one of: cifar10, digits"),
    ("synthetic:foo=1", "accepts in, classes, n"),
    ("synthetic:n=abc", "not an integer"),
    ("synthetic:n=1", "too small"),
    ("synthetic:classes=1", "too small"),
    ("synthetic:n", "key=integer"),
    ("digits:n=5", "takes no options"),
    ("cifar10", "needs its folder"),
])
def test_bad_specs(spec, words):
    with pytest.raises(ConfigError, match=words):
        load_data(spec)
    assert set(DATASETS) >= {"digits", "mnist1d", "cifar10"}


# ---- CIFAR-10 from a fake folder ---------------------------------------------------------------

def _write_cifar(folder, per_batch=20, protocol=2):
    """data_batch_1..5 and test_batch as the python version stores them, with channel-dependent levels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        levels = np.repeat([40, 120, 200], 1024)  # red dark, green mid, blue bright
        data = np.clip(levels + rng.integers(-30, 30, size=(per_batch, 3072)), 0, 255).astype(np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(), b"data": data,
                 b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        batches[name] = batch
    return batches


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar10_loads_and_standardises_per_channel_with_train_stats(tmp_path, protocol):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    bundle = load_data(f"cifar10:{tmp_path / 'cifar-10-batches-py'}")
    assert bundle.train.tensors[0].shape == (100, 3, 32, 32) and bundle.val.tensors[0].shape == (20, 3, 32, 32)
    assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10
    assert "per colour channel" in bundle.normalisation
    raw = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).astype(np.float64) / 255
    per_channel = raw.reshape(100, 3, 1024)
    mean, std = per_channel.mean(axis=(0, 2)), per_channel.std(axis=(0, 2))
    test = batches["test_batch"][b"data"].astype(np.float64) / 255
    # pixel (row 5, column 7) of channel c sits at c*1024 + 5*32 + 7 in a CIFAR row
    for c in range(3):
        expected = (test[:, c * 1024 + 5 * 32 + 7] - mean[c]) / std[c]
        np.testing.assert_allclose(bundle.val.tensors[0][:, c, 5, 7].numpy(), expected, rtol=1e-5, atol=1e-5)
    x = bundle.train.tensors[0]
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    assert bundle.val.tensors[1].tolist() == batches["test_batch"][b"labels"]
    assert load_data(f"cifar10:{tmp_path}").val.tensors[1].tolist() == batches["test_batch"][b"labels"]  # parent folder


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _break(folder, how, marker):
    target = folder / "data_batch_3"
    if how == "missing folder":
        return folder / "nowhere"
    if how == "missing file":
        target.unlink()
    elif how == "truncated":
        target.write_bytes(target.read_bytes()[:5000])
    elif how == "wrong keys":
        target.write_bytes(pickle.dumps({b"pixels": np.zeros((20, 3072), np.uint8), b"labels": [0] * 20}))
    elif how == "wrong shape":
        target.write_bytes(pickle.dumps({b"data": np.zeros((20, 1024), np.uint8), b"labels": [0] * 20}))
    elif how == "bad labels":
        target.write_bytes(pickle.dumps({b"data": np.zeros((20, 3072), np.uint8), b"labels": [12] * 20}))
    elif how == "not a dict":
        target.write_bytes(pickle.dumps([1, 2, 3]))
    elif how == "forbidden global":
        target.write_bytes(pickle.dumps({b"data": _RunsShell(marker), b"labels": [0] * 20}))
    return folder


@pytest.mark.parametrize("how, words", [
    ("missing folder", "does not exist"), ("missing file", "has no file 'data_batch_3'"),
    ("truncated", "cannot be read"), ("wrong keys", "malformed"), ("wrong shape", "malformed"),
    ("bad labels", "from 0 to 9"), ("not a dict", "malformed"), ("forbidden global", r"refers to (posix|nt)\.system"),
])
def test_cifar10_errors(tmp_path, how, words):
    folder = tmp_path / "cifar"
    _write_cifar(folder, per_batch=4)
    marker = tmp_path / "pwned"
    spec = f"cifar10:{_break(folder, how, marker)}"
    with pytest.raises(DataError, match=words):
        load_data(spec)
    assert not marker.exists()  # the pickled os.system call never ran


# ---- shuffling and loaders ---------------------------------------------------------------------

def test_epoch_shuffle_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=4)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and len(sampler) == 50
    assert first == torch.randperm(50, generator=torch.Generator().manual_seed(4)).tolist()
    sampler.set_epoch(3)
    third = list(sampler)
    assert third == torch.randperm(50, generator=torch.Generator().manual_seed(7)).tolist() and third != first
    other = EpochShuffleSampler(50, seed=4)
    other.set_epoch(3)
    assert list(other) == third
    sampler.set_epoch(0)
    assert list(sampler) == first
    with pytest.raises(ConfigError):
        EpochShuffleSampler(0)


def test_make_loader_reproducible_resumable_and_off_the_global_rng():
    data = load_data("synthetic:in=4,n=100").train
    loader = make_loader(data, 8, shuffle=True, seed=9, drop_last=True)
    loader.sampler.set_epoch(1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    epoch = [y for _, y in loader]
    assert torch.equal(torch.get_rng_state(), before)  # iterating drew nothing from the global RNG
    assert len(epoch) == len(data) // 8
    # resume: a new loader, told only the epoch and how many batches were used, continues identically
    resumed = make_loader(data, 8, shuffle=True, seed=9, drop_last=True)
    resumed.sampler.set_epoch(1)
    rest = [y for i, (_, y) in enumerate(resumed) if i >= 3]
    assert all(torch.equal(a, b) for a, b in zip(epoch[3:], rest, strict=True))
    loader.sampler.set_epoch(2)
    assert not torch.equal(next(iter(loader))[1], epoch[0])
    ordered = make_loader(data, 10, shuffle=False, seed=0)
    assert torch.equal(next(iter(ordered))[1], data.tensors[1][:10])


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": -2}, {"batch_size": True},
                                    {"batch_size": 4, "sampler": EpochShuffleSampler(5)},
                                    {"batch_size": 4, "num_workers": -1}])
def test_make_loader_rejects_bad_arguments(kwargs):
    data = load_data("synthetic:in=4,n=10").train
    with pytest.raises(ConfigError):
        make_loader(data, shuffle=True, seed=0, **kwargs)


def test_a_flattening_builder_takes_sequences_and_images_as_vectors():
    from gradhealth.train.data import load_data

    bundle = load_data("mnist1d-seq:n=100", seed=0)
    assert bundle.model_kwargs()["in_features"] == 40 and bundle.model_kwargs()["in_chans"] == 1
