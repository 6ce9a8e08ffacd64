"""Whether the gradients are still exactly those measured at ``step()``, without reading them.

A detailed step measures the gradients again once the optimizer has used them, so that clipping
done anywhere (a framework's ``gradient_clip_val``, a user's own clipper) shows in
``grad_norm_post_clip``. When nothing touched them in between, that second pass would only give
the same numbers again. Every in-place change of a tensor (``clip_grad_norm_``'s ``mul_``,
``GradScaler.unscale_``, an all-reduce) bumps its version counter, and a replaced ``.grad`` is a
different object: both are checked here in Python, per parameter, with no kernel.
"""
from __future__ import annotations

import weakref

from torch import Tensor

__all__ = ["GradVersions"]


class GradVersions:
    """The identity and version of each gradient at one moment; compared later with ``unchanged``."""

    def __init__(self, grads: list[Tensor]):
        # weak references: keeping the gradients alive past zero_grad(set_to_none=True) would
        # hold a copy's worth of memory, and an id() alone may be reused by a new tensor
        self._refs = [weakref.ref(g) for g in grads]
        self._versions = [g._version for g in grads]

    @classmethod
    def of(cls, grads: list[Tensor]) -> GradVersions | None:
        """The gradients' versions, or None where one has no version counter (an inference tensor)."""
        try:
            return cls(grads)
        except RuntimeError:
            return None

    def unchanged(self, grads: list[Tensor]) -> bool:
        """Whether ``grads`` are the same tensors, not modified in place since."""
        if len(grads) != len(self._refs):
            return False
        return all(ref() is g and g._version == v for ref, g, v in zip(self._refs, grads, self._versions))
