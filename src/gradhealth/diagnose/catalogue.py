"""The remedies of the material, each with the cause it treats and how to apply it here (no torch).

``remedies_for(kind, context)`` ranks them for one finding: the remedy that removes the cause
comes first, the ones that only soften it after, and a remedy the run already uses is left out.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gradhealth.diagnose.findings import FINDING_KINDS, Remedy
from gradhealth.errors import unknown_name

__all__ = ["REMEDIES", "SATURATING_ACTIVATIONS", "RELU_FAMILY", "ONE_SIDED_ACTIVATIONS", "get_remedy",
           "remedies_for"]

# Activations with a flat region on both sides (derivative -> 0 for large |x|) versus the ReLU
# family, whose derivative is exactly 1 for active units.
SATURATING_ACTIVATIONS = frozenset({"sigmoid", "tanh", "hardtanh", "hardsigmoid", "softsign", "logsigmoid"})
RELU_FAMILY = frozenset({"relu", "relu6", "leaky_relu", "prelu", "rrelu"})
# Smooth activations with one flat side: derivative -> 1 for large positive inputs (no saturation
# there) and -> 0 for large negative ones, where the unit is off, as a ReLU's is below zero.
ONE_SIDED_ACTIVATIONS = frozenset({"gelu", "silu", "swish", "mish", "elu", "selu", "celu", "softplus"})

_CATALOGUE = [
    Remedy(
        "relu", "Use a non-saturating activation (ReLU, LeakyReLU, PReLU) instead of sigmoid/tanh",
        "Sigmoid and tanh squash their input and saturate: their derivatives are small (sigma'(x) <= 0.25, "
        "tanh'(x) <= 1 and near 0 in the flat regions), and backpropagation multiplies one such factor per "
        "layer, so the gradient shrinks exponentially with depth. ReLU's derivative is 1 wherever the unit "
        "is active, so it does not shrink the gradient and does not saturate for positive inputs.",
        "model spec: activation=relu (or activation=leaky_relu / prelu), with init=he",
    ),
    Remedy(
        "leaky_relu", "Use LeakyReLU or PReLU so that no unit dies",
        "Dying ReLU: a unit whose input is negative for every example outputs 0 and its derivative is 0, so "
        "it receives no gradient and never recovers (often after a large update pushes its bias down). "
        "A small negative slope keeps a gradient flowing through inactive units.",
        "model spec: activation=leaky_relu (or activation=prelu)",
    ),
    Remedy(
        "he_init", "Initialize with He (Kaiming) initialization",
        "Weights initialized too small or too large scale the signal by a factor per layer, so activations "
        "and gradients vanish or explode geometrically with depth. He et al. 2015 set Var(w) = 2 / fan_in so "
        "that ReLU layers keep the variance of activations and of gradients constant from layer to layer.",
        "model spec: init=he (kaiming_normal, fan_in, gain from the activation), or gradhealth train --init he",
    ),
    Remedy(
        "xavier_init", "Initialize with Xavier (Glorot) initialization",
        "Glorot and Bengio 2010: with Var(w) = 2 / (fan_in + fan_out) the variance of activations and of "
        "back-propagated gradients stays the same across layers for tanh/sigmoid units, which keeps them "
        "in their linear region instead of the saturated one where the gradient vanishes.",
        "model spec: init=xavier (xavier_uniform; xavier_normal also works), or gradhealth train --init xavier",
    ),
    Remedy(
        "lsuv", "Layer-sequential unit-variance initialization (LSUV)",
        "Mishkin and Matas 2016: orthogonal weights, then each layer in turn is rescaled on a batch of data "
        "until its output variance is 1, so the signal neither shrinks nor grows with depth even where an "
        "analytical gain does not fit the architecture.",
        "gradhealth train --init lsuv (data-driven: it needs a batch of the training data)",
    ),
    Remedy(
        "batchnorm", "Add batch normalization",
        "Batch normalization (Ioffe and Szegedy 2015) re-centres and re-scales every layer's inputs over the "
        "batch, which keeps pre-activations out of the saturated region and the per-layer gradient factors "
        "near 1, and allows higher learning rates.",
        "model spec: norm=batch",
    ),
    Remedy(
        "layernorm", "Add layer normalization",
        "Layer normalization (Ba et al. 2016) normalizes each example over its features: it keeps every "
        "layer's inputs at a fixed scale like batch norm, without depending on the batch size.",
        "model spec: norm=layer (or norm=group for convolutions with small batches)",
    ),
    Remedy(
        "residual", "Add skip connections (residual network, He et al. 2015)",
        "Residual connections (He et al. 2015): a block computes y = x + F(x), so dy/dx = 1 + dF/dx: the "
        "gradient has an identity path back to the early layers and is not multiplied through every layer. "
        "Skip connections also cure the degradation problem, where a deeper plain network has a higher "
        "training error than a shallower one.",
        "model spec: residual=true (identity skip around every two layers; shortcut=projection where the "
        "shape changes)",
    ),
    Remedy(
        "preact", "Use pre-activation residual units (ResNet v2, He et al. 2016)",
        "Identity mappings in deep residual networks: putting norm and activation before each weight layer "
        "keeps the skip path a pure identity, so the signal propagates directly from any block to any "
        "other, forward and backward; this made 1001-layer networks trainable. With sigmoid or tanh it "
        "matters most: a post-activation block y = act(F(x) + x) still multiplies the skip path by act' "
        "(<= 0.25 for the sigmoid) in every block.",
        "model spec: block=preact,residual=true",
    ),
    Remedy(
        "zero_init_last", "Zero-initialize the last layer of every residual branch",
        "Summing residual branches makes the output variance grow with depth; zeroing the last norm's scale "
        "(or the last layer) of each branch makes every block start as the identity (Goyal et al. 2017), "
        "so the deep network starts out as a shallow one.",
        "model spec: residual=true,zero_init_last=true",
    ),
    Remedy(
        "fixup", "Fixup initialization for residual networks without normalization",
        "Fixup (Zhang et al. 2019): scaling the branch weights by L^(-1/(2m-2)) and zeroing the last layer "
        "of each branch keeps the output variance from exploding with the number of residual blocks, so "
        "a deep residual net trains without normalization layers.",
        "model spec: residual=true,norm=none,init=fixup",
    ),
    Remedy(
        "clip_norm", "Clip the gradient norm",
        "Gradient clipping (Pascanu et al. 2013): when the norm of the gradient exceeds a threshold it is "
        "rescaled to the threshold, so one exploding gradient cannot throw the weights far away; the "
        "direction of the step is kept.",
        "gradhealth train --clip norm --clip-value 1.0",
    ),
    Remedy(
        "clip_agc", "Adaptive gradient clipping (AGC)",
        "Brock et al. 2021 (NFNets): a unit's gradient is clipped where its norm exceeds a fraction of the "
        "unit's weight norm, so no update is large relative to the weights it changes; this keeps "
        "normalizer-free networks from exploding at large batch sizes.",
        "gradhealth train --clip agc --clip-value 0.01",
    ),
    Remedy(
        "l2", "Weight regularization (L2 / weight decay)",
        "An L2 penalty on the weights keeps them from growing large; large weights are what make the "
        "per-layer factors of the backward pass exceed 1 and the gradients explode.",
        "gradhealth train --weight-decay 1e-4",
    ),
    Remedy(
        "lower_lr", "Lower the learning rate",
        "A learning rate that is too large makes each update overshoot: the weights grow, the gradients "
        "explode and the loss diverges, up to NaN/Inf. A healthy update changes the weights by about 1e-3 "
        "of their size (Karpathy's rule of thumb).",
        "gradhealth train --lr <the current value / 10>",
    ),
    Remedy(
        "higher_lr", "Raise the learning rate",
        "Updates far below about 1e-3 of the weights' size (Karpathy's rule of thumb) mean the learning rate "
        "is too small: the weights barely move and training stalls.",
        "gradhealth train --lr <the current value x 10>",
    ),
    Remedy(
        "warmup", "Warm up the learning rate, then decay it (schedule)",
        "The first updates from a random initialization are the ones that diverge: starting from a small "
        "learning rate and raising it over the first steps (Goyal et al. 2017), then decaying it, lets the "
        "network reach a region where the full rate is stable. Post-LN transformers need it most: their "
        "gradients near the output start large (Xiong et al. 2020), and Adam's first updates, made from a "
        "second-moment estimate of a handful of batches, are the largest of the run (Liu et al. 2020).",
        "gradhealth train --schedule warmup_cosine --warmup-steps 500",
    ),
    Remedy(
        "pre_ln", "Move each LayerNorm before its sublayer (Pre-LN transformer)",
        "Xiong et al. 2020: with the LayerNorm after the residual sum (Post-LN, x = norm(x + f(x))) every "
        "block's gradient passes through the norms of all the blocks above it, so the gradients of the "
        "layers near the output are large at initialization and the early blocks get little; with the norm "
        "inside the branch (Pre-LN, x = x + f(norm(x))) the residual path is a pure identity and the "
        "gradient is well-behaved in every block, so training is stable without a long warm-up.",
        "in each block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), and one final LayerNorm before the head",
    ),
    Remedy(
        "lstm_gru", "Use a gated recurrent cell (LSTM or GRU) instead of a plain RNN",
        "A plain RNN multiplies the gradient by its recurrent Jacobian (W_hh times tanh') at every step back "
        "in time, so it falls geometrically and dependencies longer than a few dozen steps are not learned "
        "(Bengio et al. 1994). The LSTM's cell state (Hochreiter and Schmidhuber 1997) and the GRU's update "
        "gate (Cho et al. 2014) add an additive path through time whose factor is a gate near 1.",
        "torch.nn.LSTM (or torch.nn.GRU) with the same input_size, hidden_size and num_layers",
    ),
    Remedy(
        "forget_bias", "Initialize the LSTM's forget-gate bias to 1",
        "The LSTM carries its cell state through time multiplied by the forget gate; with the bias at 0 the "
        "gate starts near sigmoid(0) = 0.5, which halves the gradient at every step back. A bias of 1 (Gers et "
        "al. 2000; Jozefowicz et al. 2015) starts it near 0.73 and the cell remembers, and passes gradient, "
        "over many more steps.",
        "for name, p in lstm.named_parameters(): p.data[H:2 * H].fill_(0.5) if 'bias' in name else None "
        "(bias_ih + bias_hh = 1; gates in order input, forget, cell, output; H = hidden_size)",
    ),
    Remedy(
        "orthogonal_recurrent_init", "Initialize the recurrent weights orthogonally",
        "An orthogonal W_hh has every singular value 1, so the recurrent Jacobian neither shrinks nor grows "
        "the gradient at initialization (Saxe et al. 2014; Le et al. 2015 with the identity); a Gaussian "
        "W_hh's largest singular value sets a geometric decay or growth through time.",
        "for name, p in rnn.named_parameters(): torch.nn.init.orthogonal_(p) if 'weight_hh' in name else None",
    ),
    Remedy(
        "truncated_bptt", "Truncate backpropagation through time",
        "Backpropagating through a shorter window (detach the hidden state every k steps) bounds the number "
        "of recurrent Jacobians in the product, so the gradient cannot grow past k factors; choose k near "
        "the measured horizon, beyond which the gradient carries nothing anyway (Williams and Peng 1990; "
        "Sutskever 2013).",
        "split each sequence into windows of k steps and carry h = h.detach() from one window to the next",
    ),
]
REMEDIES: dict[str, Remedy] = {remedy.key: remedy for remedy in _CATALOGUE}

# Ranked lists per finding kind: the remedy that removes the cause first, the ones that only
# soften its effect after. Variants depend on what the run already uses (see remedies_for).
_RANKING: dict[str, list[str]] = {
    # sigmoid/tanh: the activation's derivative (<= 0.25 / saturating) is the cause, so replacing it
    # comes first; a skip path bypasses the product only if the activation is off it: pre-activation
    # blocks first (a 20-layer sigmoid MLP measures first/last 7e-7 with post-activation skips, near 1
    # with pre-activation ones); He init pairs with ReLU; normalization keeps units out of the flat
    # region but leaves sigma' <= 0.25.
    "vanishing_gradient/saturating": ["relu", "preact", "residual", "he_init", "batchnorm", "lsuv", "layernorm"],
    # ReLU already: the per-layer factors come from the weights, so a skip path that bypasses them
    # ranks first, then normalization that resets the scale every layer, then the init scale.
    "vanishing_gradient": ["residual", "batchnorm", "he_init", "preact", "lsuv", "layernorm", "zero_init_last"],
    # clipping caps the symptom at once whatever the cause; the learning rate is the most common
    # cause of growth during training; an init scale that is too large is the cause at step 0.
    "exploding_gradient": ["clip_norm", "lower_lr", "he_init", "batchnorm", "residual", "l2", "clip_agc"],
    # gradients far above the weights from the start: the init scale is the cause, so a
    # variance-preserving init (or normalization, which undoes any scale) comes before the caps.
    "exploding_gradient/init_scale": ["he_init", "batchnorm", "lsuv", "clip_norm", "lower_lr", "residual", "l2"],
    # residual nets explode through the sum of branch variances: zero-init/Fixup address that directly.
    "exploding_gradient/residual": ["clip_norm", "lower_lr", "zero_init_last", "fixup", "batchnorm", "l2",
                                    "clip_agc"],
    # NaN/Inf almost always follows an update that was too large: smaller steps, capped steps, and
    # small steps at the start where the network is least stable.
    "nonfinite": ["lower_lr", "clip_norm", "warmup", "he_init"],
    # ... unless the gradients were far above the weights from the start: then the init scale
    "nonfinite/init_scale": ["he_init", "batchnorm", "clip_norm", "lower_lr", "warmup"],
    # the flat region is the activation's own shape: replace it; else keep inputs small (init
    # scale, normalization) so units stay in the linear region.
    "saturation": ["relu", "xavier_init", "he_init", "batchnorm", "lsuv"],
    # GELU/SiLU units off (their negative side) for most inputs: not a squashing curve to replace but
    # pre-activations pushed negative, as dying ReLUs are: smaller and capped steps stop the push,
    # a sound init scale starts fewer units there.
    "saturation/one_sided": ["lower_lr", "warmup", "clip_norm", "he_init"],
    # a unit dies when it is pushed below zero for all inputs: a leak keeps it alive, a smaller
    # step stops the push, a sound init scale starts fewer units off.
    "dead_units": ["leaky_relu", "lower_lr", "he_init", "batchnorm"],
    "lr_too_high": ["lower_lr", "warmup", "clip_norm"],
    # Adam/AdamW/RMSprop: the first updates are the largest (a second moment from a few batches),
    # which is what warm-up is for (Liu et al. 2020); then a lower rate
    "lr_too_high/adaptive": ["warmup", "lower_lr", "clip_norm"],
    # Post-LN transformers (norm after the residual sum): their gradients near the output start
    # large and the early blocks get little (Xiong et al. 2020): warm-up, then the norm inside the branch
    "vanishing_gradient/post_ln": ["warmup", "pre_ln", "lower_lr", "clip_norm", "zero_init_last"],
    "exploding_gradient/post_ln": ["warmup", "pre_ln", "clip_norm", "lower_lr", "l2"],
    "nonfinite/post_ln": ["warmup", "pre_ln", "lower_lr", "clip_norm"],
    # a pre-LN transformer has a skip path and its norms already: BatchNorm and pre-activation
    # ResNet units do not apply; scaling the branches down at init (GPT-2's 1/sqrt(2N) on each
    # branch's last matrix, Fixup's zero init) keeps the residual stream from outgrowing early blocks
    "vanishing_gradient/pre_ln": ["zero_init_last", "warmup", "lower_lr", "clip_norm"],
    "lr_too_high/post_ln": ["warmup", "pre_ln", "lower_lr", "clip_norm"],
    # through time: the plain RNN's multiplicative path is the cause, a gated cell replaces it; an
    # orthogonal W_hh starts it at factor 1; truncation limits training to the reachable horizon
    "vanishing_through_time": ["lstm_gru", "orthogonal_recurrent_init", "truncated_bptt"],
    # an LSTM already: its forget gate at init (bias 0: ~0.5 per step) is the usual cause
    "vanishing_through_time/lstm": ["forget_bias", "orthogonal_recurrent_init", "truncated_bptt"],
    # growth through time: clipping caps it at once (Pascanu et al. 2013), the others remove the cause
    "exploding_through_time": ["clip_norm", "orthogonal_recurrent_init", "truncated_bptt", "lstm_gru",
                               "lower_lr"],
    "lr_too_low": ["higher_lr", "batchnorm"],
    # degradation is what residual learning was invented for (He et al. 2015).
    "degradation": ["residual", "batchnorm", "preact", "zero_init_last"],
}

_HE_NAMES = ("he", "kaiming")
_XAVIER_NAMES = ("xavier", "glorot")
_CALIBRATED_INITS = (*_HE_NAMES, *_XAVIER_NAMES, "lsuv", "orthogonal", "fixup")
_ADAPTIVE_OPTIMIZERS = ("adam", "nadam", "radam", "rmsprop", "adagrad", "adafactor", "lamb")
_GATED_CELLS = ("LSTM", "GRU")


def get_remedy(key: str) -> Remedy:
    """A copy of one remedy of the catalogue, by key."""
    if key not in REMEDIES:
        raise unknown_name("remedy", key, REMEDIES)
    return replace(REMEDIES[key])


def _already_applied(key: str, context: Mapping[str, Any]) -> bool:
    """True where the run already uses the remedy, so suggesting it again would not help."""
    activation = str(context.get("activation") or "").lower()
    init = str(context.get("init") or "").lower()
    norm = str(context.get("norm") or "").lower()
    return {
        "relu": activation in RELU_FAMILY,
        "leaky_relu": activation in ("leaky_relu", "prelu", "rrelu"),
        "he_init": init.startswith(_HE_NAMES),
        "xavier_init": init.startswith(_XAVIER_NAMES),
        "lsuv": init.startswith("lsuv"),
        "fixup": init.startswith("fixup"),
        "batchnorm": norm in ("batch", "bn", "batchnorm"),
        "layernorm": norm in ("layer", "ln", "layernorm", "rms", "rmsnorm"),
        "pre_ln": context.get("norm_placement") == "pre",
        "warmup": context.get("warmup") is True,
        "clip_norm": str(context.get("clip") or "").lower() == "norm",
        "lstm_gru": any(t in _GATED_CELLS for t in context.get("recurrent") or ()),
        "orthogonal_recurrent_init": init.startswith("orthogonal"),
        "residual": context.get("residual") is True,
        "preact": str(context.get("block") or "").startswith("preact"),
        "zero_init_last": context.get("zero_init_last") is True,
    }.get(key, False)


def remedies_for(kind: str, context: Mapping[str, Any] | None = None) -> list[Remedy]:
    """The remedies for a finding kind, best first, for a run described by ``context``.

    ``context`` may hold ``activation`` (the run's main activation), ``init``, ``norm``,
    ``norm_placement`` (pre/post), ``residual``, ``block``, ``zero_init_last``, ``optimizer``,
    ``warmup``, ``clip``, ``recurrent`` (the recurrent cell types) and ``cause`` (``init_scale``:
    gradients far above the weights from the start); unknown keys are ignored.
    """
    if kind not in FINDING_KINDS:
        raise unknown_name("finding kind", kind, FINDING_KINDS)
    context = context or {}
    activation = str(context.get("activation") or "").lower()
    key = kind
    optimizer = str(context.get("optimizer") or "").lower()
    placement = context.get("norm_placement")
    if f"{kind}/{placement}_ln" in _RANKING and context.get("cause") != "init_scale":
        key = f"{kind}/{placement}_ln"
    elif kind == "vanishing_through_time" and "LSTM" in (context.get("recurrent") or ()):
        key = "vanishing_through_time/lstm"
    elif kind == "lr_too_high" and optimizer.startswith(_ADAPTIVE_OPTIMIZERS):
        key = "lr_too_high/adaptive"
    elif kind == "saturation" and activation in ONE_SIDED_ACTIVATIONS:
        key = "saturation/one_sided"
    elif kind == "vanishing_gradient" and activation in SATURATING_ACTIVATIONS:
        key = "vanishing_gradient/saturating"
    elif kind == "exploding_gradient" and context.get("residual") is True:
        key = "exploding_gradient/residual"
    elif kind in ("exploding_gradient", "nonfinite") and context.get("cause") == "init_scale":
        key = f"{kind}/init_scale"
    ranked = _RANKING[key]
    useful = [k for k in ranked if not _already_applied(k, context)]
    if kind == "exploding_gradient" and str(context.get("init") or "").lower().startswith(_CALIBRATED_INITS):
        # He init treats an init scale that is too large; a variance-preserving scheme is not that
        useful = [k for k in useful if k != "he_init"]
    # every remedy applied already: say so by listing them all rather than nothing
    return [get_remedy(k) for k in (useful or ranked)]
