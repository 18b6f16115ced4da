"""Keys and values of finished requests, kept for later requests that start with the same tokens (the same rules
let a request copy a running one's: `ModelRunner.prefill`).

A chat sends its whole history with every turn, so turn k+1's prompt starts with turn k's prompt and answer,
whose keys and values the engine has just computed. An entry holds them (positions 0..n-1: the prompt and
the output but its newest token, which never entered the cache), the token ids they belong to, the digest of
the request's image tiles and the model's weights version. A new request reuses the longest common prefix
with an entry when
- the weights are the same (`linear.weights_version` over all parameters: a weight update drops every entry),
- its images are the entry's (an <IMG_CONTEXT> id stands for any image, so the tokens alone do not say what
  the prefix saw),
- every image token of the new prompt lies inside the reused prefix (the rest is prefilled as text), and
- the prefix is at least `MIN_REUSE` tokens and leaves at least one prompt token to compute.
Entries are evicted least recently used first, within a byte budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from internvl35.engine.lru import WeightBoundLRU

# Below this, running the prompt in the packed prefill costs about what the copy and a separate row would save.
MIN_REUSE = 32


@dataclass
class _Entry:
    ids: list[int]
    image_digest: bytes | None
    block: Tensor  # (layers, 2, Hkv, len(ids), hd)

    @property
    def nbytes(self) -> int:
        return self.block.numel() * self.block.element_size()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache(WeightBoundLRU[_Entry]):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, "prefix cache")
        self._next = 0

    def wants(self, n_tokens: int, nbytes: int) -> bool:
        """Whether a prefix of this length and size would be kept: asked before copying it out of the slot."""
        return n_tokens >= MIN_REUSE and self.fits(nbytes)

    def save(self, ids: list[int], image_digest: bytes | None, weights_version: tuple, block: Tensor) -> None:
        self.for_weights(weights_version)
        entry = _Entry(list(ids), image_digest, block)
        if self.wants(len(ids), entry.nbytes):
            self.insert(self._next, entry, entry.nbytes)
            self._next += 1

    def match(self, ids: list[int], image_digest: bytes | None, weights_version: tuple,
              image_token_id: int | None) -> tuple[int, Tensor] | None:
        """(m, keys/values of positions 0..m-1) of the longest reusable prefix of `ids`, or None."""
        self.for_weights(weights_version)
        last_image = last_image_position(ids, image_token_id)
        best, best_key = 0, None
        for key, entry in self.items():
            m = reusable_length(entry.ids, entry.image_digest, ids, image_digest, last_image)
            if m > best:
                best, best_key = m, key
        entry = self.lookup(best_key)  # a miss when nothing qualified
        return None if entry is None else (best, entry.block[..., :best, :])


def last_image_position(ids: list[int], image_token_id: int | None) -> int:
    return max((i for i, t in enumerate(ids) if t == image_token_id), default=-1)


def reusable_length(kept_ids: list[int], kept_digest: bytes | None, ids: list[int], image_digest: bytes | None,
                    last_image: int) -> int:
    """How many leading positions of `ids` can take keys/values computed for `kept_ids` (0: none), by the rules
    above; `last_image` is `last_image_position(ids, ...)`: every image token must lie in the reused part, since
    the rest is prefilled without image features."""
    if kept_digest != image_digest:
        return 0
    m = min(_common_prefix(kept_ids, ids), len(ids) - 1)
    return m if m > last_image and m >= MIN_REUSE else 0
