"""The monitor's hooks on the model and its optimizers, and which steps they measure.

A step is recorded every ``every`` optimizer steps and detailed every ``detail_every``; the
forward hooks measure only the forward passes of a detailed step (or of a ``capture()`` block).
Between those they are not registered at all, because any forward hook moves every call of its
module onto PyTorch's slower hook-handling path.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradhealth.errors import ConfigError
from gradhealth.monitor.forward_tally import ForwardTally, Scratch
from gradhealth.monitor.skips import has_skip_path
from gradhealth.monitor.structure import CalledActivation, ModelLayout, features_last, unwrap
from gradhealth.monitor.time_probes import TimeProbes
from gradhealth.monitor.transfer import PendingStep
from gradhealth.tensor_norms import NORM_DTYPE, stack_on

__all__ = ["DETAIL_RATIO", "MAX_FORWARDS_PER_STEP", "MonitorHooks"]

# Without a detail_every, one recorded step in this many is detailed.
DETAIL_RATIO = 10

# The forward statistics of a detailed step are kept until step() (gradient accumulation runs
# several forwards per step); past this many training forwards without a step() the monitor
# stops adding to them, so a loop that never calls step() does not grow memory without bound.
MAX_FORWARDS_PER_STEP = 1024

OptimizerHook = Callable[[torch.optim.Optimizer, tuple, dict], None]


def _compiling() -> bool:
    # Under torch.compile our hooks do nothing, so they add no graph break; gradients are
    # measured outside the compiled graph and stay exact.
    return torch.compiler.is_compiling()


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


class _InertHook:
    """What a monitor hook becomes in a pickled model: it does nothing."""

    def __call__(self, *args: Any) -> None:
        return None


class _Hook:
    """A monitor hook on a module. It pickles as an inert hook, so ``pickle.dumps(model)`` and
    ``torch.save(model)`` work with a monitor attached, and the copy comes back unmonitored
    (the monitor's own state, weak references and device buffers, is not the model's to carry)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[type, tuple]:
        return (_InertHook, ())


