"""GradientMonitor on real model families, seen whole: GPT-2 (its Conv1D projections, its GELU
class, tied embeddings), attention, transformer encoders, recurrent layers, frozen parts; what
it did not see is said; gradient through time; repeated blocks and their skip paths; the first
NaN of a user's own loop. Every number against an oracle computed here with torch itself."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from _real_models import TorchViT, tiny_decoder, vgg

from gradhealth.diagnose.coverage import coverage
from gradhealth.diagnose.rules import rules_not_run
from gradhealth.diagnose.structure import norm_placement
from gradhealth.monitor import GradientMonitor, read_jsonl
from gradhealth.monitor.records import BlockInfo, RunLog, RunMeta
from gradhealth.report.format import coverage_text


def _norm(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.cat([t.detach().reshape(-1).double() for t in tensors])))


def _own_grads(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """The oracle's layers: each module's own gradients, a recurrent module's per matrix."""
    out: dict[str, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in own)
        if isinstance(module, nn.RNNBase):
            by = dict(own)
            for n in list(by):
                if n.startswith("weight_"):
                    key = n.replace("weight_hr", "weight_hh")
                    bias = "bias" + n[len("weight"):]
                    out.setdefault(f"{name}.{key}", []).extend(
                        p.grad for p in (by[n], by.get(bias)) if p is not None and p.grad is not None)
            continue
        grads = [p.grad for _, p in own if p.grad is not None]
        if grads:
            out[name or "(root)"] = grads
    return out


def _check_norms_and_coverage(model: nn.Module, mon: GradientMonitor) -> None:
    record = mon.records[-1]
    oracle = _own_grads(model)
    assert oracle, "the model has gradients"
    for name, grads in oracle.items():
        assert record.layers[name].grad_norm == pytest.approx(_norm(grads), rel=1e-5), name
    meta = mon.meta
    named = list(model.named_parameters(remove_duplicate=False))
    assert [p.name for p in meta.parameters] == [n for n, _ in named]
    weight_layers = {layer.name for layer in meta.layers if layer.role == "weight"}
    for info, (_, p) in zip(meta.parameters, named):
        assert info.shape == list(p.shape) and info.trainable == p.requires_grad
        if p.dim() >= 2:  # coverage: every matrix is in a measured weight layer
            assert info.layer in weight_layers and info.role == "weight", info


# ---- a GPT-2-style model of our own: Conv1D projections, its GELU class, tied embeddings -------

