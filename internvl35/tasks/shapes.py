"""Coloured shapes: count them, name a colour, say where one is relative to another."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from internvl35.tasks.base import Family, Sample, pick_kind, rng_for

NAME = "shapes"
KINDS = ("count", "colour", "position")
SHAPES = ("circle", "square", "triangle")
COLOURS = {  # far apart in RGB so a tiny model separates them from a few pixels
    "red": (220, 30, 30),
    "green": (20, 160, 40),
    "blue": (30, 70, 230),
    "yellow": (235, 190, 0),
    "purple": (140, 40, 180),
}
GRID = 4  # the canvas is a GRID x GRID lattice of cells, at most one shape per cell


@dataclass
class Item:
    colour: str
    shape: str
    cx: int
    cy: int
    side: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def _layout(rng: np.random.Generator, n: int, size: int) -> list[tuple[int, int, int]]:
    """(cx, cy, side) for n shapes in distinct cells.

    1. cell = size // GRID (56 px at 224); side from [30, 44] scaled by size/224;
    2. the centre moves at most (cell - side) / 2 from the cell centre, so shapes stay
       inside their cell and never overlap (224 px: side 40 -> +-8 px).
    """
    cell, scale = size // GRID, size / 224
    out = []
    for c in rng.choice(GRID * GRID, size=n, replace=False):
        side = int(rng.integers(round(30 * scale), round(44 * scale) + 1))
        slack = max(0, (cell - side) // 2)
        r, col = divmod(int(c), GRID)
        cx = col * cell + cell // 2 + int(rng.integers(-slack, slack + 1))
        cy = r * cell + cell // 2 + int(rng.integers(-slack, slack + 1))
        out.append((cx, cy, side))
    return out


def _draw(items: list[Item], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for it in items:
        h = it.side // 2
        box = (it.cx - h, it.cy - h, it.cx + h, it.cy + h)
        fill = COLOURS[it.colour]
        if it.shape == "circle":
            d.ellipse(box, fill=fill)
        elif it.shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(it.cx, it.cy - h), (it.cx + h, it.cy + h), (it.cx - h, it.cy + h)], fill=fill)
    return img


def _layout_of(items: list[Item]) -> list[tuple[tuple[int, int, int, int], str]]:
    """What covers the canvas: (box, "red circle") per shape."""
    return [((it.cx - it.side // 2, it.cy - it.side // 2, it.cx + it.side // 2, it.cy + it.side // 2), it.name)
            for it in items]


def dense(seed: int, size: int = 224) -> tuple[Image.Image, list[tuple[tuple[int, int, int, int], str]]]:
    """A shapes canvas and what covers it, for vision pretraining: (box, "red circle") per shape."""
    items = _scene(rng_for(NAME + "/dense", seed), "count", size)
    return _draw(items, size), _layout_of(items)


def _scene(rng: np.random.Generator, kind: str, size: int) -> list[Item]:
    n = int(rng.integers(3, 7))
    while True:  # position questions need the two named shapes apart on the asked axis
        spots = _layout(rng, n, size)
        a, b = spots[0], spots[1]
        if kind != "position" or (abs(a[0] - b[0]) >= size // 8 and abs(a[1] - b[1]) >= size // 8):
            break
    colours, shapes = list(COLOURS), list(SHAPES)
    items = [
        Item(colours[int(rng.integers(5))], shapes[int(rng.integers(3))], *spot) for spot in spots
    ]
    if kind == "colour":  # items[0] is the only one of its shape type
        for it in items[1:]:
            if it.shape == items[0].shape:
                it.shape = shapes[(shapes.index(it.shape) + int(rng.integers(1, 3))) % 3]
    if kind == "position":  # items[0] and items[1] are distinct, unique (colour, shape) pairs
        while items[1].name == items[0].name:
            items[1].colour = colours[int(rng.integers(5))]
        for it in items[2:]:
            while it.name in (items[0].name, items[1].name):
                it.colour = colours[int(rng.integers(5))]
    return items


def _listing(items: list[Item]) -> str:
    ordered = sorted(items, key=lambda it: (it.cy, it.cx))
    return "The shapes are: " + ", ".join(it.name for it in ordered) + "."


def _count(rng: np.random.Generator, items: list[Item]) -> tuple[str, str, str, dict]:
    ref = items[int(rng.integers(len(items)))]
    mode = int(rng.integers(3))
    if mode == 0:
        what, hits = f"{ref.shape}s", [it for it in items if it.shape == ref.shape]
    elif mode == 1:
        what, hits = f"{ref.colour} shapes", [it for it in items if it.colour == ref.colour]
    else:
        what, hits = f"{ref.name}s", [it for it in items if it.name == ref.name]
    n = len(hits)
    hits.sort(key=lambda it: (it.cy, it.cx))
    why = f"{_listing(items)} The {what}: {', '.join(it.name for it in hits)}. That is {n}."
    q = f"How many {what} are there? Answer with a number."
    return q, str(n), why, {"type": "number", "value": n}


def _colour(items: list[Item]) -> tuple[str, str, str, dict]:
    it = items[0]
    q = f"What colour is the {it.shape}? Answer with one word: {', '.join(COLOURS)}."
    why = f"{_listing(items)} The only {it.shape} is {it.colour}."
    return q, it.colour, why, {"type": "choice", "answers": [it.colour], "options": list(COLOURS)}


def _position(rng: np.random.Generator, items: list[Item]) -> tuple[str, str, str, dict]:
    a, b = items[0], items[1]
    if rng.integers(2) == 0:
        ans = "left" if a.cx < b.cx else "right"
        q = f"Is the {a.name} to the left or to the right of the {b.name}? Answer with left or right."
        why = (
            f"The {a.name} is at x = {a.cx} and the {b.name} at x = {b.cx}. "
            f"{a.cx} {'<' if a.cx < b.cx else '>'} {b.cx}, so the {a.name} is to the {ans}."
        )
        opts = ["left", "right"]
    else:
        ans = "above" if a.cy < b.cy else "below"
        q = f"Is the {a.name} above or below the {b.name}? Answer with above or below."
        why = (
            f"The {a.name} is at y = {a.cy} and the {b.name} at y = {b.cy} (y grows downwards). "
            f"{a.cy} {'<' if a.cy < b.cy else '>'} {b.cy}, so the {a.name} is {ans}."
        )
        opts = ["above", "below"]
    return q, ans, why, {"type": "choice", "answers": [ans], "options": opts}


def generate(seed: int, kind: str | None = None, size: int = 224) -> Sample:
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    items = _scene(rng, kind, size)
    if kind == "count":
        q, ans, why, target = _count(rng, items)
    elif kind == "colour":
        q, ans, why, target = _colour(items)
    else:
        q, ans, why, target = _position(rng, items)
    return Sample(NAME, kind, [_draw(items, size)], q, ans, why, target, _layout_of(items))


FAMILY = Family(NAME, KINDS, generate)
