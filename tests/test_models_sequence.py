"""The transformer and recurrent families: twins with the same parameters, the norm's place in the
block, causal attention, branch scaling that starts at the identity, and recurrent inits.

Oracles: the parameter list of the other twin, a forward pass with the future changed, a net whose
blocks are removed (ReZero at init), torch's own orthogonality and identity checks.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gradhealth
from gradhealth.errors import ConfigError
from gradhealth.models.transformer import TransformerBlock

SMALL = "transformer:depth=3,width=16,heads=2,vocab_size=20,max_len=12"


def _tokens(batch: int = 2, steps: int = 10, vocab: int = 20) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, steps), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_transformer_twins_have_the_same_parameters_with_and_without_skips(norm):
    residual = gradhealth.create_model(f"{SMALL},norm={norm},residual=true")
    plain = gradhealth.create_model(f"{SMALL},norm={norm},residual=false")
    assert [(k, v.shape) for k, v in residual.state_dict().items()] == \
           [(k, v.shape) for k, v in plain.state_dict().items()]
    # loaded with the residual twin's weights, the plain twin computes something else: only the skip differs
    plain.load_state_dict(residual.state_dict())
    assert not torch.allclose(plain(_tokens()), residual(_tokens()))


def test_norm_placement_shows_in_module_order():
    def order(norm: str) -> list[str]:
        block = gradhealth.create_model(f"{SMALL},norm={norm}").blocks[0]
        return [name for name, _ in block.named_children()]

    assert order("pre") == ["ln1", "attn", "ln2", "mlp"]
    assert order("post") == ["attn", "ln1", "mlp", "ln2"]
    pre = gradhealth.create_model(f"{SMALL},norm=pre")
    post = gradhealth.create_model(f"{SMALL},norm=post")
    assert isinstance(pre.ln_f, torch.nn.LayerNorm) and isinstance(post.ln_f, torch.nn.Identity)
    names = [n for n, _ in pre.named_modules()]
    assert {"tok_emb", "pos_emb", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
            "blocks.0.mlp.act1", "blocks.0.mlp.fc2", "head"} <= set(names)


def test_post_ln_normalizes_the_sum_and_pre_ln_leaves_the_stream_unnormalized():
    torch.manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(2, 6, 16)
    post = TransformerBlock(16, 2, norm="post")
    out = post(x)
    # the last operation of a post-LN block is a LayerNorm: each position has mean 0, std 1
    assert out.mean(-1).abs().max() < 1e-5
    assert out.var(-1, unbiased=False).sub(1).abs().max() < 1e-3
    pre = TransformerBlock(16, 2, norm="pre")
    assert pre(x).mean(-1).abs().min() > 1.0  # the skip carries the input's offset of 3 through


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_lm_attention_is_causal_and_classify_attention_is_not(norm):
    torch.manual_seed(0)
    lm = gradhealth.create_model(f"{SMALL},norm={norm}").eval()
    tokens = _tokens()
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 20
    a, b = lm(tokens), lm(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)  # earlier steps cannot see step 6
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    classify = gradhealth.create_model(f"{SMALL},norm={norm},task=classify,num_classes=4").eval()
    assert classify(tokens).shape == (2, 4)
    # mean-pooled and non-causal: changing the last token moves the logits through every position
    late = tokens.clone()
    late[:, -1] = (late[:, -1] + 1) % 20
    assert not torch.allclose(classify(tokens), classify(late))


def test_rezero_and_zero_init_last_start_every_block_at_the_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    rezero = gradhealth.create_model(f"{SMALL},branch_scale=rezero")
    for block in rezero.blocks:
        assert torch.equal(block(x), x)
        assert float(block.attn_gain.detach()) == 0.0 and float(block.mlp_gain.detach()) == 0.0
    zeroed = gradhealth.create_model(f"{SMALL},zero_init_last=true")
    for block in zeroed.blocks:
        assert torch.allclose(block(x), x, atol=1e-6)  # only the output projections' biases (0) remain
    # and both still learn: the gains and the zeroed projections get gradients
    F.cross_entropy(rezero(_tokens()).flatten(0, 1), _tokens().flatten()).backward()
    assert all(float(b.attn_gain.grad.abs()) > 0 for b in rezero.blocks)


def test_depth_branch_scale_is_one_over_sqrt_of_the_number_of_branches():
    torch.manual_seed(0)
    scaled = gradhealth.create_model(f"{SMALL},branch_scale=depth")
    plain = gradhealth.create_model(f"{SMALL},branch_scale=none")
    plain.load_state_dict(scaled.state_dict())
    block_s, block_p = scaled.blocks[0], plain.blocks[0]
    assert block_s.scale == pytest.approx(1 / math.sqrt(2 * 3))
    x = torch.randn(2, 5, 16)
    # with the skips off, a block is its MLP branch of its attention branch; the scale applies to each
    block_s.residual = block_p.residual = False
    ln = block_p.ln1(x)
    attn = block_p.attn(ln)
    expected = block_p.mlp(block_p.ln2(attn * block_s.scale)) * block_s.scale
    assert torch.allclose(block_s(x), expected, atol=1e-6)


@pytest.mark.parametrize("init", ["xavier", "he", "orthogonal", "normal(0.02)", "default"])
def test_transformer_inits_by_name(init):
    torch.manual_seed(0)
    model = gradhealth.create_model(f"{SMALL},init={init}")
    weight = model.blocks[0].mlp.fc1.weight
    if init == "normal(0.02)":
        assert weight.std().item() == pytest.approx(0.02, rel=0.1)
    if init == "orthogonal":
        cols = weight.T @ weight  # (64, 16): orthogonal columns, scaled by the GELU's (ReLU) gain
        assert torch.allclose(cols, cols[0, 0] * torch.eye(16), atol=1e-4)
    out = model(_tokens())
    assert torch.isfinite(out).all()


def test_builder_default_is_gpt2s_normal_init():
    torch.manual_seed(0)
    model = gradhealth.create_model("transformer:depth=2,width=64")
    for weight in (model.tok_emb.weight, model.blocks[1].attn.qkv.weight, model.head.weight):
        assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.qkv.bias.abs().max() == 0


@pytest.mark.parametrize("spec, message", [
    ("transformer:norm=middle", "unknown norm placement 'middle'"),
    ("transformer:width=30,heads=4", "multiple of heads"),
    ("transformer:branch_scale=huge", "unknown branch scale"),
    ("transformer:task=translate", "unknown task"),
    ("rnn:cell=elman", "unknown cell 'elman'"),
    ("rnn:recurrent_init=zeros", "unknown recurrent init"),
    ("rnn:task=lm,in_features=3", "must be token ids"),
])
def test_bad_options_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        gradhealth.create_model(spec)


def test_wrong_inputs_say_what_the_model_takes():
    with pytest.raises(ConfigError, match="longer than max_len=12"):
        gradhealth.create_model(SMALL)(_tokens(steps=13))
    with pytest.raises(ConfigError, match="token ids"):
        gradhealth.create_model(SMALL)(torch.randn(2, 5))
    with pytest.raises(ConfigError, match=r"\(batch, time, 3\) floats"):
        gradhealth.create_model("rnn:in_features=3,hidden=4")(torch.randn(2, 5, 4))


# ---- recurrent ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell, gates", [("rnn", 1), ("lstm", 4), ("gru", 3)])
@pytest.mark.parametrize("scheme", ["orthogonal", "identity"])
def test_recurrent_init_sets_each_gates_block(cell, gates, scheme):
    torch.manual_seed(0)
    model = gradhealth.create_model(f"rnn:cell={cell},hidden=8,layers=2,recurrent_init={scheme},recurrent_gain=2")
    for layer in range(2):
        weight = getattr(model.rnn, f"weight_hh_l{layer}").detach()
        assert weight.shape == (gates * 8, 8)
        for block in weight.chunk(gates):
            if scheme == "identity":
                assert torch.equal(block, 2 * torch.eye(8))
            else:
                assert torch.allclose(block @ block.T, 4 * torch.eye(8), atol=1e-5)


def test_a_named_init_sets_recurrent_weights_and_recurrent_init_still_wins():
    torch.manual_seed(0)
    model = gradhealth.create_model("lstm:hidden=32,init=normal(0.5),recurrent_init=orthogonal")
    assert model.rnn.weight_ih_l0.std().item() == pytest.approx(0.5, rel=0.1)  # the scheme reached the cell
    assert model.rnn.bias_ih_l0.abs().max() == 0
    block = model.rnn.weight_hh_l0.detach()[:32]
    assert torch.allclose(block @ block.T, torch.eye(32), atol=1e-5)
    he = gradhealth.create_model("gru:hidden=32,init=he")
    # kaiming on each gate's (32, 32) block: std 1/sqrt(32) with a linear gain
    assert he.rnn.weight_hh_l0.std().item() == pytest.approx(1 / math.sqrt(32), rel=0.1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_tasks_and_inputs(cell):
    tokens = _tokens(steps=7)
    classify = gradhealth.create_model(f"rnn:cell={cell},hidden=8,vocab_size=20,num_classes=3")
    assert classify(tokens).shape == (2, 3)
    assert isinstance(classify.embed, torch.nn.Embedding)
    lm = gradhealth.create_model(f"rnn:cell={cell},hidden=8,vocab_size=20,task=lm")
    out = lm(tokens)
    assert out.shape == (2, 7, 20)
    # the last step's score depends only on the prefix: the RNN is causal by construction
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 20
    assert torch.allclose(lm(changed)[:, :5], out[:, :5])
    floats = gradhealth.create_model(f"rnn:cell={cell},hidden=8,in_features=2,num_classes=3")
    assert isinstance(floats.embed, torch.nn.Linear)
    assert floats(torch.randn(2, 7, 2)).shape == (2, 3)
    one = gradhealth.create_model(f"rnn:cell={cell},hidden=8,in_features=1,num_classes=3")
    assert one(torch.randn(2, 7)).shape == (2, 3)  # (B, T) floats: one feature per step


def test_sequence_models_train_through_fit_on_token_data():
    from torch.utils.data import TensorDataset

    from gradhealth.train.data import DataBundle
    from gradhealth.train.loop import fit

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, (64, 6), generator=gen)
    y = x[:, 0] % 3  # the class is set by the first token
    bundle = DataBundle("first-token", TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:]), (6,), 3,
                        "token ids, not rescaled")
    for spec in ("transformer:depth=2,width=16,heads=2,task=classify,vocab_size=8,max_len=6,num_classes=3",
                 "gru:hidden=8,vocab_size=8,num_classes=3"):
        torch.manual_seed(0)
        model = gradhealth.create_model(spec)
        result = fit(model=model, data=bundle, steps=4, batch_size=16, lr=0.01, progress=False)
        assert result.summary["steps"] == 4 and math.isfinite(result.summary["final_loss"])


@pytest.mark.parametrize("cell, gates", [("lstm", 4), ("gru", 3)])
def test_gate_bias_opens_the_keep_gate_and_survives_a_named_init(cell, gates):
    torch.manual_seed(0)
    model = gradhealth.create_model(f"rnn:cell={cell},hidden=8,gate_bias=2,init=he")
    blocks = model.rnn.bias_ih_l0.detach().chunk(gates)
    # LSTM (i, f, g, o): the forget gate; GRU (r, z, n): the update gate; the others stay at the init's 0
    assert torch.equal(blocks[1], torch.full((8,), 2.0))
    assert all(torch.equal(b, torch.zeros(8)) for i, b in enumerate(blocks) if i != 1)
    with pytest.raises(ConfigError, match="a tanh RNN has no gate"):
        gradhealth.create_model("rnn:gate_bias=1")
