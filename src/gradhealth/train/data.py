"""Data sets by name, all generated or read locally: nothing is downloaded at run time.

``load_data("digits")``, ``load_data("mnist1d:n=4000")``, ``load_data("synthetic:in=64,classes=10")``,
``load_data("cifar10:~/data/cifar-10-batches-py")``. Inputs are standardised with statistics of the
training split only, so nothing about the validation split leaks into training.

For sequence models: ``load_data("text", seq_len=64)`` (byte-level next-token prediction on this
Python's standard library sources) and ``text:PATH`` (a text file or folder, ``text_data.py``);
``path/to/file.py:loader`` is a user's own data (``user_data.py``).

Shuffling is a function of (seed, epoch) alone (:class:`EpochShuffleSampler`), so a resumed run needs
only the epoch and the number of batches already taken from it to see the same batches again.
"""
from __future__ import annotations

import codecs
import math
import os
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from gradhealth.errors import ConfigError, DataError, unknown_name
from gradhealth.train.bundle import INPUT_KINDS, DataBundle, first_examples
from gradhealth.train.text_data import load_text
from gradhealth.train.user_data import load_user_data, loader_takes_seq_len
from gradhealth.train.config import DEFAULT_SEQ_LEN
from gradhealth.validate import positive_int
from gradhealth.vocabulary import is_file_spec

__all__ = ["DATASETS", "DATA_SUMMARIES", "INPUT_KINDS", "DataBundle", "load_data", "split_indices",
           "EpochShuffleSampler", "make_loader", "first_examples", "takes_seq_len"]

DATASETS = ("digits", "digits-image", "mnist1d", "mnist1d-seq", "synthetic", "synthetic-image", "cifar10", "text")
# one line per data spec, for `gradhealth list-data` and the --data help
DATA_SUMMARIES = {
    "digits": "scikit-learn's 8x8 digits as 64-vectors, 10 classes",
    "digits-image": "the same digits as 1x8x8 images",
    "mnist1d[:n=5000]": "mnist1d signals of length 40 (generated, no download), 10 classes",
    "mnist1d-seq[:n=5000]": "the same signals as 1x40 sequences, for Conv1d",
    "synthetic[:in=64,classes=10,n=4096]": "N(0,1) vectors labelled by a fixed random teacher",
    "synthetic-image[:chans=3,size=32,classes=10,n=2048]": "N(0,1) images labelled by a fixed random teacher",
    "cifar10:DIR": "CIFAR-10 from the folder of its python batches (cifar-10-batches-py)",
    "text": "next-byte prediction on the first 1 MiB of this Python's standard library sources (--seq-len)",
    "text:PATH": "next-byte prediction on a text file or a folder of text files (vocabulary 256, last 10% validation)",
    "file.py:loader": "your own data: loader() returns (train, val), each a (inputs, targets) tensor pair or a Dataset",
}

# spec options and their defaults; every option is a positive integer
_OPTIONS: dict[str, dict[str, int]] = {
    "mnist1d": {"n": 5000}, "mnist1d-seq": {"n": 5000},
    "synthetic": {"in": 64, "classes": 10, "n": 4096},
    "synthetic-image": {"chans": 3, "size": 32, "classes": 10, "n": 2048},
}
# the synthetic teacher and inputs are fixed, so runs with different seeds see the same data set
_SYNTHETIC_SEED = 1234
_TEACHER_HIDDEN = 64
_STANDARDISED = "then standardised with the training split's mean and std"


def takes_seq_len(spec: str) -> bool:
    """Whether ``seq_len`` changes the data of ``spec``: the windows of ``text``/``text:PATH``, or a
    ``file.py:loader`` that takes it; the other data sets have a length of their own."""
    if is_file_spec(spec):
        return loader_takes_seq_len(str(spec))
    return str(spec).partition(":")[0].strip() == "text"


