"""Log-probabilities of given responses under the model, in one batched forward (RL: GSPO ratios, MPO).

Uses the same `InternVLModel.forward` as generation, so scored log-probs match the rollout policy.

Responses to the same prompt (a GSPO group: G samples of one question) share it: their row holds the prompt once
and the responses after it, each attending to the prompt and to itself only (segments with a shared prefix,
positions continuing the prompt's), so the prompt and its images run once instead of G times. Gradients reach
the shared prompt from every response, as the sum over separate rows would.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch
from torch import Tensor

from internvl35.model.attention import AttentionInput
from internvl35.model.internvl import ImageFeatures, InternVLModel

Image = ImageFeatures | Tensor | None


@dataclass
class _Row:
    """One row of the batch: a prompt, its image entry, and the sequences (indices) whose responses follow it."""

    prompt: list[int]
    image: Image
    members: list[int] = field(default_factory=list)


def score(model: InternVLModel, sequences: list[tuple[list[int], int]], images: Seq[Image] | None = None,
          share_prompts: bool = True) -> list[Tensor]:
    """Per-token log p(y_t | y_<t) of each response; returns one fp32 tensor per sequence.

    1. Each sequence is (ids = prompt + response, response_start); its result has len(ids) - response_start
       entries, the log-prob of ids[t] for t = response_start .. len(ids) - 1.
    2. With `share_prompts`, sequences with the same prompt ids and the same image entry (the same object, or
       equal pixel tiles) share one row (module docstring). Otherwise, and when no two sequences share a prompt,
       each is a row of its own.
    3. Rows are right-padded to the longest. Padding only follows real tokens, and a real token never attends
       to it, so rows of one sequence need no mask; shared rows are segments (`_tree_input`).
    4. Logits are computed only where a response token is predicted (`logits_at`); shorter rows repeat their
       last position and are trimmed after.
    images: per sequence None, ImageFeatures, or pixel tiles (N, 3, H, W); all tiles go through one ViT call.
    Gradients flow (policy loss); wrap in torch.no_grad() for reference or old-policy log-probs.

    Example: ids = [5, 6, 7, 8], response_start = 2 -> [log p(7 | 5 6), log p(8 | 5 6 7)].
    """
    if not sequences:
        return []
    images = list(images) if images is not None else [None] * len(sequences)
    if len(images) != len(sequences):
        raise ValueError(f"score: {len(images)} image entries for {len(sequences)} sequences")
    vocab = model.config.text.vocab_size
    for ids, start in sequences:
        if not 1 <= start <= len(ids):
            raise ValueError(f"score: response_start={start} must be in 1..len(ids)={len(ids)} "
                             "(the first token has no prediction)")
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise ValueError(f"score: token ids must be ints in [0, {vocab})")
    rows = _rows(sequences, images, share_prompts)
    device = next(model.parameters()).device
    pad = 0 if model.config.image_token_id != 0 else 1
    responses = [ids[start:] for ids, start in sequences]
    answers = [[t for i in row.members for t in responses[i]] for row in rows]  # each row's responses, end to end
    tokens = [row.prompt + a for row, a in zip(rows, answers)]
    T = max(map(len, tokens))
    # Per row, the positions predicting each member's response tokens, members one after another.
    at = [_predicting(row, responses) for row in rows]
    K = max(max(map(len, at)), 1)
    input_ids = torch.tensor([t + [pad] * (T - len(t)) for t in tokens], device=device)  # (B, T)
    attn = _tree_input(rows, responses, T, device) if any(len(r.members) > 1 for r in rows) else None
    logits_at = torch.tensor([a + [a[-1] if a else 0] * (K - len(a)) for a in at], device=device)
    logits = model(input_ids, image_features=_features(model, [row.image for row in rows]), attn=attn,
                   logits_at=logits_at).logits
    logp = logits.float().log_softmax(-1)  # (B, K, V)
    targets = torch.tensor([a + [pad] * (K - len(a)) for a in answers], device=device)
    picked = logp.gather(-1, targets[..., None])[..., 0]  # (B, K)
    out: list[Tensor] = [torch.empty(0)] * len(sequences)
    for b, row in enumerate(rows):
        offset = 0
        for i in row.members:
            out[i] = picked[b, offset: offset + len(responses[i])]
            offset += len(responses[i])
    return out


def _same_image(a: Image, b: Image) -> bool:
    if a is b:
        return True
    return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
            and bool(torch.equal(a, b.to(a.device))))


def _rows(sequences: list[tuple[list[int], int]], images: list[Image], share: bool) -> list[_Row]:
    """Group sequences into rows: one per distinct (prompt, image) when sharing, else one per sequence."""
    rows: list[_Row] = []
    by_prompt: dict[tuple[int, ...], list[_Row]] = {}
    for i, ((ids, start), image) in enumerate(zip(sequences, images)):
        prompt = tuple(ids[:start])
        row = next((r for r in by_prompt.get(prompt, []) if _same_image(r.image, image)), None) if share else None
        if row is None:
            row = _Row(list(prompt), image)
            rows.append(row)
            by_prompt.setdefault(prompt, []).append(row)
        row.members.append(i)
    return rows


def _predicting(row: _Row, responses: list[list[int]]) -> list[int]:
    """Row positions whose logits predict each member's response tokens: the prompt's last position for a
    response's first token, then the response's own tokens."""
    at, offset = [], len(row.prompt)
    for i in row.members:
        n = len(responses[i])
        at += ([len(row.prompt) - 1] + list(range(offset, offset + n - 1))) if n else []
        offset += n
    return at


def _tree_input(rows: list[_Row], responses: list[list[int]], T: int, device: torch.device) -> AttentionInput:
    """Rows holding a prompt and responses after it, as segments whose first (the prompt) every response also
    sees: a response token sees the prompt and its own response up to itself, at positions that continue the
    prompt's. Costs about P^2 + sum n_i (P + n_i), never a (T, T) mask."""
    positions = torch.zeros(len(rows), T, dtype=torch.long)
    segments = []
    for b, row in enumerate(rows):
        P = len(row.prompt)
        lengths = [len(responses[i]) for i in row.members if responses[i]]
        positions[b, :P] = torch.arange(P)
        if lengths:
            positions[b, P: P + sum(lengths)] = torch.cat([torch.arange(P, P + n) for n in lengths])
        segments.append([P, *lengths])
    return AttentionInput(positions=positions.to(device), segments=segments, shared_prefix=[True] * len(rows))


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
    return ImageFeatures.concat(parts, device)
