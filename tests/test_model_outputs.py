"""Any model output trains: a tensor, (logits, loss), a dict, a Hugging Face ModelOutput; the loss is
the model's own when it takes the targets, else cross-entropy on its logits, and the summary says which."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

from gradhealth.errors import ConfigError  # noqa: E402
from gradhealth.train.config import TrainConfig  # noqa: E402
from gradhealth.train.loop import fit  # noqa: E402
from gradhealth.train.outputs import CallRule, call_rule, cross_entropy, read_output  # noqa: E402

TEXT = b"".join(f"{i} bottles of beer on the wall, {i} bottles of beer.\n".encode() for i in range(99, 60, -1))


class TinyLM(nn.Module):
    """Embedding -> tanh -> head, one logit row per token; ``own`` makes it take targets and return a loss."""

    def __init__(self, own: bool = False, form: str = "tuple", vocab: int = 256) -> None:
        super().__init__()
        self.own, self.form = own, form
        self.emb, self.head = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def logits(self, idx):
        return self.head(torch.tanh(self.emb(idx)))

    def forward(self, idx, targets=None):
        logits = self.logits(idx)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        if self.form == "dict":
            return {"logits": logits, "loss": loss}
        return logits, loss


class LogitsOnly(TinyLM):
    def forward(self, idx):
        return self.logits(idx)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "beer.txt"
    path.write_bytes(TEXT)
    return f"text:{path}"


def _fit(model, data, **overrides):
    torch.manual_seed(0)
    config = TrainConfig(**{"model": "custom", "data": data, "steps": 4, "batch_size": 8, "seq_len": 16,
                            "optimizer": "adam", "lr": 1e-2, **overrides})
    return fit(config, model=model, progress=False)


def test_read_output_takes_every_form():
    logits, loss = torch.randn(2, 3), torch.tensor(0.5)
    assert read_output(logits, "m") == (logits, None)
    for output, expected in (((logits, loss), loss), ((loss, logits), loss), ([logits, None], None),
                             ({"logits": logits, "loss": loss}, loss), ({"logits": logits}, None)):
        got_logits, got_loss = read_output(output, "m")
        assert got_logits is logits and got_loss is expected


def test_read_output_reads_a_hugging_face_model_output():
    from transformers.modeling_outputs import CausalLMOutput

    logits, loss = torch.randn(2, 4, 5), torch.tensor(1.5)
    assert read_output(CausalLMOutput(logits=logits), "m") == (logits, None)
    got = read_output(CausalLMOutput(loss=loss, logits=logits), "m")
    assert got[0] is logits and got[1] is loss


@pytest.mark.parametrize("output, words", [
    ({"scores": torch.zeros(2, 3)}, "without a 'logits' tensor (its keys: scores)"),
    ("text", "returns a str with no logits"),
    ((torch.tensor(1.0),), "returns a tuple with no logits"),
])
def test_an_output_without_logits_says_what_training_reads(output, words):
    with pytest.raises(ConfigError, match="GradientMonitor") as caught:
        read_output(output, "m")
    assert words in str(caught.value)


def test_the_call_rule_follows_the_forward_signature():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=16, n_embd=8, n_layer=1, n_head=2))

    class Masked(nn.Module):  # a second positional argument that is not the targets
        def forward(self, x, mask=None):
            return x

    assert call_rule(TinyLM(), "lm").keyword == "targets"
    assert call_rule(gpt2, "lm").keyword == "labels"
    assert call_rule(LogitsOnly(), "lm").keyword is None
    assert call_rule(Masked(), "classify").keyword is None


def test_labels_of_next_token_data_are_the_inputs_shifted_by_the_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    window = torch.randint(0, 256, (3, 9))
    x, y = window[:, :-1], window[:, 1:]
    output = CallRule("labels", "lm").call(gpt2, x, y)
    # Hugging Face predicts labels[t+1] from position t: the same next-token targets as y, one fewer
    expected = F.cross_entropy(output.logits[:, :-1].reshape(-1, 256), y[:, :-1].reshape(-1))
    assert torch.allclose(output.loss, expected)


def test_cross_entropy_over_next_token_logits_is_the_mean_over_positions():
    logits, y = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    by_hand = sum(-torch.log_softmax(logits[b, t], 0)[y[b, t]] for b in range(2) for t in range(3)) / 6
    assert torch.allclose(cross_entropy(logits, y), by_hand)
    scores, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert torch.equal(cross_entropy(scores, labels), F.cross_entropy(scores, labels))


def test_the_models_own_loss_and_ours_train_the_same_model_alike(text):
    """The same network trained on its own (logits, loss) and on our cross-entropy of its logits."""
    torch.manual_seed(1)
    own = _fit(TinyLM(own=True), text, eval_every=2)
    torch.manual_seed(1)
    ours = _fit(LogitsOnly(), text, eval_every=2)
    assert own.summary["loss"] == "the model's own (forward(x, targets=y))"
    assert ours.summary["loss"] == "cross-entropy over next-token logits"
    assert [r.loss for r in own.records] == [r.loss for r in ours.records]
    assert own.summary["final_val_loss"] == ours.summary["final_val_loss"]
    assert own.records[0].loss == pytest.approx(math.log(256), abs=0.5)
    assert own.summary["task"] == "lm" and 0 <= own.summary["final_val_acc"] <= 1


def test_a_dict_output_gives_its_loss(text):
    result = _fit(TinyLM(own=True, form="dict"), text)
    assert result.summary["loss"].startswith("the model's own") and all(math.isfinite(r.loss) for r in result.records)


def test_a_hugging_face_causal_lm_trains_on_its_own_loss(text):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    result = _fit(gpt2, text, steps=6)
    assert result.summary["loss"] == "the model's own (forward(x, labels=x), shifted by the model)"
    losses = [r.loss for r in result.records]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert any("transformer.h.1" in name for name in result.records[0].layers)


def test_a_classifier_that_takes_targets_trains_on_its_own_loss():
    class Scored(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x, targets=None):
            scores = self.fc(x)
            return scores, F.cross_entropy(scores, targets) * 0 + 7.0  # a loss only the model could give

    result = _fit(Scored(), "synthetic:in=16,classes=4,n=128", steps=2)
    assert result.summary["loss"] == "the model's own (forward(x, targets=y))"
    assert [r.loss for r in result.records] == [7.0, 7.0]


def test_a_language_model_on_vectors_says_which_data_fits():
    with pytest.raises(ConfigError) as caught:
        _fit(LogitsOnly(), "digits")
    message = str(caught.value)
    assert "cannot take the examples of --data digits (each of shape (64,))" in message
    assert "token sequences (text, text:PATH, file.py:loader)" in message
    assert "gradhealth diagnose --from-log" in message


def test_a_classifier_on_text_says_next_token_logits_are_needed(text):
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(256, 8), nn.Linear(8, 256)

        def forward(self, idx):
            return self.head(self.emb(idx).mean(1))

    with pytest.raises(ConfigError, match=r"is next-token prediction: the model needs logits of shape \(16, 256\)"):
        _fit(Pooled(), text)
