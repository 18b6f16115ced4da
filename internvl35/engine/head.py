"""The decode step's vocabulary projection, with a pre-packed oneDNN weight on CPU.

At batch sizes above one, the output projection (vocab x hidden, the largest matrix of a small model)
is the costliest op of a CPU decode step, and `F.linear`'s generic GEMM handles its few-row inputs
poorly. oneDNN's linear over a weight reordered once into its blocked layout is about 2x faster at
4-8 rows (`bench/generate.py`, docs/benchmarks.md). One row gains nothing, so it keeps `F.linear`.

The packed copy is rebuilt whenever the weight changes in place (an optimizer step between RL
rollouts bumps the tensor's version counter), so it never serves stale weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _packing_supported(weight: Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class OutputHead:
    def __init__(self, weight: Tensor, min_rows: int = 2) -> None:
        self.weight, self.min_rows = weight, min_rows
        self.enabled = _packing_supported(weight)
        self._packed: Tensor | None = None
        self._version = -1

    def _packed_weight(self, rows: int) -> Tensor:
        if self._packed is None or self._version != self.weight._version:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), rows)
            self._version = self.weight._version
        return self._packed

    def __call__(self, hidden: Tensor) -> Tensor:
        """hidden (n, D) -> logits (n, V)."""
        if not self.enabled or hidden.shape[0] < self.min_rows or hidden.dtype != self.weight.dtype:
            return F.linear(hidden, self.weight)
        return torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), self._packed_weight(hidden.shape[0]), None,
                                                  "none", [], "")
