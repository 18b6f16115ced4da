"""Linear layers that run inference on CPU through a weight pre-packed for oneDNN.

`F.linear` in fp32 on CPU goes to MKL's GEMM. On an AMD EPYC VM with AVX-512, oneDNN over a weight
reordered once into its blocked layout was 2.3x faster on prefill shapes and 3-5x faster at the 1-8 rows
of a decode step (docs/benchmarks.md); on an Intel Xeon VM, where MKL is at its best, it was no faster for
the decoder's matrices. So inference (no autograd graph to build) on CPU in fp32 uses the packed copy;
everything else (training, GPU, other dtypes, sharded weights) is plain `F.linear`.

The packed copy is derived state, never saved. It is rebuilt whenever the weight changes: an in-place
update (an optimizer step between RL rollouts bumps the version counter), a reassigned or moved tensor
(a different storage). It costs one extra copy of the weights in memory while inference runs on CPU.
Set INTERNVL35_PACKED_LINEAR=0 to turn it off.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# oneDNN picks its blocked layout for an expected row count; 16 was as fast as the ideal hint from
# 1 row (decode) to 300+ rows (prefill) in our measurements.
_ROWS_HINT = 16


def _available() -> bool:
    return (os.environ.get("INTERNVL35_PACKED_LINEAR", "1") != "0" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


_AVAILABLE = _available()


def _packable(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """CPU fp32 inference on a plain (not sharded, not meta) weight, with no autograd graph to record."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not _AVAILABLE or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if type(weight) not in (Tensor, nn.Parameter) or weight.layout != torch.strided:
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _version(weight: Tensor) -> int | None:
    """The in-place version counter, or None for inference tensors, which have none (never packed)."""
    try:
        return weight._version
    except RuntimeError:
        return None


class PackedWeight:
    """The oneDNN-packed copy of one weight (or of several stacked along the output dimension), rebuilt
    when any of them changes.

    "Changes" is: another tensor object (the weak reference catches a reassigned parameter even when
    the allocator reuses the old address), another storage (`p.data = ...`, `.to()`), or another version.
    """

    def __init__(self) -> None:
        self._packed: Tensor | None = None
        self._sources: tuple[weakref.ref, ...] = ()
        self._key: tuple | None = None

    def get(self, *weights: Tensor) -> Tensor | None:
        versions = [_version(w) for w in weights]
        if None in versions:
            return None
        key = tuple((w.data_ptr(), v, tuple(w.shape)) for w, v in zip(weights, versions))
        same_objects = len(self._sources) == len(weights) and all(r() is w for r, w in zip(self._sources, weights))
        if not same_objects or key != self._key:
            with torch.no_grad():
                stacked = weights[0] if len(weights) == 1 else torch.cat(weights)
                self._packed = torch.ops.mkldnn._reorder_linear_weight(stacked.detach(), _ROWS_HINT)
            self._sources, self._key = tuple(weakref.ref(w) for w in weights), key
        return self._packed

    def __reduce__(self):
        # A copied or pickled model starts without a packed copy and builds its own on first use.
        return (PackedWeight, ())


def _packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, None if bias is None else bias.detach(),
                                              "none", [], "")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, packed: PackedWeight) -> Tensor:
    """F.linear(x, weight, bias), through `packed` when the call qualifies (see the module docstring)."""
    if _packable(x, weight, bias) and (w := packed.get(weight)) is not None:
        return _packed_linear(x, w, bias)
    return F.linear(x, weight, bias)


def grouped_linear(x: Tensor, layers: Sequence[nn.Linear], packed: PackedWeight) -> list[Tensor]:
    """[layer(x) for layer in layers] for bias-free layers sharing an input (q/k/v, gate/up).

    Packed, it is one matmul over the stacked weights: a decode step is dominated by per-call costs, and
    this saves 3 of a Qwen3 layer's 7. The outputs are views into the one result. (Forward hooks on
    the grouped modules do not run on the packed path, which never calls them.)
    """
    if all(layer.bias is None and _packable(x, layer.weight, None) for layer in layers):
        w = packed.get(*(layer.weight for layer in layers))
        if w is not None:
            return list(_packed_linear(x, w, None).split([layer.out_features for layer in layers], dim=-1))
    return [layer(x) for layer in layers]


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose CPU inference runs on a packed weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self._packed_weight = PackedWeight()

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self._packed_weight)
