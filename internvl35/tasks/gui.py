"""GUI screens: a window with labelled text fields and buttons; ground an element or click it.

Conventions (SYSTEM.md section 11): grounding answers `<ref>phrase</ref><box>[[x1, y1, x2,
y2]]</box>` with integers in 0..1000 of width/height; actions are `click(x=0.37, y=0.92)` with
x, y in [0, 1]. The grounding prompt is InternVL's own, word for word.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from internvl35.tasks.base import Family, Sample, font, pick_kind, rng_for

NAME = "gui"
KINDS = ("grounding", "action")
TITLES = ("Sign up", "Settings", "Checkout", "Profile", "Login", "Search")
FIELDS = ("Name", "Email", "Password", "City", "Phone", "Code")
BUTTONS = ("Submit", "Cancel", "Save", "Open", "Delete", "Next", "Back", "Search", "Help", "OK")
BUTTON_COLOURS = ((46, 110, 200), (200, 60, 50), (40, 140, 70), (110, 110, 110))
GROUNDING_PROMPT = (
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"
)

Box = tuple[int, int, int, int]


def _field_row(d: ImageDraw.ImageDraw, rng, name: str, y: int, size: int, s: float) -> Box:
    d.text((round(8 * s), y + round(11 * s)), name, fill=(0, 0, 0), font=font(round(12 * s)), anchor="lm")
    x1 = round(72 * s) + int(rng.integers(0, round(12 * s) + 1))
    x2 = min(size - round(8 * s), x1 + int(rng.integers(round(96 * s), round(136 * s) + 1)))
    box = (x1, y, x2, y + round(22 * s))
    d.rectangle(box, fill=(255, 255, 255), outline=(120, 120, 120), width=max(1, round(s)))
    return box


def _button_row(d: ImageDraw.ImageDraw, rng, labels: list[str], y: int, size: int, s: float) -> list[Box]:
    half, boxes = size // 2, []
    for i, label in enumerate(labels):
        w = int(rng.integers(round(60 * s), round(80 * s) + 1))
        x1 = i * half + int(rng.integers(round(6 * s), max(round(6 * s) + 1, half - w - round(6 * s))))
        box = (x1, y, x1 + w, y + round(24 * s))
        colour = BUTTON_COLOURS[int(rng.integers(len(BUTTON_COLOURS)))]
        d.rounded_rectangle(box, radius=round(5 * s), fill=colour)
        mid = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        d.text(mid, label, fill=(255, 255, 255), font=font(round(12 * s)), anchor="mm")
        boxes.append(box)
    return boxes


def _screen(rng: np.random.Generator, size: int) -> tuple[Image.Image, dict[str, Box]]:
    """Draw a window; return it and phrase -> pixel box of every groundable element.

    1. a title bar of 24 px (at 224 px), then 5 rows of 38 px below it;
    2. 1-3 rows hold a field (label text + input box), 1-2 rows hold one or two buttons
       (a button lives in the left or right half of its row), in a random row order;
    3. all labels in a screen are distinct, so each phrase names exactly one element.
    """
    s = size / 224
    img = Image.new("RGB", (size, size), (242, 242, 242))
    d = ImageDraw.Draw(img)
    bar = round(24 * s)
    d.rectangle((0, 0, size, bar), fill=(40, 50, 70))
    title = TITLES[int(rng.integers(len(TITLES)))]
    d.text((round(8 * s), bar // 2), title, fill=(255, 255, 255), font=font(round(13 * s)), anchor="lm")
    n_fields, n_button_rows = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    fields = [FIELDS[int(i)] for i in rng.choice(len(FIELDS), n_fields, replace=False)]
    per_row = [int(rng.integers(1, 3)) for _ in range(n_button_rows)]
    buttons = [BUTTONS[int(i)] for i in rng.choice(len(BUTTONS), sum(per_row), replace=False)]
    rows = rng.choice(5, n_fields + n_button_rows, replace=False)
    row_h, elems = round(38 * s), {}
    for name, r in zip(fields, rows[:n_fields]):
        elems[f"the {name} input field"] = _field_row(d, rng, name, bar + 8 + int(r) * row_h, size, s)
    for k, r in zip(per_row, rows[n_fields:]):
        labels, buttons = buttons[:k], buttons[k:]
        y = bar + 8 + int(r) * row_h
        for label, box in zip(labels, _button_row(d, rng, labels, y, size, s)):
            elems[f"the {label} button"] = box
    return img, elems


def generate(seed: int, kind: str | None = None, size: int = 224) -> Sample:
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    img, elems = _screen(rng, size)
    phrase = list(elems)[int(rng.integers(len(elems)))]
    x1, y1, x2, y2 = elems[phrase]
    where = f"{phrase[4:]} spans x {x1}-{x2} and y {y1}-{y2} on the {size} x {size} screen."
    if kind == "grounding":
        box = [round(v * 1000 / size) for v in (x1, y1, x2, y2)]
        coords = f"[[{box[0]}, {box[1]}, {box[2]}, {box[3]}]]"
        answer = f"<ref>{phrase}</ref><box>{coords}</box>"
        why = f"The {where} Scaled to 0-1000 that is {coords}."
        target = {"type": "box", "box": box}
        return Sample(NAME, kind, [img], GROUNDING_PROMPT.format(phrase), answer, why, target)
    cx, cy = round((x1 + x2) / 2 / size, 2), round((y1 + y2) / 2 / size, 2)
    answer = f"click(x={cx:.2f}, y={cy:.2f})"
    mid = f"({(x1 + x2) / 2:g}, {(y1 + y2) / 2:g})"
    why = f"The {where} Its centre is {mid} px, that is ({cx:.2f}, {cy:.2f})."
    question = (
        f"Instruction: click {phrase}.\n"
        "Answer with one action, click(x=..., y=...), with x and y as fractions of the screen in [0, 1]."
    )
    target = {"type": "click", "box": [round(v / size, 4) for v in (x1, y1, x2, y2)]}
    return Sample(NAME, kind, [img], question, answer, why, target)


FAMILY = Family(NAME, KINDS, generate)