class Conv1D(nn.Module):
    """Hugging Face's GPT-2 projection: weight (in, out), ``x @ w + b``."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class NewGELUActivation(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class TinyRMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = Conv1D(3 * dim, dim)
        self.c_proj = Conv1D(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(Conv1D(4 * dim, dim), NewGELUActivation(), Conv1D(dim, 4 * dim))

    def forward(self, x):
        if not self.residual:
            return self.mlp(self.ln_2(self.attn(self.ln_1(x))))
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16, heads: int = 2, depth: int = 2, residual: bool = True):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(32, dim)
        self.h = nn.ModuleList(Block(dim, heads, residual) for _ in range(depth))
        self.ln_f = TinyRMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _lm_step(model, mon, tokens, vocab):
    logits = model(tokens)
    loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens.reshape(-1))
    loss.backward()
    mon.step(loss=loss)
    return loss


def test_a_gpt2_style_model_is_seen_whole_with_tied_and_frozen_parameters():
    torch.manual_seed(0)
    model = TinyGPT()
    model.wpe.weight.requires_grad_(False)  # a frozen part
    tokens = torch.randint(0, 50, (4, 12))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with GradientMonitor(model, optimizer=opt, detail_every=1) as mon:
        _lm_step(model, mon, tokens, 50)
        opt.step()
        _check_norms_and_coverage(model, mon)
        meta, record = mon.meta, mon.records[-1]
    layers = {layer.name: layer for layer in meta.layers}
    for name in ("h.0.attn.c_attn", "h.0.attn.c_proj", "h.1.mlp.0", "h.1.mlp.2"):
        assert layers[name].role == "weight" and layers[name].type == "Conv1D"
    assert layers["h.0.mlp.1"].role == "activation" and layers["h.0.mlp.1"].activation == "gelu"
    assert record.activations["h.0.mlp.1"].saturation is not None
    assert layers["ln_f"].role == "norm" and layers["h.0.ln_1"].role == "norm"
    assert layers["wte"].tied == ["lm_head"] and "lm_head" not in layers
    params = {p.name: p for p in meta.parameters}
    assert params["lm_head.weight"].layer == "wte" and params["lm_head.weight"].tied == ["wte.weight"]
    assert params["wte.weight"].tied == ["lm_head.weight"]
    assert params["wpe.weight"].trainable is False and params["wpe.weight"].layer == "wpe"
    assert record.layers["wpe"].grad_norm is None  # frozen: no gradient, and said so
    assert meta.config["optimizer"] == "AdamW"
    assert meta.blocks == [BlockInfo("h.0", True), BlockInfo("h.1", True)]
    # pre-LN: the block's first measured module is a norm, in forward order
    names = [layer.name for layer in meta.layers if layer.name.startswith("h.0.")]
    assert names[0] == "h.0.ln_1"


def test_blocks_without_a_skip_path_are_found_and_said_to_have_none():
    torch.manual_seed(0)
    model = TinyGPT(residual=False)
    stack = nn.Sequential(*(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3)))
    with GradientMonitor(model, detail_every=1) as mon:
        _lm_step(model, mon, torch.randint(0, 50, (2, 6)), 50)
        assert mon.meta.blocks == [BlockInfo("h.0", False), BlockInfo("h.1", False)]
    with GradientMonitor(stack) as mon:
        stack(torch.randn(4, 8, requires_grad=True)).sum().backward()
        mon.step()
        assert mon.meta.blocks == [BlockInfo(str(i), False) for i in range(3)]


def test_hugging_face_gpt2_is_seen_whole():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    model.train()
    tokens = torch.randint(0, 64, (2, 10))
    with GradientMonitor(model, detail_every=1) as mon:
        model(input_ids=tokens, labels=tokens).loss.backward()
        mon.step()
        _check_norms_and_coverage(model, mon)
        meta, record = mon.meta, mon.records[-1]
    layers = {layer.name: layer for layer in meta.layers}
    projections = [n for n, layer in layers.items() if layer.type == "Conv1D"]
    assert len(projections) == 8 and all(layers[n].role == "weight" for n in projections)
    act = "transformer.h.0.mlp.act"
    assert layers[act].type == "NewGELUActivation" and layers[act].activation == "gelu"
    assert record.activations[act].saturation is not None
    assert layers["transformer.wte"].tied == ["lm_head"]
    assert {p.name: p.layer for p in meta.parameters}["lm_head.weight"] == "transformer.wte"
    assert meta.blocks == [BlockInfo("transformer.h.0", True), BlockInfo("transformer.h.1", True)]
    assert meta.unhooked == []


# ---- torch's attention and encoders ------------------------------------------------------------

class WithAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.mha(h, h, h, need_weights=False)[0])


def test_multihead_attention_in_proj_is_a_weight_layer():
    torch.manual_seed(0)
    model = WithAttention()
    with GradientMonitor(model, detail_every=1) as mon:
        model(torch.randn(3, 5, 6)).sum().backward()
        mon.step()
        _check_norms_and_coverage(model, mon)
        layers = {layer.name: layer for layer in mon.meta.layers}
    assert layers["mha"].role == "weight" and layers["mha.out_proj"].role == "weight"
    order = [layer.name for layer in mon.meta.layers]
    assert order.index("inp") < order.index("mha") < order.index("mha.out_proj") < order.index("out")


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_layers_are_blocks_with_a_skip_path(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    model = nn.Sequential(nn.Linear(4, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                          nn.Linear(16, 1))
    with GradientMonitor(model, detail_every=1) as mon:
        model(torch.randn(3, 7, 4)).sum().backward()
        mon.step()
        _check_norms_and_coverage(model, mon)
        meta = mon.meta
    assert meta.blocks == [BlockInfo("1.layers.0", True), BlockInfo("1.layers.1", True)]
    block = [layer for layer in meta.layers if layer.name.startswith("1.layers.0.")]
    ordered_norms = [layer.name for layer in block if layer.role == "norm"]
    assert ordered_norms == ["1.layers.0.norm1", "1.layers.0.norm2"]
    # forward order tells the placement: pre-LN starts the block with a norm, post-LN ends it with one
    assert (block[0].role, block[-1].role) == (("norm", "weight") if norm_first else ("weight", "norm"))
    assert [layer.name for layer in block if layer.role == "weight"][0] == "1.layers.0.self_attn"


# ---- recurrent layers --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_recurrent_layers_are_measured_per_matrix_and_direction(kind):
    torch.manual_seed(0)
    rnn = getattr(nn, kind)(5, 6, num_layers=2, bidirectional=kind == "LSTM", batch_first=True)
    model = nn.Sequential()
    model.add_module("rnn", rnn)
    with GradientMonitor(model, detail_every=1) as mon:
        out, _ = rnn(torch.randn(3, 4, 5))
        out[:, -1].pow(2).sum().backward()
        mon.step()
        _check_norms_and_coverage(model, mon)
        meta = mon.meta
    names = [layer.name for layer in meta.layers]
    sfx = ("", "_reverse") if kind == "LSTM" else ("",)
    assert names == [f"rnn.weight_{m}_l{k}{s}" for k in range(2) for s in sfx for m in ("ih", "hh")]
    assert {layer.type for layer in meta.layers} == {kind} and {layer.role for layer in meta.layers} == {"weight"}
    assert meta.time_series == ["rnn"]


def test_gradient_through_time_of_an_rnn_equals_autograd():
    torch.manual_seed(0)
    embed, rnn, head = nn.Linear(3, 4), nn.RNN(4, 8, batch_first=True), nn.Linear(8, 1)
    model = nn.ModuleDict({"embed": embed, "rnn": rnn, "head": head})
    x = torch.randn(2, 9, 3)

    def loss_of(seq_in):
        out, _ = rnn(seq_in)
        return head(out[:, -1]).pow(2).sum()

    # the oracle: dL/dx_t of the rnn's input sequence, per t
    seq = embed(x)
    grad = torch.autograd.grad(loss_of(seq), seq)[0]
    oracle = [float(torch.linalg.vector_norm(grad[:, t].double())) for t in range(9)]
    with GradientMonitor(model, every=1, detail_every=2) as mon:
        for _ in range(2):
            model.zero_grad()
            loss_of(embed(x)).backward()
            mon.step()
        detailed, plain = mon.records
    assert detailed.time_grads["rnn"] == pytest.approx(oracle, rel=1e-6)
    assert oracle[0] < oracle[-1]  # the gradient fades back through time
    assert plain.time_grads == {}
    # the probe leaves the gradient that reaches the modules before the rnn as it was
    assert detailed.layers["embed"].grad_norm == pytest.approx(plain.layers["embed"].grad_norm, rel=1e-6)


def test_watch_time_measures_a_users_own_sequence_and_packed_input_is_said_unmeasured():
    torch.manual_seed(0)

    class Scan(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.Linear(4, 4)
            self.monitor = None

        def forward(self, x):
            x = self.monitor.watch_time("scan_in", x, time_dim=1)
            h = torch.zeros(x.shape[0], 4)
            for t in range(x.shape[1]):
                h = torch.tanh(self.cell(h) + x[:, t])
            return h

    model = Scan()
    x = torch.randn(3, 6, 4, requires_grad=True)
    with GradientMonitor(model, detail_every=1) as mon:
        model.monitor = mon
        model(x).sum().backward()
        mon.step()
    oracle = [float(torch.linalg.vector_norm(x.grad[:, t].double())) for t in range(6)]
    assert mon.records[-1].time_grads["scan_in"] == pytest.approx(oracle, rel=1e-6)
    assert mon.meta.time_series == ["scan_in"]

    lstm = nn.LSTM(2, 3)
    holder = nn.ModuleDict({"lstm": lstm, "soft": nn.Softmax(-1)})
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(4, 2, 2), [4, 2])
    with GradientMonitor(holder, detail_every=1) as mon:
        out, _ = lstm(packed)
        out.data.sum().backward()
        mon.step()
    assert mon.records[-1].time_grads == {}
    assert [u.split(" ")[:2] for u in mon.meta.time_unmeasured] == [["lstm", "(PackedSequence"]]
    assert [u.split(" ")[:2] for u in mon.meta.unhooked] == [["soft", "(Softmax:"]]
    # the recurrent layer is no activation: the coverage counts the Softmax alone
    cover = coverage(RunLog(mon.meta, list(mon.records)))
    assert cover["activations"]["total"] == 1 and cover["activations"]["unhooked"] == mon.meta.unhooked
    assert cover["time_unmeasured"] == mon.meta.time_unmeasured
    assert "0 of 1 activation modules hooked; gradient through time of lstm; gradient through time not measured: " \
           "lstm (PackedSequence input" in coverage_text(cover)
    # a log written before time_unmeasured had its field listed the recurrent layer as unhooked
    old = RunMeta(layers=mon.meta.layers, parameters=mon.meta.parameters,
                  unhooked=mon.meta.time_unmeasured + mon.meta.unhooked, time_series=mon.meta.time_series)
    cover = coverage(RunLog(old, list(mon.records)))
    assert cover["activations"]["total"] == 1 and cover["time_unmeasured"] == mon.meta.time_unmeasured
    not_run = rules_not_run(RunLog(old, list(mon.records)))
    why = next(n["reason"] for n in not_run if n["rule"] == "gradient through time")
    assert "PackedSequence input" in why


# ---- the first NaN of a user's own loop --------------------------------------------------------

class Three(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 1)
        self.act1, self.act2 = nn.Tanh(), nn.Tanh()

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def test_a_nan_on_an_unwatched_step_is_named_at_the_next_forward_pass():
    torch.manual_seed(0)
    model, x = Three(), torch.randn(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with GradientMonitor(model, optimizer=opt, detail_every=1000) as mon:
        for step in range(6):
            if step == 3:
                with torch.no_grad():
                    model.fc2.weight[0, 0] = float("nan")
            loss = model(x).pow(2).mean()
            loss.backward()
            mon.step(loss=loss)
            if torch.isfinite(loss):  # the loop skips a non-finite step, as GradScaler would
                opt.step()
            opt.zero_grad()
    records, first = list(mon.records), mon.first_nonfinite  # the last step, skipped, completes at detach
    assert [bool(r.activations) for r in records[:4]] == [True, False, False, False]
    bad = records[3].first_nonfinite
    assert (bad.kind, bad.step, bad.layer) == ("loss", 3, "fc3")  # all its gradients bad: the last
    assert records[3].skipped
    watched = records[4].first_nonfinite
    assert (watched.kind, watched.layer, watched.step) == ("forward", "fc2", 4)
    assert records[4].activations  # the armed step measured its forward pass
    assert not records[5].activations  # and the watch went off again
    assert (first.kind, first.layer) == ("forward", "fc2")


class NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_a_nan_born_in_backward_is_named_on_an_unwatched_step_of_a_plain_loop():
    torch.manual_seed(0)
    model, x = Three(), torch.randn(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    poison = {"on": False}
    fc2_forward = model.fc2.forward
    model.fc2.forward = lambda h: NaNGradient.apply(fc2_forward(h)) if poison["on"] else fc2_forward(h)
    with GradientMonitor(model, optimizer=opt, detail_every=1000) as mon:
        for step in range(3):
            poison["on"] = step == 2
            loss = model(x).pow(2).mean()
            loss.backward()
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad()
        event = mon.first_nonfinite
    assert (event.kind, event.layer, event.step) == ("gradient", "fc2", 2)


# ---- the log keeps it all, and old logs still read ---------------------------------------------

def test_the_jsonl_log_keeps_the_new_fields_and_old_logs_still_read(tmp_path):
    torch.manual_seed(0)
    model = nn.ModuleDict({"rnn": nn.GRU(3, 4, batch_first=True), "gpt": TinyGPT(depth=2)})
    path = tmp_path / "run.jsonl"
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with GradientMonitor(model, optimizer=opt, detail_every=1, jsonl=path) as mon:
        out, _ = model["rnn"](torch.randn(2, 5, 3))
        tokens = torch.randint(0, 50, (2, 5))
        loss = out.sum() + nn.functional.cross_entropy(model["gpt"](tokens).reshape(-1, 50), tokens.reshape(-1))
        loss.backward()
        mon.step(loss=loss)
        opt.step()
        meta, record = mon.meta, mon.records[-1]
    log = read_jsonl(path)
    assert log.meta == meta
    assert log.meta.blocks == [BlockInfo("gpt.h.0", True), BlockInfo("gpt.h.1", True)]
    assert log.records[0].time_grads == record.time_grads and len(record.time_grads["rnn"]) == 5
    old = tmp_path / "old.jsonl"
    lines = path.read_text().splitlines()
    body = json.loads(lines[0])["meta"]
    for key in ("parameters", "unhooked", "time_series", "blocks"):
        body.pop(key)
    for layer in body["layers"]:
        layer.pop("tied"), layer.pop("block")
    step = json.loads(lines[1])
    step.pop("time_grads")
    old.write_text(json.dumps({"meta": body}) + "\n" + json.dumps(step) + "\n")
    read = read_jsonl(old)
    assert read.meta.parameters == [] and read.meta.blocks == [] and read.records[0].time_grads == {}
    assert isinstance(read.meta, RunMeta) and [layer.tied for layer in read.meta.layers][0] == []


# ---- activation classes of torch and other libraries -------------------------------------------

@pytest.mark.parametrize("act", [nn.Mish(), nn.Softplus(beta=2.0), nn.SELU(), nn.CELU(alpha=0.5), nn.GELU(),
                                 nn.SiLU()], ids=lambda m: type(m).__name__)
def test_new_saturation_rules_match_the_derivative_from_autograd(act):
    x = torch.linspace(-15, 15, 30001, dtype=torch.float64).reshape(1, -1)
    model = nn.Sequential(nn.Identity(), act)
    with GradientMonitor(model, detail_every=1) as mon:
        model(x)
        mon.step()
        saturation = mon.records[-1].activations["1"].saturation
    probe = x.clone().requires_grad_(True)
    slope = torch.autograd.grad(act(probe).sum(), probe)[0].abs()
    oracle = float((slope < 0.01 * slope.max()).double().mean())
    assert saturation == pytest.approx(oracle, abs=5e-4)
    assert 0.1 < oracle < 0.9  # the grid reaches the flat region and the live one


def test_every_hugging_face_activation_class_is_measured_or_said_unmeasured():
    activations = pytest.importorskip("transformers.activations")
    classes = [c for c in vars(activations).values()
               if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == activations.__name__]
    model = nn.ModuleDict()
    for cls in classes:
        try:
            model[cls.__name__] = cls()
        except TypeError:  # needs arguments (ClippedGELUActivation: min, max)
            model[cls.__name__] = cls(-10.0, 10.0)
    with GradientMonitor(model) as mon:
        meta = mon.meta
    measured = {layer.name for layer in meta.layers if layer.role == "activation"}
    unhooked = {u.split(" ")[0] for u in meta.unhooked}
    assert measured | unhooked == set(model.keys()) and not measured & unhooked
    assert {"NewGELUActivation", "GELUActivation", "FastGELUActivation", "QuickGELUActivation",
            "SiLUActivation", "MishActivation", "ReLUSquaredActivation"} <= measured


@pytest.mark.parametrize("name, rule", [("SwishMe", "silu"), ("HardMishMe", "mish"), ("GELUTanh", "gelu"),
                                        ("MyLeakyReLU", "leaky_relu"), ("ScaledTanh", "tanh")])
def test_an_activation_class_of_any_library_gets_the_rule_its_name_says(name, rule):
    cls = type(name, (nn.Module,), {"forward": lambda self, x: x, "negative_slope": 0.1})
    model = nn.Sequential(nn.Linear(2, 2), cls())
    with GradientMonitor(model) as mon:
        layers = {layer.name: layer for layer in mon.meta.layers}
    assert layers["1"].role == "activation" and layers["1"].activation == rule


class BasicBlock(nn.Module):
    """torchvision's ResNet block: a projection shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, skip: bool = True):
        super().__init__()
        self.skip = skip
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.skip:
            out += identity
        return self.relu(out)


