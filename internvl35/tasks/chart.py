"""Bar charts drawn with PIL: read a bar, compare two bars, add or subtract two bars."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from internvl35.tasks.base import Family, Sample, font, pick_kind, rng_for

NAME = "chart"
KINDS = ("read", "compare", "compute")
LABELS = ("tea", "jam", "oat", "fig", "egg", "pie", "nut", "ham",
          "rye", "cod", "bun", "yam", "pea", "kiwi", "lime", "plum")  # fmt: skip
VMAX = 10  # the value axis's default top: values are 1..VMAX
BAR_COLOURS = ((52, 101, 164), (204, 0, 0), (78, 154, 6), (245, 121, 0), (117, 80, 123))


Box = tuple[int, int, int, int]


def dense_label(label: str, value: int) -> str:
    """The dense label of a bar's printed name, which carries the bar's value: "chart kiwi 7"."""
    return f"chart {label} {value}"


def _plot(size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the plot area in a chart of `size` px (`_draw`, step 1)."""
    s = size / 224
    return round(26 * s), round(16 * s), size - round(8 * s), size - round(24 * s)


def bar_top(value: int, size: int = 224, vmax: int = VMAX) -> int:
    """The y of the top edge of a bar of `value`."""
    _, top, _, bottom = _plot(size)
    return round(bottom - value * (bottom - top) / vmax)


def _draw(labels: list[str], values: list[int], size: int, vmax: int,
          show: bool) -> tuple[Image.Image, list[tuple[Box, str]]]:
    """Axis on the left, bars left to right, labels under the bars; returns the image and its layout: each bar's
    printed name, labelled with that name and the bar's value (`dense_label`), so that an image token there can
    be taught to know both (the one place a question's word meets the bar it asks about).

    1. margins (at 224 px): left 26 for tick labels, bottom 24 for bar labels, top 16 for
       printed values; the plot is then 190 x 184 px;
    2. a value v is a bar of height v * plot_h / vmax from the baseline (vmax 10: 18.4 px
       per unit); ticks and labels every 2 units, faint grid lines every unit;
    3. n bars share the plot width: slot = plot_w / n, bar width = 0.6 * slot, centred.
    """
    s = size / 224
    left, top, right, bottom = _plot(size)
    unit = (bottom - top) / vmax
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    small, label_font = font(max(8, round(11 * s))), font(max(8, round(13 * s)))
    for v in range(vmax + 1):
        y = round(bottom - v * unit)
        d.line([(left, y), (right, y)], fill=(200, 200, 200) if v % 2 == 0 else (235, 235, 235))
        if v % 2 == 0:
            d.text((left - 4, y), str(v), fill=(0, 0, 0), font=small, anchor="rm")
    d.line([(left, top), (left, bottom)], fill=(0, 0, 0), width=2)
    d.line([(left, bottom), (right, bottom)], fill=(0, 0, 0), width=2)
    slot = (right - left) / len(values)
    layout = []
    for i, (lab, v) in enumerate(zip(labels, values)):
        cx = left + (i + 0.5) * slot
        y = bar_top(v, size, vmax)
        d.rectangle([round(cx - 0.3 * slot), y, round(cx + 0.3 * slot), bottom - 1], fill=BAR_COLOURS[i])
        d.text((cx, bottom + 3 * s), lab, fill=(0, 0, 0), font=label_font, anchor="mt")
        x0, y0, x1, y1 = d.textbbox((cx, bottom + 3 * s), lab, font=label_font, anchor="mt")
        layout.append(((round(x0), round(y0), round(x1), round(y1)), dense_label(lab, v)))
        if show:
            d.text((cx, y - 2 * s), str(v), fill=(0, 0, 0), font=small, anchor="mb")
    return img, layout


def _question(rng: np.random.Generator, kind: str, labels: list[str], values: list[int]):
    i, j = (int(k) for k in rng.choice(len(values), size=2, replace=False))
    a, b, va, vb = labels[i], labels[j], values[i], values[j]
    if kind == "read":
        why = f"The {a} bar ends at {va} on the value axis."
        q = f"What is the value of the {a} bar? Answer with a number."
        return q, str(va), why, {"type": "number", "value": va}
    if kind == "compare":
        win, op = (a, ">") if va > vb else (b, "<")
        letter = "A" if win == a else "B"
        why = f"The {a} bar is {va} and the {b} bar is {vb}. {va} {op} {vb}, so {win} is larger: {letter}."
        q = (
            f"Which bar is larger?\nA. {a}\nB. {b}\n"
            "Answer with the option's letter from the given choices directly."
        )
        target = {"type": "choice", "answers": [win], "options": [a, b], "letters": {"A": a, "B": b}}
        return q, letter, why, target
    if rng.integers(2) == 0:
        total = va + vb
        why = f"The {a} bar is {va} and the {b} bar is {vb}. {va} + {vb} = {total}."
        q = f"What is the sum of the {a} and {b} bars? Answer with a number."
        return q, str(total), why, {"type": "number", "value": total}
    if va < vb:
        a, b, va, vb = b, a, vb, va
    why = f"The {a} bar is {va} and the {b} bar is {vb}. {va} - {vb} = {va - vb}."
    q = f"How much larger is the {a} bar than the {b} bar? Answer with a number."
    return q, str(va - vb), why, {"type": "number", "value": va - vb}


def generate(
    seed: int, kind: str | None = None, size: int = 224, vmax: int = VMAX, show_values: bool | None = None
) -> Sample:
    """show_values None: print the values on the bars in half the samples."""
    rng = rng_for(NAME, seed)
    kind = pick_kind(rng, KINDS, kind)
    n = int(rng.integers(3, 6))
    labels = [LABELS[int(k)] for k in rng.choice(len(LABELS), size=n, replace=False)]
    # Distinct values make every comparison well defined.
    values = [int(v) + 1 for v in rng.choice(vmax, size=n, replace=False)]
    show = bool(rng.integers(2)) if show_values is None else show_values
    q, ans, why, target = _question(rng, kind, labels, values)
    image, layout = _draw(labels, values, size, vmax, show)
    return Sample(NAME, kind, [image], q, ans, why, target, layout)


def dense(seed: int, size: int = 224) -> tuple[Image.Image, list[tuple[Box, str]]]:
    """A chart and its layout (`_draw`), for vision pretraining."""
    sample = generate(seed, size=size)
    return sample.images[0], sample.layout


FAMILY = Family(NAME, KINDS, generate)
