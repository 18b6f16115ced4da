"""Pixel shuffle (v2) and the `mlp1` projector from ViT features to LLM embeddings."""

from __future__ import annotations

from torch import Tensor, nn

from internvl35.model.linear import Linear


def pixel_shuffle(x: Tensor, ratio: float) -> Tensor:
    """Merge each p x p block of patches into one token, p = 1/ratio.

    x: (N, g*g, C) row-major patch features -> (N, (g/p)^2, p*p*C). Channels of a block are concatenated
    top-left, top-right, bottom-left, bottom-right (row-major within the block); output tokens are
    row-major. Same as einops `n (h p1) (w p2) c -> n (h w) (p1 p2 c)`.
    """
    N, L, C = x.shape
    p = round(1 / ratio)
    g = int(L**0.5)
    if g * g != L or g % p:
        raise ValueError(f"pixel_shuffle needs a square patch grid divisible by {p}, got {L} patches")
    h = g // p
    x = x.view(N, h, p, h, p, C).permute(0, 1, 3, 2, 4, 5)  # (N, h, w, p1, p2, C)
    return x.reshape(N, h * h, p * p * C)


def make_projector(vision_dim: int, ratio: float, text_dim: int) -> nn.Sequential:
    """`mlp1`: LayerNorm(4C) -> Linear(4C, D) -> GELU -> Linear(D, D); keys mlp1.{0,1,3}."""
    d_in = vision_dim * round(1 / ratio) ** 2
    return nn.Sequential(nn.LayerNorm(d_in), Linear(d_in, text_dim), nn.GELU(), Linear(text_dim, text_dim))