@pytest.mark.parametrize("skip", [True, False])
def test_a_projection_shortcut_is_a_skip_path(skip):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                          nn.Sequential(BasicBlock(4, 8, 2, skip), BasicBlock(8, 8, 1, skip)))
    with GradientMonitor(model) as mon:
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        mon.step()
        assert mon.meta.blocks == [BlockInfo("1.0", skip), BlockInfo("1.1", skip)]


# ---- Llama-style decoders, vision transformers, a plain CNN, frozen parts ---------------------------

_NORM_CLASSES = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)


def _check_roles(model: nn.Module, mon: GradientMonitor) -> None:
    """No module misclassified: norms (torch's and other libraries' RMSNorm) are norms, modules with
    a matrix are weight layers, activations are measured or said unmeasured, nothing is 'other'."""
    modules = dict(model.named_modules())
    layers = {layer.name: layer for layer in mon.meta.layers}
    assert not [n for n, layer in layers.items() if layer.role == "other"]
    seen: set[int] = set()
    for name, module in modules.items():
        name = name or "(root)"
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]  # tied: counted once
        seen.update(id(p) for p in own)
        if not own and list(module.parameters(recurse=False)):
            continue
        if isinstance(module, _NORM_CLASSES) or type(module).__name__.endswith("RMSNorm"):
            assert layers[name].role == "norm", name
        elif any(p.dim() >= 2 for p in own):
            assert layers[name].role == "weight", name
        elif not own and name in layers:  # a module without parameters is listed only as an activation
            assert layers[name].role == "activation", name
    # buffers without parameters (rotary embeddings, a causal mask) are no layer of any kind
    for name, module in modules.items():
        if not list(module.parameters(recurse=False)) and list(module.buffers(recurse=False)):
            assert name not in layers and not [u for u in mon.meta.unhooked if u.startswith(name + " ")], name


