"""Bar charts of a week: one horizontal bar a day, its value written by hand at its end; read a day's value,
compare two days, add or subtract two days.

Why this layout (docs/results.md, E40-E48): the earlier chart, vertical bars named after random foods, asked the
model to find the bar whose printed name matches the question's word. Neither the ViT nor the 4-layer language
model learned that lookup within the bundled model's budget, even from words (E46, E47). Here the days come in
their calendar order, one lattice row each, so "Wed" means the third bar: a lookup by place that the language
model learns from words in a hundred steps (E48). The values are written in the world's handwriting (the digits
family's scans, test scans for test seeds), which the ViT already reads; the printed day names and the bars'
lengths say the same thing to a reader who reads print.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from internvl35.tasks import digits
from internvl35.tasks.base import Family, Sample, font, pick_kind, rng_for

NAME = "chart"
KINDS = ("read", "compare", "compute")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri")
TITLES = ("Visitors", "Orders", "Calls", "Sales", "Deliveries")
VMAX = 9  # values are 1..VMAX, one handwritten digit each
BAR_COLOURS = ((52, 101, 164), (204, 0, 0), (78, 154, 6), (245, 121, 0), (117, 80, 123))
CELLS = digits.CELLS  # the lattice: one cell is one image token of a 224-px tile

Box = tuple[int, int, int, int]


def value_column(value: int) -> int:
    """The lattice column of the value written after a bar of `value`: the bar starts at column 1 and spends
    CELLS - 2 columns on VMAX units, and the value takes the cell after the one holding the bar's end (column 2
    for 1, the last column for VMAX)."""
    return 1 + -(-value * (CELLS - 2) // VMAX)  # 1 + ceil(bar length in cells)


def _draw(title: str, values: list[int], seed: int, rng: np.random.Generator,
          size: int) -> tuple[Image.Image, list[tuple[Box, str]]]:
    """The chart and what covers it: each written value's cell, labelled "digit v" (everything else is background).

    1. the canvas is the digits family's CELLS x CELLS lattice (28-px cells at 224 px);
    2. row 0 holds the title; day k (Mon = 0) is row k + 1, its name printed in column 0;
    3. a bar runs from column 1's left edge for value * (size - 2 cells) / VMAX px, over faint grid lines at
       every 3 units;
    4. the value's handwritten glyph fills the cell after the one holding the bar's end (`value_column`).
    """
    cell = size // CELLS
    unit = (CELLS - 2) * cell / VMAX
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((cell // 4, cell // 2), title, fill=(0, 0, 0), font=font(max(8, round(cell * 0.5))), anchor="lm")
    bottom = (len(values) + 1) * cell
    for v in range(3, VMAX + 1, 3):
        x = round(cell + v * unit)
        d.line([(x, cell), (x, bottom)], fill=(225, 225, 225))
    d.line([(cell, cell), (cell, bottom)], fill=(0, 0, 0), width=2)
    label_font = font(max(8, round(cell * 0.4)))
    layout = []
    for k, v in enumerate(values):
        top = (k + 1) * cell
        d.text((cell // 2, top + cell // 2), DAYS[k], fill=(0, 0, 0), font=label_font, anchor="mm")
        pad = cell // 5
        d.rectangle([cell + 1, top + pad, round(cell + v * unit) - 1, top + cell - pad - 1], fill=BAR_COLOURS[k])
        x = value_column(v) * cell
        img.paste(digits.glyph_of(v, seed, rng, cell).convert("RGB"), (x, top))
        layout.append(((x, top, x + cell, top + cell), f"digit {v}"))
    return img, layout


def _question(rng: np.random.Generator, kind: str, values: list[int]):
    i, j = (int(k) for k in rng.choice(len(values), size=2, replace=False))
    a, b, va, vb = DAYS[i], DAYS[j], values[i], values[j]
    if kind == "read":
        why = f"{a} is bar {i + 1}; its value is {va}."
        return f"What is the value for {a}? Answer with a number.", str(va), why, {"type": "number", "value": va}
    if kind == "compare":
        win = a if va > vb else b
        letter = "A" if win == a else "B"
        op = ">" if va > vb else "<"
        why = f"{a} is {va} and {b} is {vb}. {va} {op} {vb}, so {win} is larger: {letter}."
        q = (f"Which day has the larger value?\nA. {a}\nB. {b}\n"
             "Answer with the option's letter from the given choices directly.")
        return q, letter, why, {"type": "choice", "answers": [win], "options": [a, b], "letters": {"A": a, "B": b}}
    if rng.integers(2) == 0:
        why = f"{a} is {va} and {b} is {vb}. {va} + {vb} = {va + vb}."
        q = f"What is the sum of the values for {a} and {b}? Answer with a number."
        return q, str(va + vb), why, {"type": "number", "value": va + vb}
    if va < vb:
        a, b, va, vb = b, a, vb, va
    why = f"{a} is {va} and {b} is {vb}. {va} - {vb} = {va - vb}."
    q = f"How much larger is the value for {a} than for {b}? Answer with a number."
    return q, str(va - vb), why, {"type": "number", "value": va - vb}


def generate(seed: int, kind: str | None = None, size: int = 224) -> Sample:
    """3-5 days from Monday, distinct values in 1..VMAX (every comparison is then well defined)."""
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    n = int(rng.integers(3, len(DAYS) + 1))
    values = [int(v) + 1 for v in rng.choice(VMAX, size=n, replace=False)]
    title = TITLES[int(rng.integers(len(TITLES)))]
    q, ans, why, target = _question(rng, kind, values)
    image, layout = _draw(title, values, seed, rng, size)
    return Sample(NAME, kind, [image], q, ans, why, target, layout)


def dense(seed: int, size: int = 224) -> tuple[Image.Image, list[tuple[Box, str]]]:
    """A chart and what covers it, for vision pretraining."""
    sample = generate(seed, size=size)
    return sample.images[0], sample.layout


FAMILY = Family(NAME, KINDS, generate)
