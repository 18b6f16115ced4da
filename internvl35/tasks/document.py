"""Documents: a large, mostly empty invoice page with a few small fields to find and read.

The text is small on purpose: about width/56 px tall (12 px on the default 672 x 448 page),
so in the single 224 px thumbnail it shrinks to ~4 px and only the high-resolution tiles
(224 px tiles: 3 x 2 for this page) make it legible. For 448 px tiles use (1344, 896).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from internvl35.tasks.base import Family, Sample, font, pick_kind, rng_for

NAME = "document"
KINDS = ("invoice", "date", "total", "account")
COLS, ROWS = 3, 6  # field lattice; row 0 holds the title
COMPANIES = ("Northwind Ltd", "Acme Parts", "Blue Fjord AS", "Kestrel & Co", "Orbit Foods")
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I/O: they read as 1/0 in a small font


def _fields(rng: np.random.Generator) -> dict[str, tuple[str, str]]:
    """kind -> (printed label, value) for the asked fields, plus distractors (no kind)."""
    r = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    letters = "".join(_LETTERS[r(0, len(_LETTERS))] for _ in range(2))
    return {
        "invoice": ("Invoice No:", f"INV-{r(1000, 10000)}"),
        "date": ("Date:", f"20{r(18, 30)}-{r(1, 13):02d}-{r(1, 29):02d}"),
        "total": ("Total:", f"{r(10, 10000)}.{r(0, 100):02d}"),
        "account": ("Account:", f"{letters}-{r(1000, 10000)}"),
        "_ref": ("Ref:", str(r(100, 1000))),
        "_phone": ("Phone:", f"555-{r(1000, 10000)}"),
    }


def _where(col: int, row: int) -> str:
    vert = "top" if row <= 2 else ("middle" if row <= 4 else "bottom")
    return f"{vert} {('left', 'centre', 'right')[col]}"


def _draw(rng: np.random.Generator, fields: dict, size: tuple[int, int], fs: int):
    """Title in row 0, one field per random lattice cell below it; returns (image, cells).

    1. the page is a COLS x ROWS lattice of cells (672 x 448: 224 x 74 px cells);
    2. each field takes a distinct cell of rows 1..ROWS-1 and a random x inside it so the
       line fits (text is ~9 px per character at fs = 12, so ~140 px per line);
    3. thin rules under the title and above the last row suggest an invoice layout.
    """
    w, h = size
    cw, ch = w // COLS, h // ROWS
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    f = font(fs)
    d.text((int(rng.integers(fs, cw)), ch // 3), "INVOICE", fill=(0, 0, 0), font=font(2 * fs))
    company = COMPANIES[int(rng.integers(len(COMPANIES)))]
    d.text((w - cw, ch // 3), company, fill=(60, 60, 60), font=f)
    d.line([(fs, ch - 4), (w - fs, ch - 4)], fill=(180, 180, 180))
    d.line([(fs, (ROWS - 1) * ch - 4), (w - fs, (ROWS - 1) * ch - 4)], fill=(220, 220, 220))
    cells = {}
    picks = rng.choice(COLS * (ROWS - 1), size=len(fields), replace=False)
    for (kind, (label, value)), c in zip(fields.items(), picks):
        row, col = divmod(int(c), COLS)
        row += 1
        line = f"{label} {value}"
        tw = int(d.textlength(line, font=f))
        x = col * cw + int(rng.integers(fs // 2, max(fs // 2 + 1, cw - tw - fs // 2)))
        y = row * ch + int(rng.integers(0, max(1, ch - 2 * fs)))
        d.text((x, y), line, fill=(0, 0, 0), font=f)
        cells[kind] = (col, row)
    return img, cells


QUESTIONS = {
    "invoice": "What is the invoice number? Answer with the text exactly as printed.",
    "date": "What is the invoice date? Answer in the format YYYY-MM-DD.",
    "total": "What is the total amount? Answer with a number.",
    "account": "What is the account code? Answer with the code exactly as printed.",
}


def generate(
    seed: int, kind: str | None = None, size: tuple[int, int] = (672, 448), font_size: int | None = None
) -> Sample:
    """font_size None: width / 56, which keeps the text legible only in the tiles."""
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    fs = font_size or max(6, round(size[0] / 56))
    fields = _fields(rng)
    img, cells = _draw(rng, fields, size, fs)
    label, value = fields[kind]
    why = (
        f"The line '{label} {value}' is in the {_where(*cells[kind])} part of the page. "
        f"So the answer is {value}."
    )
    # Totals compare as numbers so "48.2" matches "48.20"; codes and dates compare as text.
    target = {"type": "text", "value": value}
    if kind == "total":
        target = {"type": "number", "value": float(value)}
    return Sample(NAME, kind, [img], QUESTIONS[kind], value, why, target)


FAMILY = Family(NAME, KINDS, generate)
