"""Sequence packing: several samples per row, attention confined to each sample, positions restarting.

A `TrainExample` is one tokenised sample with its pixel tiles. `pack` groups examples greedily
(first fit, in order) into rows of at most `max_tokens`; `collate` turns rows into the tensors the
model takes: ids (B, T), targets, weights, per-sample positions and the sample lengths of each row
(attention stays inside each sample). Padding (when rows differ in length) is unsupervised.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from internvl35.model.attention import AttentionInput
from internvl35.train.loss import IGNORE_INDEX, sample_weights, shift_targets


@dataclass
class TrainExample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: Tensor | None = None  # (tiles, 3, H, W)
    # Aligned with input_ids: at each <IMG_CONTEXT> position whose content is known, the word that names it ("7",
    # "."), IGNORE_INDEX elsewhere; None when nothing is known. Feeds the anchor loss (`loss.anchor_loss`).
    image_words: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Batch:
    input_ids: Tensor  # (B, T)
    targets: Tensor  # (B, T), aligned with positions
    weights: Tensor  # (B, T)
    attn: AttentionInput
    pixel_values: Tensor | None  # all tiles, in row-major order of their placeholders
    num_tokens: int  # real (non-padding) tokens
    image_words: Tensor | None = None  # (B, T) like targets, from the examples' image_words; None if none has any

    def to(self, device: torch.device | str) -> Batch:
        """The batch on `device` (collate builds it on the CPU; the model may live on a GPU)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        attn = replace(self.attn, positions=move(self.attn.positions), mask=move(self.attn.mask))
        return replace(self, input_ids=move(self.input_ids), targets=move(self.targets), weights=move(self.weights),
                       attn=attn, pixel_values=move(self.pixel_values), image_words=move(self.image_words))


def pack(examples: list[TrainExample], max_tokens: int) -> list[list[TrainExample]]:
    """First-fit packing in order; an example longer than max_tokens is an error, never truncated silently."""
    rows: list[list[TrainExample]] = []
    sizes: list[int] = []
    for ex in examples:
        if len(ex) > max_tokens:
            raise ValueError(f"a training example has {len(ex)} tokens, more than the pack length {max_tokens}")
        for i, size in enumerate(sizes):
            if size + len(ex) <= max_tokens:
                rows[i].append(ex)
                sizes[i] += len(ex)
                break
        else:
            rows.append([ex])
            sizes.append(len(ex))
    return rows


def collate(rows: list[list[TrainExample]], averaging: str = "square", pad_id: int = 0) -> Batch:
    """Rows of examples -> a packed batch (one row per list; a list of one example = plain padding)."""
    T = max(sum(len(ex) for ex in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    weights = torch.zeros(B, T)
    positions = torch.zeros(B, T, dtype=torch.long)
    words = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    pixels = []
    for b, row in enumerate(rows):
        start = 0
        for ex in row:
            n = len(ex)
            tgt = shift_targets(ex.labels)
            ids[b, start:start + n] = torch.tensor(ex.input_ids)
            targets[b, start:start + n] = torch.tensor(tgt)
            weights[b, start:start + n] = torch.tensor(sample_weights(tgt, averaging))
            positions[b, start:start + n] = torch.arange(n)
            if ex.image_words is not None:
                words[b, start:start + n] = torch.tensor(ex.image_words)
            if ex.pixel_values is not None:
                pixels.append(ex.pixel_values)
            start += n
    attn = AttentionInput(positions=positions, segments=[[len(ex) for ex in row] for row in rows])
    num_tokens = sum(len(ex) for row in rows for ex in row)
    known = any(ex.image_words is not None for row in rows for ex in row)
    return Batch(ids, targets, weights, attn, torch.cat(pixels) if pixels else None, num_tokens,
                 words if known else None)
