"""Sampling parameters and the vectorised sampler (greedy, temperature, top-k, top-p, seeded per request).

The sampler draws one uniform number per sampled row from that request's own CPU generator and inverts
the row's CDF; everything else is one batched tensor op. So a seeded request samples the same tokens
whatever else shares its batch, and on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


MIN_TEMPERATURE = 1e-4
SEED_LIMIT = 2**63  # seeds are in [0, SEED_LIMIT): what a torch.Generator takes


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    stop: stop strings; the output is cut exactly before the first one (needs the engine's `detokenize`).
    stop_token_ids: ids that end generation, on top of the engine's eos ids; the stop token is kept as
    the last output token (as transformers does), so a trainer scores it too.
    seed: a per-request generator, so sampling is reproducible regardless of batch mates.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 -> greedy
    top_k: int = 0  # 0 -> off
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        # Accept lists for the tuple fields; a frozen dataclass needs object.__setattr__ to normalise them.
        if isinstance(self.stop, str):
            raise ValueError(f"SamplingParams.stop must be a sequence of strings, got the string {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        checks = [
            (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
             f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}"),
            (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0,
             f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}"),
            (_is_int(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}"),
            (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (all(isinstance(s, str) and s for s in self.stop), f"stop strings must be non-empty strings, got {self.stop!r}"),
            (all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids must be integers >= 0, got {self.stop_token_ids!r}"),
            (self.seed is None or (_is_int(self.seed) and 0 <= self.seed < SEED_LIMIT),
             f"seed must be an integer in [0, 2**63) or None, got {self.seed!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamplingParams: {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """The request's own CPU generator (None = use the global RNG)."""
    return None if params.seed is None else torch.Generator().manual_seed(params.seed)


def sample(logits: Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]) -> list[int]:
    """logits (B, V) -> one token id per row.

    1. Greedy rows take the argmax (the whole batch in one op when every row is greedy).
    2. Sampled rows: logits / temperature, sorted once; top-k and top-p mask the sorted tail
       (the most likely token always survives).
    3. Each row draws u ~ U(0, 1) from its own generator; the token is where u * total falls in the
       row's cumulative distribution (inverse CDF, one searchsorted for the batch).
    """
    greedy = logits.max(-1).indices  # several times faster than argmax on CPU for a 32k+ vocabulary
    if all(p.greedy for p in params):
        return greedy.tolist()
    rows = [i for i, p in enumerate(params) if not p.greedy]
    sub = logits[rows].float()  # (R, V)
    V = sub.shape[-1]
    # A temperature near 0 would overflow logits / T to inf (and softmax to NaN); below 1e-4 the distribution is
    # greedy to float32 precision anyway for any logit gap above ~1e-2.
    temp = torch.tensor([max(params[i].temperature, MIN_TEMPERATURE) for i in rows], device=sub.device)[:, None]
    top_k = torch.tensor([params[i].top_k or V for i in rows], device=sub.device)[:, None]
    top_p = torch.tensor([params[i].top_p for i in rows], device=sub.device)[:, None]
    sorted_logits, order = (sub / temp).sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    rank = torch.arange(V, device=sub.device)[None]
    before = probs.cumsum(-1) - probs  # probability mass strictly before each rank
    keep = (rank < top_k) & ((before < top_p) | (rank == 0))
    cdf = (probs * keep).cumsum(-1)  # (R, V)
    u = torch.cat([torch.rand(1, generator=generators[i]) for i in rows]).to(sub.device)[:, None]
    pick = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (R, 1)
    pick = torch.minimum(pick, keep.sum(-1, keepdim=True) - 1)  # kept ranks are a prefix; guards u * total == total
    tokens = greedy.clone()
    tokens[rows] = order.gather(1, pick)[:, 0]
    return tokens.tolist()
