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


@lru_cache(maxsize=2)
def _scans_by_digit(split: str) -> dict[int, list[int]]:
    labels = _pool()[1]
    out: dict[int, list[int]] = {d: [] for d in range(10)}
    for i in pool_indices(split):
        out[int(labels[i])].append(i)
    return out


def glyph_of(value: int, seed: int, rng: np.random.Generator, px: int) -> Image.Image:
    """A scan of the digit `value`, drawn from the pool of `seed`'s split (so other families that write digits by
    hand keep the test scans out of training too), as a px x px glyph."""
    scans = _scans_by_digit(split_of(seed))[value]
    return _glyph(scans[int(rng.integers(len(scans)))], px)


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


CELLS = 8  # the canvas is a CELLS x CELLS lattice; a glyph fills one cell


def _render(indices: list[int], size: int, rng: np.random.Generator) -> tuple[Image.Image, list[Box]]:
    """Write the glyphs as one line on the lattice: one row, distinct columns, left to right.

    1. cell = size // CELLS (28 px at 224); each glyph fills exactly one cell;
    2. one row for the whole line, drawn from rows 1..CELLS-2; columns distinct and sorted, so the
       reading order is the left-to-right order (and the image tokens' row-major order).
    Glyphs sit on the lattice rather than at free pixel offsets: at 224 px a cell is exactly one
    pixel-shuffled token of a 224-px-tile model (2x2 patches of 14 px). A ViT trained from nothing
    learns aligned glyphs in a few hundred steps but shifted ones far more slowly (measured:
    63% vs 20% patch accuracy after the same 150 pretraining steps), too slow for the bundled
    model's 45-minute budget. Returns the canvas and each glyph's box, in reading order.
    """
    canvas = Image.new("L", (size, size), 255)
    cell = size // CELLS
    cols = sorted(int(c) for c in rng.choice(CELLS, size=len(indices), replace=False))
    y = int(rng.integers(1, CELLS - 1)) * cell
    boxes = []
    for idx, col in zip(indices, cols):
        x = col * cell
        canvas.paste(_glyph(idx, cell), (x, y))
        boxes.append((x, y, x + cell, y + cell))
    return canvas.convert("RGB"), boxes


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


def _scene(rng: np.random.Generator, seed: int, size: int,
           max_digits: int = 4) -> tuple[Image.Image, list[Box], list[int]]:
    n = int(rng.integers(2, max_digits + 1))
    pool = pool_indices(split_of(seed))
    indices = [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
    image, boxes = _render(indices, size, rng)
    return image, boxes, [int(_pool()[1][i]) for i in indices]


def generate(seed: int, kind: str | None = None, size: int = 224, max_digits: int = 4) -> Sample:
    """A digits sample; `max_digits` (2..CELLS) lengthens the line, for training only: the task is 2-4."""
    if not 2 <= max_digits <= CELLS:
        raise ValueError(f"max_digits must be in 2..{CELLS}, got {max_digits}")
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    image, boxes, values = _scene(rng, seed, size, max_digits)
    question, answer, rationale, target = _question(kind, values)
    layout = [(box, f"digit {v}") for box, v in zip(boxes, values)]
    return Sample(NAME, kind, [image], question, answer, rationale, target, layout)


def _varied(index: int, cell: int, rng: np.random.Generator) -> Image.Image:
    """A glyph for a train sheet: the scan turned up to 12 degrees, scaled 0.85-1.1 and moved up to 2.5 px each
    way (sub-pixel) about its cell's centre; ink pushed past the cell's edge is cut off.

    Continuous moves and scales teach the shapes of handwriting rather than 1,400 scans at fixed spots: a
    digits-only vision pretraining of 300 steps labels 98.0% of held-out glyphs against 95.3% with the
    earlier variation (shrink only, 1-px nudges), and a small CNN on the 8x8 scans goes from 97.2% to
    98.9% with the same kind of variation (`scripts/digits_ceiling.py`; docs/results.md, E27).
    """
    angle = np.deg2rad(rng.uniform(-12, 12))
    scale = rng.uniform(0.85, 1.1)
    dx, dy = rng.uniform(-2.5, 2.5, size=2)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    centre = cell / 2
    # PIL maps each output pixel back to its input pixel: the inverse of "turn and scale about the centre, then move".
    inverse = (cos, sin, centre - cos * (centre + dx) - sin * (centre + dy),
               -sin, cos, centre + sin * (centre + dx) - cos * (centre + dy))
    return _glyph(index, cell).transform((cell, cell), Image.AFFINE, tuple(float(v) for v in inverse),
                                         resample=Image.BILINEAR, fillcolor=255)


def dense(seed: int, size: int = 224, fill: float = 0.5) -> tuple[Image.Image, list[tuple[Box, str]]]:
    """A sheet of digits on the task lattice and what covers it, for vision pretraining.

    Each of the CELLS x CELLS cells holds a glyph with probability `fill` (~32 at 224 px instead of
    2-4 on a task canvas), so every pretraining image teaches many digits. Train sheets vary each
    glyph (`_varied`) so that 1,400 scans seen many times teach handwriting rather than those scans;
    test sheets are drawn like task canvases.
    """
    rng = rng_for(NAME + "/dense", seed)
    train = split_of(seed) == "train"
    pool = pool_indices(split_of(seed))
    canvas = Image.new("L", (size, size), 255)
    cell = size // CELLS
    labelled = []
    for r in range(CELLS):
        for c in range(CELLS):
            if rng.random() < fill:
                idx = pool[int(rng.integers(len(pool)))]
                glyph = _varied(idx, cell, rng) if train else _glyph(idx, cell)
                canvas.paste(glyph, (c * cell, r * cell))
                box = (c * cell, r * cell, (c + 1) * cell, (r + 1) * cell)
                labelled.append((box, f"digit {int(_pool()[1][idx])}"))
    return canvas.convert("RGB"), labelled


FAMILY = Family(NAME, KINDS, generate)
