"""What the attention layers are given from outside: positions, a mask, and optionally a KV cache.

The model never allocates or schedules a cache; an engine (or a trainer) passes one in. Anything with
an `update(layer, k, v)` method works, so the engine owns the storage layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
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
    segments: packed rows without a mask: the sample lengths of each row, laid end to end from position 0
        (any rest of the row is padding). Attention runs causally inside each sample, which costs
        sum(L_i^2) instead of T^2 and never materialises a (T, T) mask.
    shared_prefix: with segments, per row whether its first segment is a prefix every later segment of the row
        also attends to (responses after the prompt they share: `engine/scoring.py`); None = none is.
    """

    positions: Tensor
    mask: Tensor | None = None
    cache: KVCache | None = None
    segments: list[list[int]] | None = None
    shared_prefix: list[bool] | None = None


def causal_input(batch: int, length: int, device: torch.device | str = "cpu") -> AttentionInput:
    positions = torch.arange(length, device=device).expand(batch, length)
    return AttentionInput(positions=positions)


def _packed_positions(sample_lengths: list[int], device: torch.device | str) -> Tensor:
    """(T,) positions of samples laid end to end, restarting at 0 for each sample."""
    lengths = torch.tensor(sample_lengths, device=device)
    starts = torch.cumsum(torch.tensor([0, *sample_lengths[:-1]], device=device), 0)
    return torch.arange(sum(sample_lengths), device=device) - torch.repeat_interleave(starts, lengths)


def segmented_input(sample_lengths: list[int], device: torch.device | str = "cpu") -> AttentionInput:
    """One packed row holding several samples; attention runs inside each sample (sum(L_i^2) work, no mask)."""
    return AttentionInput(positions=_packed_positions(sample_lengths, device)[None], segments=[list(sample_lengths)])


def segment_attention(q: Tensor, k: Tensor, v: Tensor, segments: list[list[int]], gqa: bool,
                      shared_prefix: list[bool] | None = None) -> Tensor:
    """Causal attention inside each packed sample: q (B, nh, T, hs), k/v (B, nkv, T, hs) -> (B, nh, T, hs).

    Where `shared_prefix[b]`, the later samples of row b also see all of its first one: keys and values of
    [prefix, own sample], a (n, P + n) mask of ones then causal, never a (T, T) one."""
    T = q.shape[2]
    rows = []
    for b, lengths in enumerate(segments):
        parts, start = [], 0
        prefix = lengths[0] if shared_prefix is not None and shared_prefix[b] and lengths else 0
        for n in lengths:
            s = slice(start, start + n)
            if prefix and start:
                seen = torch.ones(n, prefix + n, dtype=torch.bool, device=q.device).tril(prefix)  # prefix, then causal
                kv = (torch.cat([x[b:b + 1, :, :prefix], x[b:b + 1, :, s]], dim=2) for x in (k, v))
                parts.append(F.scaled_dot_product_attention(q[b:b + 1, :, s], *kv, attn_mask=seen, enable_gqa=gqa))
            else:
                parts.append(F.scaled_dot_product_attention(q[b:b + 1, :, s], k[b:b + 1, :, s], v[b:b + 1, :, s],
                                                            is_causal=True, enable_gqa=gqa))
            start += n
        if start < T:  # padding: its output is never used, zeros keep it finite
            parts.append(q.new_zeros(1, q.shape[1], T - start, q.shape[3]))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0)
