"""Linear layers that run on CPU through weights pre-packed for oneDNN.

`F.linear` in fp32 on CPU goes to MKL's GEMM. On an AMD EPYC VM with AVX-512, oneDNN over a weight
reordered once into its blocked layout was 2.2-2.3x faster on prefill and training shapes and 3-5x faster
at the 1-8 rows of a decode step (docs/benchmarks.md); on an Intel Xeon VM, where MKL is at its best, it
was no faster for the decoder's matrices. So CPU fp32 work uses packed copies: inference for the whole
product, training for the forward and the input's gradient (`_TrainingLinear`). GPUs, other dtypes,
autocast and sharded weights keep plain `F.linear`.

The packed copies are derived state, never saved. They are rebuilt whenever the weight may have changed:
after any optimizer step (fused AdamW updates weights without bumping their version counters, so a global
optimizer hook counts steps), an in-place update under no_grad (the version counter: load_state_dict,
RL weight syncs), a reassigned or moved tensor (a different storage). Writes through `p.data` bypass all
of these and are not seen. The copies cost up to two extra copies of the weights in memory on CPU.
Set INTERNVL35_PACKED_LINEAR=0 to turn them off.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.optim.optimizer import register_optimizer_step_post_hook

log = logging.getLogger(__name__)

# oneDNN picks its blocked layout for an expected row count; 16 was as fast as the ideal hint from
# 1 row (decode) to 300+ rows (prefill) in our measurements.
_ROWS_HINT = 16


def _available() -> bool:
    return (os.environ.get("INTERNVL35_PACKED_LINEAR", "1") != "0" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


_AVAILABLE = _available()


def _reorder(weight: Tensor) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT)


def _disable(why: str) -> None:
    global _AVAILABLE
    _AVAILABLE = False
    log.warning("packed CPU linears turned off: %s", why)

_optimizer_steps = 0  # optimizer steps taken in this process, by any optimizer


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def _packable(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Plain (not sharded, not meta) fp32 tensors on the CPU, outside autocast, with packing available."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not _AVAILABLE or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if type(weight) not in (Tensor, nn.Parameter) or weight.layout != torch.strided:
        return False
    return not torch.is_autocast_enabled("cpu")


def _needs_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


def _version(weight: Tensor) -> int | None:
    """The in-place version counter, or None for inference tensors, which have none (never packed)."""
    try:
        return weight._version
    except RuntimeError:
        return None


class PackedWeight:
    """The oneDNN-packed copy of one weight (or of several stacked along the output dimension, or of one
    transposed), rebuilt when any of them changes.

    "Changes" is: an optimizer step anywhere, another tensor object (the weak reference catches a
    reassigned parameter even when the allocator reuses the old address), another storage
    (`p.data = ...`, `.to()`), or another version.
    """

    def __init__(self, transpose: bool = False) -> None:
        self.transpose = transpose
        self._packed: Tensor | None = None
        self._sources: tuple[weakref.ref, ...] = ()
        self._key: tuple | None = None

    def get(self, *weights: Tensor) -> Tensor | None:
        versions = [_version(w) for w in weights]
        if None in versions:
            return None
        key = (_optimizer_steps, *((w.data_ptr(), v, tuple(w.shape)) for w, v in zip(weights, versions)))
        same_objects = len(self._sources) == len(weights) and all(r() is w for r, w in zip(self._sources, weights))
        if not same_objects or key != self._key:
            with torch.no_grad():
                stacked = weights[0] if len(weights) == 1 else torch.cat(weights)
                stacked = stacked.detach().t().contiguous() if self.transpose else stacked.detach()
                try:
                    self._packed = _reorder(stacked)
                except RuntimeError as e:  # a build or CPU whose oneDNN cannot pack: plain F.linear from now on
                    _disable(f"oneDNN could not pack a {tuple(stacked.shape)} weight ({e})")
                    return None
            self._sources, self._key = tuple(weakref.ref(w) for w in weights), key
        return self._packed

    def __reduce__(self):
        # A copied or pickled model starts without a packed copy and builds its own on first use.
        return (PackedWeight, (self.transpose,))


def _packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, None if bias is None else bias.detach(),
                                              "none", [], "")


class _TrainingLinear(torch.autograd.Function):
    """F.linear with autograd: the forward and the input's gradient run on packed weights (W, and W^T for
    the gradient), the weight's gradient through torch.mm (oneDNN was no faster for that shape). Both packed
    copies are rebuilt once per optimizer step, and reused by every micro-batch in between."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor, packed_t: Tensor) -> Tensor:
        # `weight` is an input only so that autograd routes its gradient here; the math uses the packed copies.
        ctx.save_for_backward(x)
        ctx.packed_t = packed_t
        return _packed_linear(x, packed, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        grad_x = _packed_linear(grad, ctx.packed_t, None) if ctx.needs_input_grad[0] else None
        grad_w = flat.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = flat.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, packed: PackedWeight,
           packed_t: PackedWeight | None = None) -> Tensor:
    """F.linear(x, weight, bias), on packed weights when the call qualifies (see the module docstring).

    With autograd on, `packed_t` (a transposing PackedWeight) is needed for the input's gradient; without
    one, training calls take F.linear.
    """
    if _packable(x, weight, bias) and (w := packed.get(weight)) is not None:
        if not _needs_grad(x, weight, bias):
            return _packed_linear(x, w, bias)
        if packed_t is not None and (w_t := packed_t.get(weight)) is not None:
            return _TrainingLinear.apply(x, weight, bias, w, w_t)
    return F.linear(x, weight, bias)


def grouped_linear(x: Tensor, layers: Sequence[nn.Linear], packed: PackedWeight) -> list[Tensor]:
    """[layer(x) for layer in layers] for bias-free layers sharing an input (q/k/v, gate/up).

    Packed, it is one matmul over the stacked weights: a decode step is dominated by per-call costs, and
    this saves 3 of a Qwen3 layer's 7. The outputs are views into the one result. (Forward hooks on
    the grouped modules do not run on the packed path, which never calls them.)
    """
    if all(layer.bias is None and _packable(x, layer.weight, None) and not _needs_grad(x, layer.weight, None)
           for layer in layers):
        w = packed.get(*(layer.weight for layer in layers))
        if w is not None:
            return list(_packed_linear(x, w, None).split([layer.out_features for layer in layers], dim=-1))
    return [layer(x) for layer in layers]


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) that runs on packed weights on CPU in fp32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self._packed_weight = PackedWeight()
        self._packed_weight_t = PackedWeight(transpose=True)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self._packed_weight, self._packed_weight_t)
