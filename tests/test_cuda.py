"""On a CUDA device: what only a GPU can show about the monitor and the training loop.

The one device-to-host transfer per recorded step and records that arrive later, torch.compile's
default (inductor) backend, AMP training and resume (the fp16 GradScaler test of test_monitor.py
runs on the GPU too). Skipped where torch sees no GPU; run them on one with `pytest tests/`.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from _grads import own_grad_norm

import gradhealth
from gradhealth.monitor import GradientMonitor
from gradhealth.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")



def _images(n=32, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g).to(CUDA), torch.randint(0, classes, (n,), generator=g).to(CUDA)


def _count_syncs(fn) -> int:
    """How many synchronizing CUDA calls (device-to-host reads) ``fn`` makes."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    # setting the mode warns that it is a prototype, in words that say "synchronizing" too
    return sum("called a synchronizing" in str(w.message) for w in caught)


def test_monitor_reads_the_device_at_most_once_per_recorded_step():
    torch.manual_seed(0)
    spec = "convnet:dims=2,in_chans=3,depth=6,width=16,activation=relu,norm=batch,residual=true"
    plain = gradhealth.create_model(spec).to(CUDA)
    watched = gradhealth.create_model(spec).to(CUDA)
    x, y = _images(16)

    def train_step(model, opt, mon=None):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if mon is not None:
            mon.step(loss=loss)
        opt.step()
        opt.zero_grad()

    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01)
    watched_opt = torch.optim.SGD(watched.parameters(), lr=0.01)
    mon = GradientMonitor(watched, optimizer=watched_opt, detail_every=4).attach()
    assert _count_syncs(lambda: float(x.sum())) == 1  # the counter sees a device read
    try:
        for _ in range(6):  # the first steps build caches; step 4 is a detailed one
            train_step(watched, watched_opt, mon)
            train_step(plain, plain_opt)
        baseline = _count_syncs(lambda: train_step(plain, plain_opt))
        norms_only = _count_syncs(lambda: train_step(watched, watched_opt, mon))  # step 6
        train_step(watched, watched_opt, mon)                                     # step 7
        detailed = _count_syncs(lambda: train_step(watched, watched_opt, mon))    # step 8: weights, updates, activations
    finally:
        mon.detach()
    assert [r.step for r in mon.records] == list(range(9))
    assert mon.records[-1].layers["head"].weight_norm is not None
    assert mon.records[-2].layers["head"].weight_norm is None
    # at most the one transfer; in steady state none at all: the copy lands while later steps run
    assert norms_only - baseline <= 1
    assert detailed - baseline <= 1


def test_records_that_arrive_later_hold_the_numbers_of_their_own_step():
    torch.manual_seed(0)
    model = gradhealth.create_model("resnet20").to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _images()
    expected = []
    with GradientMonitor(model, optimizer=opt, detail_every=3) as mon:
        for _ in range(8):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            mon.step(loss=loss)
            # kept on the device: reading it here would wait for the GPU, as the monitor does not
            expected.append((torch.cat([p.grad.flatten() for p in model.fc.parameters()]).double().norm(),
                             loss.detach().double()))
            opt.step()
            opt.zero_grad()
        assert len(mon.records) == 8  # reading records waits for the copies still on their way
    for record, (norm, loss) in zip(mon.records, expected):
        assert record.layers["fc"].grad_norm == pytest.approx(float(norm), rel=1e-6)
        assert record.loss == pytest.approx(float(loss), rel=1e-6)
        assert (record.layers["fc"].update_ratio is not None) == (record.step % 3 == 0)