def _coverage_is_whole(mon: GradientMonitor) -> dict:
    cover = coverage(RunLog(mon.meta, list(mon.records)))
    weights = cover["weight_matrices"]
    assert weights["fraction"] == 1.0 and weights["unmeasured"] == [] and cover["complete_enough"], weights
    return cover


@pytest.mark.parametrize("kind, tied", [("llama", False), ("llama", True), ("mistral", False), ("qwen2", True)])
def test_a_llama_style_decoder_is_seen_whole(kind, tied):
    torch.manual_seed(0)
    model = tiny_decoder(kind, tied)
    tokens = torch.randint(0, 64, (2, 10))
    with GradientMonitor(model, detail_every=1) as mon:
        model(input_ids=tokens, labels=tokens).loss.backward()
        mon.step()
        _check_norms_and_coverage(model, mon)
        _check_roles(model, mon)
        cover = _coverage_is_whole(mon)
        meta, record = mon.meta, mon.records[-1]
    layers = {layer.name: layer for layer in meta.layers}
    for norm in ("model.layers.0.input_layernorm", "model.layers.1.post_attention_layernorm", "model.norm"):
        assert layers[norm].role == "norm" and layers[norm].type.endswith("RMSNorm")
    act = layers["model.layers.0.mlp.act_fn"]
    assert act.role == "activation" and act.activation == "silu"
    assert record.activations["model.layers.0.mlp.act_fn"].saturation is not None
    assert cover["activations"] == {"hooked": 2, "total": 2, "unhooked": []}
    assert "model.rotary_emb" not in layers and meta.unhooked == []
    weights = cover["weight_matrices"]
    # embeddings, 7 matrices a block, the head unless it is the embedding
    assert weights["total"] == 1 + 2 * 7 + (0 if tied else 1) and weights["frozen"] == 0
    assert layers["model.embed_tokens"].tied == (["lm_head"] if tied else [])
    assert ("lm_head" in layers) is not tied
    assert meta.blocks == [BlockInfo("model.layers.0", True), BlockInfo("model.layers.1", True)]
    # pre-norm: each block's first module in forward order is its RMSNorm, whatever the library calls it
    assert [n for n in layers if n.startswith("model.layers.0.")][0] == "model.layers.0.input_layernorm"
    assert norm_placement(RunLog(meta, [record])) == "pre"


