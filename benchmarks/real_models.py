"""Models gradhealth did not write: what the diagnosis says on them, and what the monitor costs.

    python benchmarks/real_models.py            # every case, then the overhead
    python benchmarks/real_models.py --quick    # fewer steps and seeds: checks that it runs

Each case trains a third-party architecture in an ordinary user loop (``loss.backward();
mon.step(loss=loss); opt.step()``) with ``GradientMonitor(model, optimizer=opt, jsonl=...)``, then
diagnoses the log exactly as ``gradhealth diagnose --from-log`` does:

- a Hugging Face GPT-2 (6 blocks, width 128, byte-level text, AdamW 3e-4): healthy, every weight
  matrix measured; the same at lr 1.0: ``lr_too_high`` naming layers at the first steps;
- a 24-layer post-LN ``nn.TransformerEncoder`` (Adam 1e-3, no warm-up) and its pre-LN twin over
  several seeds;
- a tanh ``nn.RNN`` and an ``nn.LSTM`` on a task whose label is set by the first of 200 steps.

The overhead part times a monitored step against an unmonitored one on the GPT-2 and the LSTM,
interleaved in one process (harness.interleaved), median of paired ratios.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import first_element_batches, stdlib_bytes, text_batches  # noqa: E402

from gradhealth.diagnose.rules import diagnose_log  # noqa: E402
from gradhealth.monitor import GradientMonitor  # noqa: E402
from gradhealth.monitor.records import read_jsonl  # noqa: E402


# ---- models -------------------------------------------------------------------------------------

def gpt2(seed: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=6, n_embd=128, n_head=4, vocab_size=256, n_positions=64, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


class EncoderLM(nn.Module):
    """Token and position embeddings, ``nn.TransformerEncoder`` with a causal mask, a linear head."""

    def __init__(self, depth: int, width: int = 64, heads: int = 4, norm_first: bool = False, seq_len: int = 64):
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, 256)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.head(self.encoder(self.embed(idx) + self.pos[:t], mask=mask, is_causal=True))


class Recurrent(nn.Module):
    def __init__(self, cell: str, hidden: int = 64):
        super().__init__()
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM}[cell](1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


# ---- one monitored run and its diagnosis ---------------------------------------------------------

def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def class_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def diagnose_run(name: str, model: nn.Module, opt: torch.optim.Optimizer, batches, loss_fn, steps: int,
                 folder: Path) -> dict:
    path = folder / f"{name}.jsonl"
    start = time.perf_counter()
    with GradientMonitor(model, optimizer=opt, jsonl=path) as mon:
        for _, (x, y) in zip(range(steps), batches):
            loss = loss_fn(model, x, y)
            loss.backward()
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    log = read_jsonl(path)
    diagnosis = diagnose_log(log).to_json()
    losses = [r.loss for r in log.records if r.loss is not None]
    findings = [{"kind": f["kind"], "severity": f["severity"], "layers": f["layers"][:4], "step": f["step"],
                 "remedies": [r["key"] for r in f["remedies"]][:3],
                 **{k: f["evidence"][k] for k in ("factor", "horizon", "length") if k in f["evidence"]}}
                for f in diagnosis["findings"]]
    result = {"verdict": diagnosis["verdict"], "findings": findings, "coverage": diagnosis.get("coverage"),
              "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
              "seconds": round(seconds, 1), "steps": steps}
    print(f"{name}: {result['verdict']} {[(f['kind'], f['severity'], f['remedies']) for f in findings]}",
          file=sys.stderr, flush=True)
    return result


def cases(quick: bool, folder: Path) -> dict[str, dict]:
    text = stdlib_bytes()
    lm_steps, enc_steps, rnn_steps, seeds = (30, 20, 20, 2) if quick else (150, 120, 100, 6)
    out: dict[str, dict] = {}
    for lr, name in ((3e-4, "gpt2_adamw_3e-4"), (1.0, "gpt2_adamw_lr1")):
        model = gpt2(0)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        out[name] = diagnose_run(name, model, opt, text_batches(text, 8, 64, 0), lm_loss, lm_steps, folder)
    torch.manual_seed(0)
    post = EncoderLM(24, norm_first=False)
    out["encoder24_post_ln"] = diagnose_run("encoder24_post_ln", post, torch.optim.Adam(post.parameters(), lr=1e-3),
                                            text_batches(text, 8, 64, 0), lm_loss, enc_steps, folder)
    for seed in range(seeds):
        torch.manual_seed(seed)
        pre = EncoderLM(24, norm_first=True)
        out[f"encoder24_pre_ln_seed{seed}"] = diagnose_run(
            f"encoder24_pre_ln_seed{seed}", pre, torch.optim.Adam(pre.parameters(), lr=1e-3),
            text_batches(text, 8, 64, seed), lm_loss, enc_steps, folder)
    for cell in ("rnn", "lstm"):
        torch.manual_seed(0)
        model = Recurrent(cell)
        out[f"{cell}_first_of_200"] = diagnose_run(f"{cell}_first_of_200", model,
                                                   torch.optim.Adam(model.parameters(), lr=1e-3),
                                                   first_element_batches(32, 200, 0), class_loss, rnn_steps, folder)
    return out


# ---- overhead -----------------------------------------------------------------------------------

def overhead(quick: bool, device: torch.device) -> dict[str, dict]:
    reps, steps = (3, 3) if quick else (5, 10)
    text = stdlib_bytes()
    setups = {
        "gpt2": (lambda: gpt2(0), lm_loss, next(text_batches(text, 8, 64, 0))),
        "lstm": (lambda: Recurrent("lstm"), class_loss, next(first_element_batches(32, 200, 0))),
    }
    results = {}
    for name, (build, loss_fn, (x, y)) in setups.items():
        candidates, detach = [], []
        for label, wanted in (("unmonitored", None), ("every=1 (defaults)", {}), ("every=10", {"every": 10}),
                              ("detail_every=1", {"detail_every": 1})):
            model = build()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            mon = None
            if wanted is not None:
                mon = GradientMonitor(model, optimizer=opt, **wanted).attach()
                detach.append(mon.detach)

            def step(model=model, opt=opt, mon=mon) -> None:
                loss = loss_fn(model, x, y)
                loss.backward()
                if mon is not None:
                    mon.step(loss=loss)
                opt.step()
                opt.zero_grad(set_to_none=True)

            period = 1 if mon is None else math.lcm(mon.every, getattr(mon, "detail_every", 1))
            candidates.append(harness.Candidate(label, step, label, steps=harness.every_multiple(steps, period)))
        results[name] = harness.time_against_baseline(candidates, detach, reps=reps, steps=steps, device=device,
                                                      baseline="unmonitored")
    return results


def markdown_section(result: dict) -> str:
    lines = ["## Real models: the diagnosis and the monitor on architectures gradhealth did not write", "",
             "Ordinary user loops with `GradientMonitor(model, optimizer=opt, jsonl=...)`, diagnosed as "
             "`gradhealth diagnose --from-log` does.", ""]
    rows = []
    for name, r in result["cases"].items():
        cov = r.get("coverage") or {}
        matrices = cov.get("weight_matrices") or {}
        measured = f"{matrices.get('measured')}/{matrices.get('total')}" if matrices else "?"
        found = "; ".join(f"{f['kind']} ({f['severity']}" + (f" at step {f['step']}" if f["step"] is not None else "")
                          + (f"; factor {f['factor']}, horizon {f['horizon']} of {f['length']} steps"
                             if "horizon" in f else "")
                          + (f"; layers {', '.join(f['layers'][:2])}" if f["layers"] else "")
                          + f"; remedies {', '.join(f['remedies']) or '-'})" for f in r["findings"]) or "-"
        rows.append([name, r["steps"], r["verdict"], measured, found,
                     f"{r['first_loss']:.3g} -> {r['last_loss']:.3g}" if r["first_loss"] is not None else "-"])
    lines += [harness.markdown_table(["case", "steps", "verdict", "weight matrices measured", "findings",
                                      "loss"], rows), ""]
    lines += ["Monitor overhead (time vs an unmonitored step, median of paired ratios):", ""]
    rows = [[model, label, f"{r['median_ms']:.1f}", f"x{r['ratio']:.3f}", f"x{r['ratio_min']:.3f} to x{r['ratio_max']:.3f}"]
            for model, table in result["overhead"].items() for label, r in table.items()]
    lines += [harness.markdown_table(["model", "configuration", "ms/step", "time vs baseline", "range"], rows), ""]
    lines += [f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
              f"Machine: {harness.describe_machine(result['machine'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = harness.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    threads = harness.set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        found = cases(args.quick, Path(tmp))
    result = {"cases": found, "overhead": overhead(args.quick, device), "quick": args.quick,
              "command": harness.command_line(), "date": harness.now(),
              "machine": {**harness.machine_info(device), "threads": threads}}
    harness.write_result("real_models", result)
    print(markdown_section(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
