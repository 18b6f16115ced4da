"""The engine's KV cache: preallocated per-slot storage and the two per-forward views the model writes through.

Layout: one tensor (layers, 2, slots, Hkv, max_seq_len, hd). A request owns one slot from admission to
finish; its token at position p lives at [:, :, slot, :, p]. The scheduler keeps the running slots dense
(0 .. n-1, see `Scheduler.compact`), so a decode step reads the contiguous prefix `[:n, :, :L]` as a view:
no gather, no copy, whatever joined or left. Positions past a row's length are masked, never read.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SlotKVCache:
    def __init__(self, layers: int, slots: int, kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        # Zeros, not empty: masked positions are multiplied by zero weights, and 0 * NaN would be NaN.
        self.kv = torch.zeros(layers, 2, slots, kv_heads, max_seq_len, head_dim, dtype=dtype, device=device)
        self.slots, self.max_seq_len = slots, max_seq_len

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def prefill(self, slots: Tensor, positions: Tensor) -> PackedPrefill:
        """A view for one packed prefill row: token i goes to (slots[i], positions[i])."""
        return PackedPrefill(self.kv, slots, positions)

    def decode(self, positions: Tensor, length: int) -> BatchedDecode:
        """A view for a T=1 step of rows 0..n-1 (n = len(positions)) attending to the first `length` positions."""
        return BatchedDecode(self.kv, positions, length)

    def suffix(self, slot: int, start: int, length: int) -> SuffixPrefill:
        """A view for one row of `length` new tokens at positions start.., after a prefix already in the slot."""
        return SuffixPrefill(self.kv, slot, start, length)

    def read(self, slot: int, length: int) -> Tensor:
        """A copy of the slot's first `length` positions (layers, 2, Hkv, length, hd)."""
        return self.kv[:, :, slot, :, :length].clone()

    def write(self, slot: int, block: Tensor) -> None:
        """Put a block from `read` back at the start of a slot."""
        self.kv[:, :, slot, :, : block.shape[-2]] = block

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot src into slot dst (all layers, keys and values)."""
        self.kv[:, :, dst, :, :length] = self.kv[:, :, src, :, :length]


class PackedPrefill:
    """Writes a packed row's keys/values to their slots; attention stays inside the packed row itself."""

    def __init__(self, kv: Tensor, slots: Tensor, positions: Tensor) -> None:
        self.kv, self.slots, self.positions = kv, slots, positions

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: (1, Hkv, T, hd); the indexed store takes (T, Hkv, hd).
        self.kv[layer, 0, self.slots, :, self.positions] = k[0].transpose(0, 1)
        self.kv[layer, 1, self.slots, :, self.positions] = v[0].transpose(0, 1)
        return k, v


class BatchedDecode:
    """Row b writes its new key/value at positions[b] of slot b and reads slot b's first `length` positions."""

    def __init__(self, kv: Tensor, positions: Tensor, length: int) -> None:
        self.kv, self.positions, self.length = kv, positions, length
        self.rows = torch.arange(len(positions), device=positions.device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        n = len(self.rows)
        self.kv[layer, 0, self.rows, :, self.positions] = k[:, :, 0]  # (n, Hkv, hd)
        self.kv[layer, 1, self.rows, :, self.positions] = v[:, :, 0]
        return self.kv[layer, 0, :n, :, : self.length], self.kv[layer, 1, :n, :, : self.length]


class SuffixPrefill:
    """One row of new tokens at positions start..start+T-1 of a slot whose first `start` positions are filled:
    writes their keys/values there and reads the slot's first start+T positions."""

    def __init__(self, kv: Tensor, slot: int, start: int, length: int) -> None:
        self.kv, self.slot, self.start, self.end = kv, slot, start, start + length

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: (1, Hkv, T, hd)
        self.kv[layer, 0, self.slot, :, self.start:self.end] = k[0]
        self.kv[layer, 1, self.slot, :, self.start:self.end] = v[0]
        row = slice(self.slot, self.slot + 1)
        return self.kv[layer, 0, row, :, : self.end], self.kv[layer, 1, row, :, : self.end]
