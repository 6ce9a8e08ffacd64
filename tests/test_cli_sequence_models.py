"""Language models through the command line: a nanoGPT-style factory and a Hugging Face GPT-2 on
text data, bit-exact resume, --json output that a factory's prints cannot spoil, one-line errors."""
from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

from gradhealth.cli import main  # noqa: E402
from gradhealth.monitor.records import read_jsonl  # noqa: E402
from gradhealth.train.checkpoint import load_checkpoint  # noqa: E402

NANOGPT = '''
import math
import torch
from torch import nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd), n_head
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(n_embd), CausalSelfAttention(n_embd, n_head, block_size)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer=2, n_embd=16, n_head=2):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, block_size) for _ in range(n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(n_embd), nn.Linear(n_embd, vocab_size, bias=False)
        print("number of parameters: %.2fM" % (sum(p.numel() for p in self.parameters()) / 1e6,))

    def forward(self, idx, targets=None):
        b, t = idx.size()
        x = self.wte(idx) + self.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits, loss = self.lm_head(x[:, [-1], :]), None  # inference: the last position only
        return logits, loss


def build(vocab_size=256, block_size=64):
    return GPT(vocab_size, block_size)
'''

GPT2 = '''
from transformers import GPT2Config, GPT2LMHeadModel


def build(vocab_size=256, block_size=64):
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=block_size, n_embd=16, n_layer=2, n_head=2))
'''

