"""Text data and a user's data loader: windows shifted by one, a fixed split, the default corpus,
and one sentence for every input that cannot be read as text or data."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

from gradhealth.errors import ConfigError  # noqa: E402
from gradhealth.train.data import first_examples, load_data  # noqa: E402
from gradhealth.train.text_data import STDLIB_BYTES, stdlib_files, text_problem  # noqa: E402

TEXT = b"".join(f"line {i}: the quick brown fox jumps over the lazy dog\n".encode() for i in range(40))


def _split_bytes(dataset) -> bytes:
    """The bytes a split covers, rebuilt from its windows: the first input byte, then every target."""
    x, y = dataset[:len(dataset)]
    return bytes(x[0, :1].tolist()) + b"".join(bytes(row.tolist()) for row in y)


def test_windows_are_the_input_and_the_next_bytes(tmp_path):
    path = tmp_path / "fox.txt"
    path.write_bytes(TEXT)
    bundle = load_data(f"text:{path}", seq_len=16)
    x, y = bundle.train[:3]
    assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.int64
    assert bytes(x[0].tolist()) == TEXT[:16] and bytes(y[0].tolist()) == TEXT[1:17]
    assert bytes(x[1].tolist()) == TEXT[16:32]  # the next window starts seq_len bytes later
    # the validation split is the last 10% of the text, the training split what comes before it
    n_val = -(-len(TEXT) // 10)
    train_bytes, val_bytes = _split_bytes(bundle.train), _split_bytes(bundle.val)
    assert TEXT[:len(TEXT) - n_val].startswith(train_bytes) and len(TEXT) - n_val - len(train_bytes) < 16
    assert TEXT[len(TEXT) - n_val:].startswith(val_bytes)
    assert (bundle.input_kind, bundle.task, bundle.vocab_size, bundle.num_classes, bundle.seq_len) == \
        ("tokens", "lm", 256, 256, 16)
    assert bundle.model_kwargs() == {"vocab_size": 256, "seq_len": 16, "block_size": 16, "max_len": 16,
                                    "task": "lm"}
    # the split does not depend on the seed
    assert torch.equal(load_data(f"text:{path}", seq_len=16, seed=5).val[:2][0], bundle.val[:2][0])


def test_a_folder_is_its_text_files_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_bytes(b"second file " * 20)
    (tmp_path / "a.md").write_bytes(b"first file " * 20)
    (tmp_path / "image.bin").write_bytes(bytes(range(256)) * 4)  # binary: left out
    (tmp_path / ".hidden").write_bytes(b"hidden " * 20)
    (tmp_path / "empty.txt").write_bytes(b"")
    bundle = load_data(f"text:{tmp_path}", seq_len=8)
    assert _split_bytes(bundle.train).startswith(b"first file first")
    assert "2 text files" in bundle.normalisation and "left out" in bundle.normalisation
    whole = _split_bytes(bundle.train) + _split_bytes(bundle.val)
    assert b"second file" in whole and b"hidden" not in whole


def test_the_default_corpus_is_the_standard_librarys_sorted_sources():
    bundle = load_data("text")
    first = stdlib_files()[0].read_bytes()
    assert bytes(bundle.train[0][0].tolist()) == first[:64]
    assert (len(bundle.train) + len(bundle.val)) * 64 <= STDLIB_BYTES < (len(bundle.train) + len(bundle.val) + 2) * 64
    again = load_data("text")
    assert torch.equal(again.val[:5][1], bundle.val[:5][1])
    assert bundle.name == "text" and "standard library" in bundle.normalisation


def test_text_problem_draws_the_line_at_one_percent_of_control_bytes():
    assert text_problem(b"a" * 99 + b"\x00") is None
    assert text_problem(b"a" * 98 + b"\x00\x1b") is not None
    assert text_problem(b"tabs\tand\r\nform feeds\f" * 10) is None
    assert text_problem(b"") == "it is empty"


def test_the_longest_sequence_length_the_error_offers_fits(tmp_path):
    path = tmp_path / "short.txt"
    path.write_bytes(TEXT[:300])
    with pytest.raises(ConfigError, match=r"--seq-len 500 is too long .* 300 bytes") as caught:
        load_data(f"text:{path}", seq_len=500)
    offered = int(str(caught.value).split("use --seq-len ")[1].split()[0])
    assert len(load_data(f"text:{path}", seq_len=offered).val) == 1
    with pytest.raises(ConfigError, match="too long"):
        load_data(f"text:{path}", seq_len=offered + 1)


@pytest.mark.parametrize("content, spec_tail, words", [
    (b"", "", "is empty"),
    (b"\x00\x01\x02binary\x00" * 50, "", "is not a text file (40% of its bytes are NUL or control bytes)"),
    (b"tiny", "", "too long"),
    (None, "", "holds no text to read tokens from"),
    (None, "/missing", "does not exist"),
])
def test_text_that_cannot_be_used_is_one_sentence(tmp_path, content, spec_tail, words):
    if content is None:
        path = tmp_path / "folder"
        path.mkdir()
        (path / "blob.dat").write_bytes(b"\x00" * 100)
    else:
        path = tmp_path / "file.txt"
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_data(f"text:{path}{spec_tail}", seq_len=8)
    message = str(caught.value)
    assert words in message and message.count(". ") == 0 and message.endswith(".")


def test_text_without_a_path_after_the_colon_says_how_to_write_it():
    with pytest.raises(ConfigError, match="text: needs a path"):
        load_data("text:")


# ---- a user's loader ----------------------------------------------------------------------------

LOADERS = '''
import torch
from torch.utils.data import Dataset

def pairs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 6, generator=g)
    return (x[:30], (x[:30, 0] > 0).long() + 2 * (x[:30, 1] > 0).long()), (x[30:], torch.arange(10) % 4)

def tokens(seq_len=64):
    print("loading tokens")
    ids = torch.arange(400) % 50
    windows = ids.unfold(0, seq_len + 1, seq_len)
    return (windows[:-1, :-1], windows[:-1, 1:]), (windows[-1:, :-1], windows[-1:, 1:])

class Labelled(Dataset):
    classes = ["cat", "dog", "emu"]
    def __len__(self):
        return 12
    def __getitem__(self, i):
        return torch.full((3,), float(i)), i % 2

def datasets():
    return Labelled(), Labelled()

def one_split():
    return (torch.zeros(4, 2), torch.zeros(4).long())

def float_targets():
    return (torch.zeros(4, 2), torch.zeros(4)), (torch.zeros(4, 2), torch.zeros(4))

def mismatched():
    return (torch.zeros(4, 2), torch.zeros(3).long()), (torch.zeros(4, 2), torch.zeros(4).long())

def nothing():
    return None

def broken():
    raise RuntimeError("no such table")
'''


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    # one file for the module: a file is imported once per name
    path = tmp_path_factory.mktemp("loaders") / "my_loaders.py"
    path.write_text(LOADERS)
    return path


def test_a_loader_of_tensor_pairs_is_classification(loaders):
    bundle = load_data(f"{loaders}:pairs", seed=3)
    assert (bundle.task, bundle.input_kind, bundle.input_shape, bundle.num_classes) == ("classify", "vectors", (6,), 4)
    assert bundle.model_kwargs() == {"in_features": 6, "num_classes": 4}
    expected = torch.randn(40, 6, generator=torch.Generator().manual_seed(3))[:30]
    assert torch.equal(bundle.train.tensors[0], expected)  # the seed was passed on


def test_a_loader_of_token_windows_is_next_token_prediction(loaders, capsys):
    bundle = load_data(f"{loaders}:tokens", seq_len=16)
    assert (bundle.task, bundle.input_kind, bundle.seq_len, bundle.vocab_size) == ("lm", "tokens", 16, 50)
    assert "loading tokens" in capsys.readouterr().err  # a loader's print never reaches stdout


def test_a_loader_of_datasets_keeps_their_declared_classes(loaders):
    bundle = load_data(f"{loaders}:datasets")
    assert bundle.num_classes == 3 and bundle.input_shape == (3,)
    x, y = first_examples(bundle.train, 4)
    assert x.shape == (4, 3) and y.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("name, words", [
    ("one_split", "a Tensor as its train split"),  # a (inputs, targets) pair, not (train, val)
    ("float_targets", "torch.float32 targets"),
    ("mismatched", "not one target row per input"),
    ("nothing", "returned a NoneType"),
    ("broken", "calling the data loader"),
])
def test_a_loader_that_returns_the_wrong_thing_says_what_it_must_return(loaders, name, words):
    with pytest.raises(ConfigError) as caught:
        load_data(f"{loaders}:{name}")
    message = str(caught.value)
    assert words in message, message
    if name != "broken":
        assert "def loader(seed=0, seq_len=64) -> (train, val)" in message


def test_a_missing_loader_file_is_named_a_data_file(tmp_path):
    with pytest.raises(ConfigError, match="data file .* does not exist"):
        load_data(f"{tmp_path}/nope.py:load")
