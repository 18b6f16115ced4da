"""Log-probabilities of given responses under the model, in one batched forward (RL: GSPO ratios, MPO).

Uses the same `InternVLModel.forward` as generation, so scored log-probs match the rollout policy.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch
from torch import Tensor

from internvl35.model.internvl import ImageFeatures, InternVLModel

Image = ImageFeatures | Tensor | None


def score(model: InternVLModel, sequences: list[tuple[list[int], int]], images: Seq[Image] | None = None) -> list[Tensor]:
    """Per-token log p(y_t | y_<t) of each response; returns one fp32 tensor per sequence.

    1. Each sequence is (ids = prompt + response, response_start); its result has len(ids) - response_start
       entries, the log-prob of ids[t] for t = response_start .. len(ids) - 1.
    2. Rows are right-padded to the longest; plain causal attention is then exact for every real token
       (a real token never sees padding, which only follows it), so no mask is needed.
    3. Logits are computed only where a response token is predicted (positions response_start - 1 ..
       len - 2), via `logits_at`; shorter rows repeat their last position and are trimmed after.
    images: per sequence None, ImageFeatures, or pixel tiles (N, 3, H, W); all tiles go through one ViT call.
    Gradients flow (policy loss); wrap in torch.no_grad() for reference or old-policy log-probs.

    Example: ids = [5, 6, 7, 8], response_start = 2 -> [log p(7 | 5 6), log p(8 | 5 6 7)].
    """
    if not sequences:
        return []
    images = list(images) if images is not None else [None] * len(sequences)
    if len(images) != len(sequences):
        raise ValueError(f"score: {len(images)} image entries for {len(sequences)} sequences")
    for ids, start in sequences:
        if not 1 <= start <= len(ids):
            raise ValueError(f"score: response_start={start} must be in 1..len(ids)={len(ids)} "
                             "(the first token has no prediction)")
    device = next(model.parameters()).device
    pad = 0 if model.config.image_token_id != 0 else 1
    T = max(len(ids) for ids, _ in sequences)
    K = max(max(len(ids) - start for ids, start in sequences), 1)
    input_ids = torch.tensor([ids + [pad] * (T - len(ids)) for ids, _ in sequences], device=device)  # (B, T)
    at = [_predicting(len(ids), start, K) for ids, start in sequences]
    logits = model(input_ids, image_features=_features(model, images), logits_at=torch.tensor(at, device=device)).logits
    logp = logits.float().log_softmax(-1)  # (B, K, V)
    targets = torch.tensor([ids[start:] + [pad] * (K - len(ids) + start) for ids, start in sequences], device=device)
    picked = logp.gather(-1, targets[..., None])[..., 0]  # (B, K)
    return [picked[i, : len(ids) - start] for i, (ids, start) in enumerate(sequences)]


def _predicting(length: int, start: int, K: int) -> list[int]:
    """Positions whose logits predict the response tokens, padded to K by repeating the last one."""
    pos = list(range(start - 1, length - 1)) or [start - 1]
    return pos + [pos[-1]] * (K - len(pos))


def _features(model: InternVLModel, images: list[Image]) -> ImageFeatures | None:
    """One ImageFeatures in row order (the order the model fills <IMG_CONTEXT> positions of a (B, T) batch)."""
    device = next(model.parameters()).device
    pixels = [x for x in images if isinstance(x, Tensor)]
    encoded = iter([])
    if pixels:
        encoded = iter(model.encode_images(torch.cat(pixels).to(device)).split([p.shape[0] for p in pixels]))
    parts = [next(encoded) if isinstance(x, Tensor) else x for x in images if x is not None]
    if not parts:
        return None
    feats = ImageFeatures.concat(parts)
    return ImageFeatures(feats.embeds.to(device), feats.tokens_per_tile)