def _detailed_record(model, x, y, device):
    """One detailed, clipped SGD-with-momentum step of a copy of ``model`` on ``device``."""
    model = copy.deepcopy(model).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with GradientMonitor(model, optimizer=opt, detail_every=1) as mon:
        for _ in range(2):  # the second step's update includes momentum
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            loss.backward()
            mon.step(loss=loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            mon.after_clip()
            opt.step()
            opt.zero_grad()
    return mon.records[-1]


@pytest.mark.parametrize("kind", ["mixed-activations", "conv-batchnorm"])
def test_a_detailed_step_on_cuda_records_what_the_cpu_records(kind):
    torch.manual_seed(0)
    if kind == "mixed-activations":
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 48), torch.nn.Sigmoid(), torch.nn.Linear(48, 48), torch.nn.Tanh(),
            torch.nn.Linear(48, 48), torch.nn.LeakyReLU(0.1), torch.nn.Linear(48, 48), torch.nn.GELU(),
            torch.nn.Linear(48, 48), torch.nn.PReLU(), torch.nn.Linear(48, 48), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(48, 10))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 64, generator=g) * 3, torch.randint(0, 10, (64,), generator=g)
    else:
        model = gradhealth.create_model("convnet:dims=2,in_chans=3,depth=4,width=16,activation=relu,norm=batch,residual=true")
        x, y = (t.cpu() for t in _images(32))
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the same float32 arithmetic as the CPU's
    try:
        on_cpu = _detailed_record(model, x, y, "cpu")
        on_gpu = _detailed_record(model, x, y, CUDA)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    close = dict(rel=1e-4, abs=1e-9)
    assert on_gpu.loss == pytest.approx(on_cpu.loss, **close)
    assert on_gpu.global_grad_norm == pytest.approx(on_cpu.global_grad_norm, **close)
    assert on_gpu.global_grad_norm_post_clip == pytest.approx(on_cpu.global_grad_norm_post_clip, **close)
    assert on_cpu.layers.keys() == on_gpu.layers.keys()
    for name, cpu_layer in on_cpu.layers.items():
        gpu_layer = on_gpu.layers[name]
        for field in ("grad_norm", "grad_norm_post_clip", "grad_max", "weight_norm", "update_ratio"):
            expected = getattr(cpu_layer, field)
            assert expected is not None, (name, field)
            assert getattr(gpu_layer, field) == pytest.approx(expected, **close), (name, field)
        assert gpu_layer.grad_nonfinite == cpu_layer.grad_nonfinite == 0
    assert on_cpu.activations.keys() == on_gpu.activations.keys() and on_cpu.activations
    for name, cpu_act in on_cpu.activations.items():
        gpu_act = on_gpu.activations[name]
        assert gpu_act.mean == pytest.approx(cpu_act.mean, rel=1e-4, abs=1e-6), name
        assert gpu_act.std == pytest.approx(cpu_act.std, rel=1e-4, abs=1e-6), name
        for field in ("saturation", "dead_fraction"):
            expected = getattr(cpu_act, field)
            got = getattr(gpu_act, field)
            # a unit right at a threshold may fall either side of it under another summation order
            assert (got is None) == (expected is None) and (expected is None or abs(got - expected) < 2e-3), (name, field)
    assert on_gpu.first_nonfinite is None and on_cpu.first_nonfinite is None


def test_inductor_compiled_model_runs_monitored_with_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=4,width=32,activation=tanh,in_features=64").to(CUDA)
    compiled = torch.compile(model, fullgraph=True)  # raises on any graph break our hooks cause
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 64, generator=g).to(CUDA), torch.randint(0, 10, (32,), generator=g).to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with GradientMonitor(compiled, optimizer=opt, detail_every=2) as mon:
        for _ in range(3):
            loss = F.cross_entropy(compiled(x), y)
            loss.backward()
            mon.step(loss=loss)
            expected = own_grad_norm(model.head)
            opt.step()
            opt.zero_grad()
            assert mon.records[-1].layers["head"].grad_norm == pytest.approx(expected, rel=1e-6)
    assert len(mon.records) == 3
    assert all(r.layers["head"].update_ratio is not None for r in list(mon.records)[::2])
    torch._dynamo.reset()


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_training_on_cuda_with_amp_trains_and_records_every_step(amp, tmp_path):
    result = gradhealth.fit(model="resnet20", data="synthetic-image:n=512", steps=30, batch_size=64, lr=0.05,
                            amp=amp, clip="norm", clip_value=1.0, device="cuda", progress=False,
                            out=str(tmp_path / amp))
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.stopped is None
    records = result.records
    assert len(records) == 30
    taken = [r for r in records if not r.skipped]
    assert len(taken) >= 20  # fp16 may skip its first steps while GradScaler finds its scale
    assert all(r.global_grad_norm is not None and r.global_grad_norm > 0 for r in taken)
    assert records[-1].loss < records[0].loss


def test_resume_on_cuda_is_bit_exact(tmp_path):
    common = dict(model="mlp:depth=6,width=32,norm=batch", data="synthetic:in=16,classes=4,n=512", batch_size=32,
                  lr=0.05, momentum=0.9, clip="autoclip", device="cuda", progress=False)
    gradhealth.fit(**common, steps=12, out=str(tmp_path / "whole"))
    gradhealth.fit(**common, steps=5, out=str(tmp_path / "part"))
    gradhealth.fit(**common, steps=12, out=str(tmp_path / "part"),
                   resume=str(tmp_path / "part" / "checkpoints" / "last.pt"))
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