def test_a_hugging_face_vit_counts_its_class_token_and_position_embeddings():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=5)
    model = transformers.ViTForImageClassification(config)
    model.train()
    with GradientMonitor(model, detail_every=1) as mon:
        model(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([1, 3])).loss.backward()
        mon.step()
        _check_norms_and_coverage(model, mon)
        _check_roles(model, mon)
        cover = _coverage_is_whole(mon)
        meta = mon.meta
    layers = {layer.name: layer for layer in meta.layers}
    params = {p.name: p for p in meta.parameters}
    # the embeddings module owns two 3-D parameters and has children: it is a weight layer of its own
    for name in ("vit.embeddings.cls_token", "vit.embeddings.position_embeddings"):
        assert params[name].layer == "vit.embeddings" and params[name].role == "weight" and len(params[name].shape) == 3
    assert layers["vit.embeddings"].params == 32 + 17 * 32
    patch = "vit.embeddings.patch_embeddings.projection"
    assert layers[patch].type == "Conv2d" and params[patch + ".weight"].layer == patch
    assert cover["weight_matrices"]["total"] == 2 + 1 + 2 * 6 + 1
    assert cover["activations"] == {"hooked": 2, "total": 2, "unhooked": []}
    blocks = [name for name, module in model.named_modules() if type(module).__name__ == "ViTLayer"]
    assert meta.blocks == [BlockInfo(name, True) for name in blocks] and len(blocks) == 2