def load_data(spec: str, *, seed: int = 0, val_fraction: float = 0.2, seq_len: int = DEFAULT_SEQ_LEN) -> DataBundle:
    """The data set named by ``spec``, split into train/val by ``seed`` (cifar10 keeps its own test split,
    text its last 10%); ``seq_len`` is the window length of text and is passed to a loader that takes it."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be a number strictly between 0 and 1, not {val_fraction!r}.")
    positive_int("seq_len", seq_len)
    if is_file_spec(spec):
        return load_user_data(str(spec), seed=seed, seq_len=seq_len)
    name, colon, rest = str(spec).partition(":")
    name = name.strip()
    if name == "cifar10":
        return _cifar10(rest.strip())
    if name == "text":
        return load_text(rest.strip() if colon else None, seq_len)
    if name not in DATASETS:
        raise unknown_name("data set", name, DATASETS)
    options = _parse_options(name, rest)
    if name.startswith("digits"):
        from sklearn.datasets import load_digits  # a file inside scikit-learn, no download

        digits = load_digits()
        x = torch.from_numpy(digits.data).float() / 16.0
        y, classes, how = torch.from_numpy(digits.target).long(), 10, "pixel values scaled to [0,1]"
        x = x.reshape(-1, 1, 8, 8) if name == "digits-image" else x
    elif name.startswith("mnist1d"):
        x, y = _mnist1d(options["n"])
        classes, how = 10, "signals from the mnist1d generator (seed 42)"
        x = x.unsqueeze(1) if name == "mnist1d-seq" else x
    else:
        shape = (options["in"],) if name == "synthetic" else (options["chans"], options["size"], options["size"])
        x, y = _synthetic(options["n"], shape, options["classes"])
        classes = options["classes"]
    train_idx, val_idx = split_indices(len(y), seed, val_fraction)
    x_train, x_val = x[train_idx], x[val_idx]
    if name.startswith("synthetic"):
        normalisation = "inputs drawn from N(0, 1), not rescaled; labels from a fixed random tanh teacher."
    else:
        x_train, x_val = _standardise(x_train, x_val, per_channel=False)
        normalisation = f"{how}, {_STANDARDISED} (one scalar each)."
    canonical = name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
    return DataBundle(canonical, TensorDataset(x_train, y[train_idx]), TensorDataset(x_val, y[val_idx]),
                      tuple(x.shape[1:]), classes, normalisation)


def split_indices(n: int, seed: int, val_fraction: float) -> tuple[Tensor, Tensor]:
    """(train, val) indices from a permutation seeded by ``seed`` alone; both splits are non-empty."""
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:], perm[:n_val]


def _parse_options(name: str, text: str) -> dict[str, int]:
    allowed = _OPTIONS.get(name, {})
    options = dict(allowed)
    given: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not allowed:
            raise ConfigError(f"data set {name!r} takes no options, but {item!r} was given.")
        if not eq or key not in allowed:
            raise ConfigError(f"cannot read {item!r} for data set {name!r}; "
                              f"it accepts {', '.join(allowed)} as key=integer.")
        if key in given:
            raise ConfigError(f"data set {name!r} was given {key} twice; give it once.")
        given.add(key)
        try:
            options[key] = int(raw)
        except ValueError:
            raise ConfigError(f"data option {key}={raw!r} is not an integer.") from None
    minimum = {"n": 10 if name.startswith("mnist1d") else 2, "classes": 2}
    for key, value in options.items():
        if value < (least := minimum.get(key, 1)):
            raise ConfigError(f"data option {key}={value} is too small for {name!r}; use at least {least}.")
    return options


def _standardise(train: Tensor, val: Tensor, *, per_channel: bool) -> tuple[Tensor, Tensor]:
    """Both splits shifted and scaled, in place, by the train split's mean and std (per channel if asked)."""
    dims = [d for d in range(train.dim()) if not (per_channel and d == 1)]
    var, mean = torch.var_mean(train, dim=dims, keepdim=True, correction=0)
    std = var.sqrt().clamp_min(1e-8)
    return train.sub_(mean).div_(std), val.sub_(mean).div_(std)


def _mnist1d(n: int) -> tuple[Tensor, Tensor]:
    """``n`` (rounded down to a multiple of 10) mnist1d signals from the package's generator."""
    import matplotlib

    # mnist1d imports pyplot for plotting helpers we never call; Agg keeps that import headless.
    # A backend chosen by the user (MPLBACKEND, as Jupyter sets it, or pyplot already loaded) is kept.
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    args = get_dataset_args()
    args.num_samples = n
    # the generator reseeds python's and numpy's global RNGs; the caller's streams must not move
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        made = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    # the generator centres all samples together; our train-only standardisation afterwards makes
    # the composed affine map depend on the train split alone
    x = torch.from_numpy(np.concatenate([made["x"], made["x_test"]])).float()
    y = torch.from_numpy(np.concatenate([made["y"], made["y_test"]])).long()
    return x, y


def _synthetic(n: int, shape: tuple[int, ...], classes: int) -> tuple[Tensor, Tensor]:
    """N(0,1) inputs labelled by the argmax of a fixed random 2-layer tanh network."""
    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    features = math.prod(shape)
    w1 = torch.randn(features, _TEACHER_HIDDEN, generator=gen) / math.sqrt(features)
    w2 = torch.randn(_TEACHER_HIDDEN, classes, generator=gen) / math.sqrt(_TEACHER_HIDDEN)
    x = torch.randn(n, *shape, generator=gen)
    return x, (torch.tanh(x.reshape(n, -1) @ w1) @ w2).argmax(1)


# ---- CIFAR-10 (python version) from a local folder --------------------------------------------

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


