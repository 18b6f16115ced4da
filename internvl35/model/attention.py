"""What the attention layers are given from outside: positions, a mask, and optionally a KV cache.

The model never allocates or schedules a cache; an engine (or a trainer) passes one in. Anything with
an `update(layer, k, v)` method works, so the engine owns the storage layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class KVCache(Protocol):
    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this step's keys/values (B, Hkv, T, hd); return everything to attend to (B, Hkv, S, hd)."""
        ...


@dataclass
class AttentionInput:
    """Per-forward attention metadata shared by all decoder layers.

    positions: (B, T) absolute positions for RoPE.
    mask: bool (B, 1, T, S), True = may attend; None = plain causal attention over T (no cache, no padding).
    cache: the KV cache to read and write, or None.
    """

    positions: Tensor
    mask: Tensor | None = None
    cache: KVCache | None = None


def causal_input(batch: int, length: int, device: torch.device | str = "cpu") -> AttentionInput:
    positions = torch.arange(length, device=device).expand(batch, length)
    return AttentionInput(positions=positions)


def packed_input(sample_lengths: list[int], device: torch.device | str = "cpu") -> AttentionInput:
    """One packed row holding several samples: positions restart and attention stays inside each sample."""
    total = sum(sample_lengths)
    segment = torch.repeat_interleave(torch.arange(len(sample_lengths), device=device),
                                      torch.tensor(sample_lengths, device=device))
    starts = torch.cumsum(torch.tensor([0, *sample_lengths[:-1]], device=device), 0)
    positions = torch.arange(total, device=device) - torch.repeat_interleave(starts, torch.tensor(sample_lengths, device=device))
    causal = torch.ones(total, total, dtype=torch.bool, device=device).tril()
    same = segment[:, None] == segment[None, :]
    return AttentionInput(positions=positions[None], mask=(causal & same)[None, None])


def padded_input(lengths: Tensor, length: int) -> AttentionInput:
    """Right-padded batch (B, T): each row attends causally to its own first `lengths[b]` tokens."""
    device = lengths.device
    idx = torch.arange(length, device=device)
    valid = idx[None, :] < lengths[:, None]  # (B, S)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = causal[None] & valid[:, None, :]
    # Padding rows attend to themselves only, so softmax never sees an all-masked row.
    mask = mask | torch.eye(length, dtype=torch.bool, device=device)[None]
    positions = idx.expand(len(lengths), length)
    return AttentionInput(positions=positions, mask=mask[:, None])