@pytest.mark.parametrize("module_activation", [False, True], ids=["function", "module"])
def test_a_vit_of_torch_layers_counts_its_own_class_token_and_measures_its_activation(module_activation):
    torch.manual_seed(0)
    model = TorchViT(activation=nn.GELU() if module_activation else "gelu")
    fed = []  # what linear1 of the first block hands the activation
    model.encoder.layers[0].linear1.register_forward_hook(lambda m, i, o: fed.append(o.detach()))
    with GradientMonitor(model, detail_every=1) as mon:
        model(torch.randn(3, 3, 16, 16)).logsumexp(-1).sum().backward()
        mon.step()
        _check_norms_and_coverage(model, mon)
        _check_roles(model, mon)
        cover = _coverage_is_whole(mon)
        meta, record = mon.meta, mon.records[-1]
    params = {p.name: p for p in meta.parameters}
    # parameters the model owns directly beside its children: the model is a layer of its own, "(root)"
    assert params["cls_token"].layer == "(root)" == params["pos_embed"].layer
    assert cover["weight_matrices"]["total"] == 2 + 1 + 2 * 4 + 1  # MHA: in_proj and out_proj
    blocks = [f"encoder.layers.{k}" for k in range(2)]
    assert meta.blocks == [BlockInfo(b, True) for b in blocks]
    assert meta.unhooked == [] and cover["activations"] == {"hooked": 2, "total": 2, "unhooked": []}
    name = "encoder.layers.0.activation"
    stats = record.activations[name]
    out = nn.functional.gelu(fed[0]).double()
    assert stats.mean == pytest.approx(float(out.mean()), rel=1e-5, abs=1e-7)
    assert stats.std == pytest.approx(float(out.std(correction=0)), rel=1e-4)
    slope = 0.5 * torch.erfc(-fed[0].double() / math.sqrt(2)) + fed[0].double() * torch.exp(
        -0.5 * fed[0].double() ** 2) / math.sqrt(2 * math.pi)
    assert stats.saturation == pytest.approx(float((slope.abs() < 0.01 * 1.1289).double().mean()), abs=1e-9)
    if not module_activation:  # F.gelu inside the layer: measured on linear1's output, in its place
        order = [layer.name for layer in meta.layers]
        assert order.index("encoder.layers.0.linear1") < order.index(name) < order.index("encoder.layers.0.linear2")
        info = next(layer for layer in meta.layers if layer.name == name)
        assert (info.role, info.type, info.activation) == ("activation", "gelu (a function)", "gelu")