class _CifarUnpickler(pickle.Unpickler):
    """Unpickling runs whatever callable a file names, so a user's file is code in principle.

    A CIFAR-10 batch is a dict of bytes, lists, ints and one numpy array; the only globals it needs
    rebuild that array. Every other global is refused before it is even imported, let alone called.
    """

    # numpy 1 pickles name numpy.core, numpy 2 numpy._core; both map to the functions of this numpy
    _ALLOWED = {
        **{(m, "_reconstruct"): np.ndarray((0,)).__reduce__()[0] for m in ("numpy.core.multiarray",
                                                                           "numpy._core.multiarray")},
        **{(m, "_frombuffer"): np.ones(1).__reduce_ex__(5)[0] for m in ("numpy.core.numeric", "numpy._core.numeric")},
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by python 3
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never contains")
        return self._ALLOWED[(module, name)]


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"CIFAR-10 folder {str(path.parent)!r} has no file {path.name!r}; it must hold "
                        "data_batch_1..5 and test_batch from the python version of CIFAR-10.")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # a truncated or foreign pickle fails in many ways; all mean "unreadable"
        raise DataError(f"CIFAR-10 file {str(path)!r} cannot be read ({err}); "
                        "extract cifar-10-python.tar.gz again.") from None
    batch = batch if isinstance(batch, dict) else {}
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    problem = None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
            and len(data)):
        problem = "no uint8 array of shape (N, 3072) with N > 0 under b'data'"
    elif not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        problem = "no list of one label per image under b'labels'"
    else:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or (labels.size and not 0 <= labels.min() <= labels.max() <= 9):
            problem = "labels that are not integers from 0 to 9"
    if problem:
        raise DataError(f"CIFAR-10 file {str(path)!r} is malformed: {problem}; extract cifar-10-python.tar.gz again.")
    return data, labels.astype(np.int64)


def _cifar10(folder_text: str) -> DataBundle:
    """CIFAR-10 from the folder of the python version; validation is the official test batch."""
    if not folder_text:
        raise ConfigError("cifar10 needs its folder: write cifar10:PATH/TO/cifar-10-batches-py.")
    folder = Path(folder_text).expanduser()
    if not (folder / _CIFAR_TEST).exists() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"  # the folder the archive was extracted into
    if folder.is_file():
        raise DataError(f"{str(folder)!r} is a file; cifar10: takes the folder of the python batches "
                        "(cifar-10-batches-py, extracted from cifar-10-python.tar.gz).")
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder {str(folder)!r} does not exist; extract cifar-10-python.tar.gz "
                        "and pass its cifar-10-batches-py folder.")
    train = [_read_cifar_batch(folder / name) for name in _CIFAR_TRAIN]
    test_x, test_y = _read_cifar_batch(folder / _CIFAR_TEST)

    def images(data: np.ndarray) -> Tensor:
        # each row holds the red, then green, then blue 32x32 plane, row-major
        return torch.from_numpy(data).reshape(-1, 3, 32, 32).float().div_(255.0)

    x_train, x_val = _standardise(images(np.concatenate([d for d, _ in train])), images(test_x), per_channel=True)
    y_train = torch.from_numpy(np.concatenate([y for _, y in train]))
    normalisation = f"pixel values scaled to [0,1], {_STANDARDISED} per colour channel."
    return DataBundle("cifar10", TensorDataset(x_train, y_train), TensorDataset(x_val, torch.from_numpy(test_y)),
                      (3, 32, 32), 10, normalisation)


# ---- loading in batches -----------------------------------------------------------------------

class EpochShuffleSampler(Sampler[int]):
    """Indices 0..n-1 in an order that depends on (seed, epoch) only, like DistributedSampler.

    Call ``set_epoch(e)`` before each epoch; epoch ``e`` is ``randperm(n)`` from a generator seeded
    with ``seed + e``. Resuming needs only the epoch and how many batches of it were already used.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        if n <= 0:
            raise ConfigError(f"cannot shuffle an empty data set (n={n}).")
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool = False,
                sampler: Sampler | None = None, num_workers: int = 0) -> DataLoader:
    """A DataLoader whose order is reproducible from ``seed``; with ``shuffle`` its sampler is an
    :class:`EpochShuffleSampler` (call ``loader.sampler.set_epoch(e)`` each epoch).

    The loader has its own generator, so starting an epoch never draws from torch's global RNG and a
    resumed run's global random stream matches an uninterrupted one.
    """
    positive_int("batch size", batch_size)
    if num_workers < 0:
        raise ConfigError(f"num_workers must be 0 (load in this process) or more, not {num_workers}.")
    if sampler is not None and shuffle:
        raise ConfigError("give either shuffle=True or a sampler, not both; the sampler decides the order.")
    if shuffle:
        sampler = EpochShuffleSampler(len(dataset), seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(int(seed)))
