"""Documents: a large, mostly empty invoice form with four numbers written in by hand, one in each quarter.

The page is 448 x 448 px: the model sees it as 2 x 2 tiles of 224 px plus a 224-px thumbnail. Each number is
written on the digits family's lattice (28-px cells, one handwritten scan a cell, test scans for test seeds), so in
a tile each digit is one image token, as on a digits canvas; in the thumbnail the page shrinks by half and four
digits share a token, so only the high-resolution tiles make them legible (the ViR test bed). The printed text
(title, company, field labels) is small, 11-12 px.

Why this layout (docs/results.md, E48-E49): the earlier invoice, 12-px printed fields at random places, needed the
model to read print three characters to an image token and to find a field by its printed label, neither of which
the bundled model learned. Here each field has its quarter (the invoice number top left, the date top right, the
account bottom left, the total bottom right), as forms do, so the question says which tile to read.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from internvl35.tasks import digits
from internvl35.tasks.base import Family, Sample, font, pick_kind, rng_for

NAME = "document"
KINDS = ("invoice", "date", "total", "account")
SIZE = 448
CELLS = digits.CELLS  # cells per tile side
COMPANIES = ("Northwind Ltd", "Acme Parts", "Blue Fjord AS", "Kestrel & Co", "Orbit Foods")
# kind -> (its quarter (col, row) of the page, its printed label, its number of digits)
FIELDS = {
    "invoice": ((0, 0), "Invoice No", 4),
    "date": ((1, 0), "Day", 2),
    "account": ((0, 1), "Account", 4),
    "total": ((1, 1), "Total", 3),
}
QUESTIONS = {
    "invoice": "What is the invoice number? Answer with the digits only.",
    "date": "On which day of the month is the invoice dated? Answer with a number.",
    "total": "What is the total amount? Answer with a number.",
    "account": "What is the account number? Answer with the digits only.",
}
WHERE = {(0, 0): "top left", (1, 0): "top right", (0, 1): "bottom left", (1, 1): "bottom right"}

Box = tuple[int, int, int, int]


def _number(rng: np.random.Generator, kind: str) -> str:
    """No leading zero; a date's day is 10..28, a day every month has."""
    if kind == "date":
        return str(int(rng.integers(10, 29)))
    return str(int(rng.integers(1, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, size=FIELDS[kind][2] - 1))


def _draw(numbers: dict[str, str], seed: int, rng: np.random.Generator,
          size: int) -> tuple[Image.Image, list[tuple[Box, str]]]:
    """The page and its layout: each written digit's cell, labelled "digit d" (all else is background).

    1. the page is two tiles a side, each a CELLS x CELLS lattice (28-px cells at 448 px);
    2. the title and the company are printed in the top row of the top tiles, with a rule under them;
    3. each field takes its quarter: a random row 1..CELLS-2 of that tile, its label printed right-aligned in the
       cells before the number, the number's digits in consecutive cells from a random column that leaves room for
       the label (about 3 cells) and the digits.
    """
    cell = size // (2 * CELLS)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    small = font(max(6, round(cell * 0.42)))
    d.text((cell // 3, cell // 2), "INVOICE", fill=(0, 0, 0), font=font(max(6, round(cell * 0.55))), anchor="lm")
    company = COMPANIES[int(rng.integers(len(COMPANIES)))]
    d.text((size - cell // 3, cell // 2), company, fill=(60, 60, 60), font=small, anchor="rm")
    d.line([(cell // 3, cell - 2), (size - cell // 3, cell - 2)], fill=(180, 180, 180))
    layout = []
    for kind, number in numbers.items():
        (qc, qr), label, _ = FIELDS[kind]
        row = qr * CELLS + int(rng.integers(1, CELLS - 1))
        first = qc * CELLS + int(rng.integers(3, CELLS - len(number) + 1))
        y = row * cell
        d.text((first * cell - cell // 6, y + cell // 2), label + ":", fill=(0, 0, 0), font=small, anchor="rm")
        for k, ch in enumerate(number):
            x = (first + k) * cell
            img.paste(digits.glyph_of(int(ch), seed, rng, cell).convert("RGB"), (x, y))
            layout.append(((x, y, x + cell, y + cell), f"digit {ch}"))
    return img, layout


def generate(seed: int, kind: str | None = None, size: int = SIZE) -> Sample:
    """size: the page's side, two tiles of the model's tile size (448 for 224-px tiles, 896 for 448)."""
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    numbers = {k: _number(rng, k) for k in FIELDS}
    img, layout = _draw(numbers, seed, rng, size)
    value = numbers[kind]
    where = WHERE[FIELDS[kind][0]]
    why = f"The {FIELDS[kind][1].lower()} field is in the {where} quarter of the page; it reads {value}."
    target = {"type": "number", "value": int(value)} if kind in ("date", "total") else {"type": "digits", "value": value}
    return Sample(NAME, kind, [img], QUESTIONS[kind], value, why, target, layout)


FAMILY = Family(NAME, KINDS, generate)