def test_the_relu_a_torch_encoder_layer_calls_shows_its_dead_units():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(16, 1))
    with torch.no_grad():  # every unit of the first block's feed-forward off: all dead
        model[0].layers[0].linear1.bias.fill_(-100.0)
    with GradientMonitor(model, detail_every=1) as mon:
        model(torch.randn(4, 5, 16)).sum().backward()
        mon.step()
        record = mon.records[-1]
    assert mon.meta.unhooked == []
    dead = record.activations["0.layers.0.activation"]
    assert dead.dead_fraction == 1.0 and dead.saturation == 1.0 and dead.mean == 0.0
    alive = record.activations["0.layers.1.activation"]
    assert alive.dead_fraction < 0.5 and 0.2 < alive.saturation < 0.8


def test_an_activation_function_without_a_rule_is_named_unmeasured():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True,
                                       activation=lambda x: x * torch.sigmoid(x))
    with GradientMonitor(layer, detail_every=1) as mon:
        layer(torch.randn(2, 3, 8)).sum().backward()
        mon.step()
        unhooked = mon.meta.unhooked
    assert len(unhooked) == 1 and unhooked[0].startswith("(root).activation (TransformerEncoderLayer: <lambda> is called")


def test_a_vgg_style_plain_cnn_is_seen_whole_and_its_stages_have_no_skip_path():
    torch.manual_seed(0)
    model = vgg()
    with GradientMonitor(model, detail_every=1) as mon:
        nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
        mon.step()
        _check_norms_and_coverage(model, mon)
        _check_roles(model, mon)
        cover = _coverage_is_whole(mon)
        meta, record = mon.meta, mon.records[-1]
    roles = [(layer.name, layer.role) for layer in meta.layers]
    stage = [("0.0", "weight"), ("0.1", "norm"), ("0.2", "activation"), ("0.3", "weight"), ("0.4", "norm"),
             ("0.5", "activation")]
    assert roles[:6] == stage and roles[-1] == ("4", "weight") and len(roles) == 3 * 6 + 1
    assert cover["weight_matrices"]["total"] == 7 and cover["activations"]["hooked"] == 6
    # in-place ReLU: the dead-unit rule reads the output, so it is measured all the same
    assert record.activations["0.2"].dead_fraction is not None
    # the first stage's input needs no gradient, so its graph cannot tell; the others have no skip
    assert [b.name for b in meta.blocks] == ["0", "1", "2"] and [b.residual for b in meta.blocks[1:]] == [False, False]