class MonitorHooks:
    """Counts steps and batches, decides which are measured, and holds the hooks that measure them.

    ``step`` counts optimizer steps (calls of the monitor's ``step()``), ``batch`` training
    forward passes of the model; ``active`` says whether this step's forward passes are measured.
    """

    def __init__(self, model: nn.Module, *, every: int, detail_every: int, activations: bool):
        self.every = every
        self.detail_every = detail_every
        self.measure_activations = activations
        self._model_ref = weakref.ref(unwrap(model))
        # a compiled model keeps its forward hooks for good: adding and removing them would make
        # torch.compile recompile; inside the compiled graph they do nothing anyway
        self._compiled = hasattr(model, "_orig_mod")
        self.layout = ModelLayout()
        self._handles: list[Any] = []
        self._layer_handles: list[Any] = []
        self.step = 0
        self.batch = -1
        self.active = False
        self._forced = False
        # a non-finite step was seen where the forward pass was not watched: watch the next one
        self.armed = False
        # called at each training forward pass before anything is measured (the monitor's own check)
        self.before_forward: Callable[[], None] | None = None
        self.time_probes = TimeProbes()
        # per repeated block: whether it has a skip path (None: could not tell), found once
        self.residual: dict[str, bool | None] = {}
        self._block_handles: list[Any] = []
        # the names of the layers in the order the first measured forward pass ran them
        self.forward_order: list[str] | None = None
        # the activation hooks' working memory (CPU: kept, the size of the largest output measured)
        self.scratch = Scratch()
        self.reset_forward_buffers()

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def live_model(self) -> nn.Module:
        """The model, if it still exists and its parameters are real tensors."""
        model = self._model_ref()
        if model is None:
            raise ConfigError("the model this monitor was made for no longer exists.")
        if any(p.is_meta for p in model.parameters()):
            raise ConfigError("the model's parameters are still on the meta device: attach the monitor after "
                              "they are materialized (model.to_empty(...) or load_state_dict(..., assign=True)).")
        return model

    def model_or_none(self) -> nn.Module | None:
        return self._model_ref()

    def attach(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
               on_optimizer_step: OptimizerHook) -> None:
        """Hook the model's forward pass and every optimizer's step (``self.layout`` set first)."""
        self._handles.append(model.register_forward_pre_hook(_Hook(self._on_root_forward)))
        for opt in optimizers:
            self._handles.append(opt.register_step_post_hook(on_optimizer_step))
        if not self.residual:
            self._block_handles = [block.register_forward_hook(self._make_block_hook(name), with_kwargs=True)
                                   for name, block in self.layout.blocks]
        self.set_active()

    def detach(self) -> None:
        """Remove every hook and drop what the forward hooks kept."""
        self.stop_block_checks()
        for handle in self._handles + self._layer_handles:
            handle.remove()
        self._handles.clear()
        self._layer_handles.clear()
        self.reset_forward_buffers()
        self.scratch.release()
        self.active = False

    def remove_layer_hooks(self) -> None:
        for handle in self._layer_handles:
            handle.remove()
        self._layer_handles.clear()

    # ---- scheduling --------------------------------------------------------------------------

    def recorded(self, step: int) -> bool:
        return step % self.every == 0

    def detailed(self, step: int) -> bool:
        return self.recorded(step) and step % self.detail_every == 0

    def next_step(self) -> int:
        """Count one optimizer step; its index."""
        step = self.step
        self.step += 1
        return step

    def set_active(self) -> None:
        """Register the forward hooks for a detailed (forced, armed) step, remove them otherwise."""
        self.active = bool(self._handles) and (self._forced or self.armed or self.detailed(self.step))
        wanted = self.active or (self._compiled and bool(self._handles))
        if wanted and not self._layer_handles:
            self._register_layer_hooks()
        elif not wanted and self._layer_handles:
            self.remove_layer_hooks()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Measure the forward passes inside the block; they do not count as new batches."""
        self._forced = True
        self.set_active()
        self.reset_forward_buffers()
        batch = self.batch
        try:
            yield
        finally:
            self._forced = False
            self.batch = batch

    def fix_forward_order(self) -> bool:
        """Keep the order the first measured forward pass ran the layers in; whether it was fixed now."""
        if self.forward_order is None and self._call_order:
            self.forward_order = list(self._call_order)
            return True
        return False

    # ---- what the forward hooks kept ---------------------------------------------------------

    def arm(self) -> None:
        """Watch the next forward pass (its outputs' extremes name the first bad module)."""
        self.armed = True
        self.set_active()

    def reset_forward_buffers(self) -> None:
        self.time_probes.reset()
        self.tally = ForwardTally(self.scratch)
        # per forward pass: its batch index and the smallest and largest input element
        self._input_extremes: list[tuple[int, Tensor]] = []
        self._call_order: list[str] = []
        self._forwards = 0

    def take_forward_stats(self, pending: PendingStep, device: torch.device) -> None:
        """Hand this step's forward statistics to ``pending`` (as device pieces) and start afresh."""
        if self.tally:
            pending.calls = self.tally.calls
            pending.pieces.update(self.tally.pieces(device, NORM_DTYPE))
        if self._input_extremes:
            pending.input_batches = [b for b, _ in self._input_extremes]
            pending.pieces["in_extremes"] = stack_on([e for _, e in self._input_extremes], device).to(NORM_DTYPE)
        pending.pieces.update(self.time_probes.pieces(device))
        self.reset_forward_buffers()

    def watch_time(self, name: str, x: Tensor, time_dim: int) -> Tensor:
        """``x`` with a probe for its gradient through time on a measured step, ``x`` otherwise."""
        if _compiling():
            return x
        if not self.active:
            self.time_probes._note(name)
            return x
        return self.time_probes.watch(name, x, time_dim)

    # ---- the skip check of repeated blocks, once ---------------------------------------------

    def _make_block_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if _compiling() or not module.training or not torch.is_grad_enabled() or name in self.residual:
                return
            inp = _first_tensor(args)
            if inp is None:
                inp = next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
            out = _first_tensor(output)
            if inp is None or out is None:
                return
            # a leaf input (requires grad, no grad_fn) is found by its gradient's accumulator
            start = inp.grad_fn if inp.grad_fn is not None or not inp.requires_grad else inp
            self.residual[name] = has_skip_path(out.grad_fn, start)
            if len(self.residual) == len(self._block_handles):
                self.stop_block_checks()

        return hook

    def stop_block_checks(self) -> None:
        """Remove the blocks' one-time hooks (after the first step, whatever they saw)."""
        for handle in self._block_handles:
            handle.remove()
        self._block_handles = []

    # ---- the hooks ---------------------------------------------------------------------------

    def _register_layer_hooks(self) -> None:
        # a recurrent module is several layers (one per matrix): one hook names them all, in order
        names_of: dict[int, list[str]] = {}
        modules: list[tuple[str, nn.Module]] = []
        for n, m in zip(self.layout.layer_names, self.layout.layer_modules):
            if id(m) not in names_of:
                names_of[id(m)] = []
                modules.append((n, m))
            names_of[id(m)].append(n)
        called: list[tuple[str, CalledActivation]] = []
        if self.measure_activations:
            # PReLU owns parameters, so it is among the layers already
            modules += [(n, m) for n, m, _ in self.layout.activations
                        if n not in self.layout.layer_names and not isinstance(m, CalledActivation)]
            called = [(n, m) for n, m, _ in self.layout.activations if isinstance(m, CalledActivation)]
        self._layer_handles = [m.register_forward_hook(_Hook(self._make_layer_hook(n, m, names_of.get(id(m), [n]))))
                               for n, m in modules]
        # after the feeder's own hook, so its output's layout (features last) is known
        self._layer_handles += [m.feeder.register_forward_hook(_Hook(self._make_called_hook(n, m)))
                                for n, m in called]
        self._layer_handles += [m.register_forward_pre_hook(_Hook(self._make_probe_hook(n)))
                                for n, m in self.layout.recurrent]
        if self.forward_order is None:
            # a module that owns parameters and has children (the model itself, attention) runs
            # before its children, though its forward hook fires after theirs: a pre-hook says when
            self._layer_handles += [m.register_forward_pre_hook(_Hook(self._make_order_hook(names_of.get(id(m), [n]))))
                                    for n, m in modules if next(m.children(), None) is not None]

    def _make_probe_hook(self, name: str):
        probe = self.time_probes.recurrent_pre_hook(name)

        def hook(module: nn.Module, args: tuple):
            if _compiling() or not self.active or not module.training:
                return None
            return probe(module, args)

        return hook

    def _make_order_hook(self, names: list[str]):
        def hook(module: nn.Module, args: tuple) -> None:
            if _compiling() or not self.active or not module.training or self.forward_order is not None:
                return
            self._call_order.extend(n for n in names if n not in self._call_order)

        return hook

    def _on_root_forward(self, module: nn.Module, args: tuple) -> None:
        if _compiling() or not module.training:
            return
        if self.before_forward is not None and not self.active:
            self.before_forward()
        self.batch += 1
        if not self.active:
            return
        self._forwards += 1
        if self._forwards > MAX_FORWARDS_PER_STEP:
            self.active = False  # until the next step()
            warnings.warn(f"GradientMonitor: {MAX_FORWARDS_PER_STEP} training forward passes without a step(); "
                          "this step's forward statistics stop there. Call mon.step() once per optimizer step.",
                          RuntimeWarning, stacklevel=2)
            return
        x = _first_tensor(args)
        if x is not None and x.is_floating_point() and x.numel():
            # the extremes tell exactly whether x holds a NaN or an Inf, in one pass, no mask
            self._input_extremes.append((self.batch, torch.stack(torch.aminmax(x.detach()))))

    def _make_layer_hook(self, name: str, module: nn.Module, names: list[str] | None = None):
        names = names or [name]
        rules = {n: r for n, _, r in self.layout.activations} if self.measure_activations else {}
        rule = rules.get(name)
        units_last = features_last(module)

        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if _compiling() or not self.active or not module.training:
                return
            out = _first_tensor(output)
            if out is None or not out.is_floating_point():
                return
            if self.forward_order is None and name not in self._call_order:
                self._call_order.extend(n for n in names if n not in self._call_order)
            if rule is None:
                # a weight layer: only whether its output is finite, for the first bad layer
                if out.numel():
                    self.tally.add_layer(name, out, units_last)
                return
            inp = _first_tensor(inputs) if rule.uses_input else None
            # an in-place activation has overwritten its input: rules that need it cannot run
            if inp is not None and inp.data_ptr() == out.data_ptr():
                inp = None
            if out.numel():
                self.tally.add_activation(name, rule, module, inp, out)

        return hook

    def _make_called_hook(self, name: str, called: CalledActivation):
        """A forward hook on the layer that feeds an activation called as a function: measures
        ``function(output)``, the tensor the function makes (computed again, without autograd)."""

        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if _compiling() or not self.active or not module.training:
                return
            z = _first_tensor(output)
            if z is None or not z.is_floating_point() or not z.numel():
                return
            if self.forward_order is None and name not in self._call_order:
                self._call_order.append(name)
            z = z.detach()
            with torch.no_grad():
                out = called.function(z)
            self.tally.add_activation(name, called.rule, called, z, out)

        return hook
