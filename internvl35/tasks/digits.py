"""Handwritten digits: 2-4 real digits from scikit-learn's bundled `load_digits`, left to right.

The 1797 8x8 scans are split by index: the first TRAIN_POOL feed train seeds, the rest feed
test seeds, so test accuracy means reading handwriting the model has never seen.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from internvl35.tasks.base import Family, Sample, pick_kind, rng_for, split_of

NAME = "digits"
KINDS = ("read", "sum", "difference", "largest", "count")
TRAIN_POOL = 1400  # indices [0, 1400) train, [1400, 1797) test


@lru_cache(maxsize=1)
def _pool() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships with scikit-learn, no download

    d = load_digits()
    ink = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # (1797, 8, 8)
    return ink, d.target.astype(int)


def pool_indices(split: str) -> range:
    n = len(_pool()[1])
    return range(0, TRAIN_POOL) if split == "train" else range(TRAIN_POOL, n)


@lru_cache(maxsize=4096)
def _glyph(index: int, px: int) -> Image.Image:
    """Scan `index` as a px x px dark-on-white glyph (8x8 -> 16x16 bilinear -> px bicubic)."""
    ink = _pool()[0][index]
    img = Image.fromarray(255 - ink, mode="L")
    # Two-step upscaling avoids the blocky look of a single 6x jump; the contrast curve
    # then sharpens the soft edges so strokes read clearly at 224 px.
    img = img.resize((16, 16), Image.BILINEAR).resize((px, px), Image.BICUBIC)
    return img.point(lambda v: 0 if v < 60 else (255 if v > 230 else (v - 60) * 3 // 2))


def _render(indices: list[int], size: int, rng: np.random.Generator) -> Image.Image:
    """Place glyphs in equal slots, left to right, each jittered inside its slot.

    1. slot = size // n; glyph side px is drawn from [40, 56] scaled by size/224, capped so
       a glyph fits its slot with a 4 px margin (224 px, n=4: slot 56, px in 40..52);
    2. x = slot start + uniform offset in [0, slot - px]: glyphs never overlap and the
       reading order is the left-to-right order;
    3. y = centred +- 16 px (scaled) so rows are not perfectly aligned.
    """
    canvas = Image.new("L", (size, size), 255)
    n, scale = len(indices), size / 224
    slot = size // n
    hi = max(8, min(round(56 * scale), slot - 4))
    lo = min(round(40 * scale), hi)
    jit = round(16 * scale)
    for i, idx in enumerate(indices):
        px = int(rng.integers(lo, hi + 1))
        x = i * slot + int(rng.integers(0, slot - px + 1))
        y = (size - px) // 2 + int(rng.integers(-jit, jit + 1))
        canvas.paste(_glyph(idx, px), (x, min(max(y, 0), size - px)))
    return canvas.convert("RGB")


def _question(kind: str, values: list[int]) -> tuple[str, str, str, dict]:
    seen = ", ".join(map(str, values))
    intro = f"The digits are {seen}."
    if kind == "read":
        ans = "".join(map(str, values))
        return (
            "Read the handwritten digits from left to right. "
            "Answer with the digits only, without spaces.",
            ans,
            f"From left to right the digits are {seen}. Together they read {ans}.",
            {"type": "digits", "value": ans},
        )
    if kind == "sum":
        total = sum(values)
        expr = " + ".join(map(str, values))
        q, why = "What is the sum of all the digits?", f"{intro} {expr} = {total}."
        return q + " Answer with a number.", str(total), why, {"type": "number", "value": total}
    if kind == "difference":
        a, b = values[0], values[1]
        q = "What is the first digit (leftmost) minus the second digit?"
        why = f"{intro} The first is {a} and the second is {b}. {a} - {b} = {a - b}."
        return q + " Answer with a number.", str(a - b), why, {"type": "number", "value": a - b}
    if kind == "largest":
        top = max(values)
        why = f"{intro} The largest of them is {top}."
        q = "What is the largest digit in the image? Answer with a number."
        return q, str(top), why, {"type": "number", "value": top}
    n = len(values)
    why = f"{intro} That is {n} digits."
    q = "How many handwritten digits are in the image? Answer with a number."
    return q, str(n), why, {"type": "number", "value": n}


def generate(seed: int, kind: str | None = None, size: int = 224) -> Sample:
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    n = int(rng.integers(2, 5))
    pool = pool_indices(split_of(seed))
    indices = [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
    values = [int(_pool()[1][i]) for i in indices]
    image = _render(indices, size, rng)
    question, answer, rationale, target = _question(kind, values)
    return Sample(NAME, kind, [image], question, answer, rationale, target)


FAMILY = Family(NAME, KINDS, generate)