def test_frozen_parts_are_reported_frozen_not_unmeasured():
    torch.manual_seed(0)
    model = tiny_decoder("llama", tied=False, layers=3)
    tokens = torch.randint(0, 64, (2, 10))
    mon = GradientMonitor(model, detail_every=1).attach()
    # frozen after the monitor attached, before the first step: recorded as it trains
    model.model.embed_tokens.requires_grad_(False)
    model.model.layers[0].requires_grad_(False)
    model(input_ids=tokens, labels=tokens).loss.backward()
    mon.step()
    _check_norms_and_coverage(model, mon)
    meta, record = mon.meta, mon.records[-1]
    cover = _coverage_is_whole(mon)
    mon.detach()
    frozen = {p.name for p in meta.parameters if not p.trainable}
    assert frozen == {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "model.embed_tokens.weight" in frozen and "model.layers.0.mlp.up_proj.weight" in frozen
    assert all(p.role != "unmeasured" for p in meta.parameters)
    assert record.layers["model.layers.0.self_attn.q_proj"].grad_norm is None
    assert record.layers["model.layers.1.self_attn.q_proj"].grad_norm > 0
    weights = cover["weight_matrices"]
    assert (weights["measured"], weights["total"], weights["frozen"]) == (1 + 2 * 7, 1 + 2 * 7, 1 + 7)
