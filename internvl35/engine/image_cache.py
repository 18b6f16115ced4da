"""Projected image features kept across requests, so that a request about an image seen before skips the ViT.

A multi-turn chat rebuilds its prompt from the history at every turn and sends the turn's images again; an
evaluation or a batch asks several questions about one image. Without this cache each of those runs the
vision tower again, which on a CPU costs more than the rest of the prefill (docs/benchmarks.md).

A key is the SHA-256 of the request's pixel tiles (with their dtype and shape) and the version of the weights
that turn pixels into features (`linear.weights_version`: storage, in-place version and optimizer steps). A
weight update (an optimizer step, `load_state_dict`, an RL weight sync) therefore never serves features of the
old weights. A cryptographic digest, not a cheap checksum: on a server, a request must not be able to collide
with another user's image. Entries are evicted least recently used first, within a byte budget.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from internvl35.engine.lru import WeightBoundLRU
from internvl35.model.internvl import ImageFeatures

CacheKey = tuple[bytes, str, tuple[int, ...], tuple]


def pixels_digest(pixels: Tensor) -> bytes:
    """SHA-256 of the tensor's bytes (any dtype; a GPU tensor is copied to the host first)."""
    data = pixels.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(memoryview(data.numpy())).digest()


class ImageFeatureCache(WeightBoundLRU[ImageFeatures]):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, "image cache")

    def key(self, pixels: Tensor, weights_version: tuple, digest: bytes | None = None) -> CacheKey:
        """`digest`: the pixels' `pixels_digest` when already known (the engine hashes a request once, when added)."""
        self.for_weights(weights_version)
        return digest or pixels_digest(pixels), str(pixels.dtype), tuple(pixels.shape), weights_version

    def get(self, key: CacheKey) -> ImageFeatures | None:
        return self.lookup(key)

    def put(self, key: CacheKey, features: ImageFeatures) -> None:
        """Keep a copy of `features`: they are often a view into a whole batch's features, which the view would
        keep alive beyond the bytes counted against the budget."""
        kept = ImageFeatures(features.embeds.clone(), features.tokens_per_tile)
        self.insert(key, kept, kept.embeds.numel() * kept.embeds.element_size())