TEXT = b"".join(f"{i}: to be, or not to be, that is the question.\n".encode() for i in range(60))
SMALL = ["--seq-len", "16", "--batch-size", "8", "--optimizer", "adam", "--lr", "0.003"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    (folder / "nanogpt_like.py").write_text(NANOGPT)
    (folder / "hf_gpt2.py").write_text(GPT2)
    (folder / "hamlet.txt").write_bytes(TEXT)
    return folder


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_diagnose_a_nanogpt_factory_on_text_as_json(files, capsys):
    argv = ["diagnose", f"{files}/nanogpt_like.py:build", "--data", f"text:{files}/hamlet.txt", "--steps", "20",
            "--json", *SMALL]
    assert main(argv) == 0
    captured = capsys.readouterr()
    diagnosis = json.loads(captured.out)  # stdout is the JSON document and nothing else
    assert diagnosis["steps"] == 20 and diagnosis["extra"]["loss"] == "the model's own (forward(x, targets=y))"
    assert "number of parameters" in captured.err  # the factory's print went to stderr


def test_train_a_hugging_face_gpt2_on_text(files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", f"{files}/hf_gpt2.py:build", "--data", f"text:{files}/hamlet.txt", "--steps", "4",
            *SMALL, "--eval-every", "2", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed, summary = json.loads(captured.out), json.loads((out / "summary.json").read_text())
    loss = "the model's own (forward(x, labels=x), shifted by the model)"
    assert printed["loss"] == summary["loss"] == loss and f"loss: {loss}" in captured.err
    assert summary["task"] == "lm" and summary["num_classes"] == 256 and summary["config"]["seq_len"] == 16
    assert len(read_jsonl(out / "metrics.jsonl").records) == 4


@pytest.mark.parametrize("model", ["nanogpt_like.py:build", "transformer:depth=2,width=16,heads=2,norm=post"])
def test_train_then_resume_gives_the_records_of_one_run(files, tmp_path, capsys, model):
    # a user's factory and the built-in transformer family alike
    model = f"{files}/{model}" if model.endswith(":build") else model
    common = ["train", model, "--data", f"text:{files}/hamlet.txt", *SMALL]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main([*common, "--steps", "6", "--out", str(whole)]) == 0
    assert main([*common, "--steps", "3", "--out", str(part)]) == 0
    assert main([*common, "--steps", "6", "--out", str(part), "--resume", str(part / "checkpoints" / "last.pt")]) == 0
    a, b = read_jsonl(whole / "metrics.jsonl").records, read_jsonl(part / "metrics.jsonl").records
    assert [r.step for r in b] == list(range(6))
    assert [(r.loss, r.global_grad_norm) for r in a] == [(r.loss, r.global_grad_norm) for r in b]
    ca, cb = load_checkpoint(whole / "checkpoints" / "last.pt"), load_checkpoint(part / "checkpoints" / "last.pt")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    # a resumed run must cut the text into the same windows
    capsys.readouterr()
    assert main([*common, "--steps", "8", "--seq-len", "8", "--out", str(part),
                 "--resume", str(part / "checkpoints" / "last.pt")]) == 2
    assert "seq_len=16" in _one_error(capsys)


def test_fix_runs_its_trials_on_a_transformer_spec(files, tmp_path, capsys):
    spec = "transformer:depth=2,width=16,heads=2,norm=post"
    assert main(["fix", spec, "--data", f"text:{files}/hamlet.txt", "--steps", "3", "--only", "warmup,pre_ln,clip_norm",
                 "--out", str(tmp_path / "fix"), "--json", *SMALL[:4]]) == 0
    ranking = json.loads(capsys.readouterr().out)
    assert ranking["model"] == spec and ranking["trials"]
    assert all(t["final_loss"] is not None for t in ranking["trials"])


def test_a_language_model_on_classification_data_names_what_fits(files, tmp_path, capsys):
    for data in ("digits", "mnist1d-seq:n=100"):
        assert main(["diagnose", f"{files}/nanogpt_like.py:build", "--data", data, "--steps", "2"]) == 2
        error = _one_error(capsys)
        assert f"cannot take the examples of --data {data}" in error
        assert "token sequences (text, text:PATH, file.py:loader)" in error and "--from-log" in error


def _bad_text(folder, kind):
    """A path of text that cannot be trained on, of the given kind."""
    if kind == "empty":
        (folder / "empty.txt").write_bytes(b"")
        return folder / "empty.txt"
    if kind == "binary":
        (folder / "blob.bin").write_bytes(b"\x00\x7f" * 64)
        return folder / "blob.bin"
    if kind == "short":
        (folder / "short.txt").write_bytes(TEXT[:30])
        return folder / "short.txt"
    (folder / "bare").mkdir()
    (folder / "bare" / "x.bin").write_bytes(b"\x00" * 9)
    return folder / "bare"


@pytest.mark.parametrize("kind, words", [
    ("empty", "is empty"),
    ("binary", "is not a text file (100% of its bytes are NUL or control bytes)"),
    ("short", "--seq-len 16 is too long"),
    ("no text files", "holds no text to read tokens from"),
])
def test_text_that_cannot_be_trained_on_is_one_error_line(files, tmp_path, capsys, kind, words):
    argv = ["train", f"{files}/nanogpt_like.py:build", "--data", f"text:{_bad_text(tmp_path, kind)}",
            "--seq-len", "16", "--steps", "2", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert words in _one_error(capsys)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_loader_that_returns_the_wrong_thing_is_one_error_line(files, tmp_path, capsys):
    (tmp_path / "bad_loader.py").write_text("import torch\ndef load():\n    print('hello')\n"
                                            "    return torch.zeros(3, 4)\n")
    assert main(["train", f"{files}/nanogpt_like.py:build", "--data", f"{tmp_path}/bad_loader.py:load",
                 "--steps", "2", "--out", str(tmp_path / "run")]) == 2
    error = _one_error(capsys)
    assert "returned a Tensor" in error and "def loader(seed=0, seq_len=64) -> (train, val)" in error


def test_list_data_names_the_text_corpus(capsys):
    assert main(["list-data"]) == 0
    out = capsys.readouterr().out
    assert "text:PATH" in out and "standard library" in out and "file.py:loader" in out
    assert main(["list-data", "--json"]) == 0
    specs = {entry["spec"] for entry in json.loads(capsys.readouterr().out)}
    assert {"digits", "text", "text:PATH", "file.py:loader"} <= specs
