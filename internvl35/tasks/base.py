"""The synthetic visual-reasoning world: samples, families, splits.

A *family* (digits, shapes, chart, document, gui, embodied) is a seeded generator of
`Sample`s plus a checker. Everything is a pure function of the seed: the same seed gives
byte-identical images and identical text, so a data set is just a range of seeds.

Splits are disjoint seed ranges:
    train: seeds TRAIN_SEED_START .. TEST_SEED_START - 1   (0 .. 9_999_999)
    test:  seeds TEST_SEED_START ..                        (10_000_000 ..)
Families that draw from a finite pool of real images (digits) also split that pool by
`split_of(seed)`, so test accuracy measures generalisation to unseen images.

`FAMILIES` is loaded on first access (module `__getattr__`), so a family module can import
this one without an import cycle:

    from internvl35.tasks.base import FAMILIES, make_split
    s = FAMILIES["digits"].generate(7)
    FAMILIES["digits"].score(s, s.answer)        # 1.0

Canvas sizes and other knobs are keyword arguments of each module's `generate`; bind them
with `functools.partial` into a new `Family` if the defaults do not fit.
"""

from __future__ import annotations

import importlib
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal

import numpy as np
from PIL import Image, ImageFont

from internvl35.tasks import answers

TRAIN_SEED_START = 0
TEST_SEED_START = 10_000_000
FAMILY_NAMES = ("digits", "shapes", "chart", "document", "gui", "embodied")

Split = Literal["train", "test"]


@dataclass
class Sample:
    family: str
    kind: str
    images: list[Image.Image]
    question: str  # no <image> placeholder: the prompt builder places the image tokens
    answer: str  # short final answer, the direct-style target
    rationale: str  # short derivation from the scene, the thinking-style reasoning
    target: dict  # JSON-able checker spec, see answers.score
    # What covers the (single) image: pixel boxes (x0, y0, x1, y1), x1/y1 exclusive, with dense labels such as
    # "digit 7"; None where the family does not say. Training uses it for symbolic renderings of the scene.
    layout: list[tuple[tuple[int, int, int, int], str]] | None = None


@dataclass(frozen=True)
class Family:
    name: str
    kinds: tuple[str, ...]
    generate: Callable[..., Sample]  # generate(seed, kind=None) -> Sample

    def score(self, sample: Sample, output: str) -> float:
        """1.0 if the free-form model `output` answers `sample` correctly, else 0.0."""
        return answers.score(sample.target, output)


def render_target(sample: Sample, thinking: bool) -> str:
    """The assistant text to train on: the answer, or `<think>rationale</think>` + answer."""
    if thinking:
        return f"<think>{sample.rationale}</think>\n{sample.answer}"
    return sample.answer


def split_of(seed: int) -> Split:
    return "test" if seed >= TEST_SEED_START else "train"


def split_seeds(split: Split, n: int, start: int = 0) -> list[int]:
    """Seeds of samples start .. start+n-1 of a split; train never reaches the test range."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if start < 0 or n < 0:
        raise ValueError("start and n must be >= 0")
    if split == "train" and start + n > TEST_SEED_START:
        raise ValueError(f"train split holds at most {TEST_SEED_START} samples")
    first = TEST_SEED_START if split == "test" else TRAIN_SEED_START
    return list(range(first + start, first + start + n))


def _family(family: str | Family) -> Family:
    return family if isinstance(family, Family) else _families()[family]


def make_split(family: str | Family, split: Split, n: int, start: int = 0) -> list[Sample]:
    fam = _family(family)
    return [fam.generate(s) for s in split_seeds(split, n, start)]


def make_mix(
    families: list[str | Family] | tuple[str | Family, ...] | None,
    split: Split,
    n_per_family: int,
    start: int = 0,
) -> list[Sample]:
    """n_per_family samples of each family (None: all), interleaved round-robin."""
    fams = [_family(f) for f in (families if families is not None else FAMILY_NAMES)]
    per = [make_split(f, split, n_per_family, start) for f in fams]
    return [s for group in zip(*per) for s in group]


# ---- helpers shared by the generators ------------------------------------------------


def rng_for(family: str, seed: int) -> np.random.Generator:
    # Mixing in the family name keeps families independent when they share seeds (make_mix).
    return np.random.default_rng([seed, zlib.crc32(family.encode())])


def pick_kind(rng: np.random.Generator, kinds: tuple[str, ...], kind: str | None) -> str:
    if kind is None:
        return kinds[int(rng.integers(len(kinds)))]
    if kind not in kinds:
        raise ValueError(f"unknown kind {kind!r}, expected one of {kinds}")
    return kind


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font (no file on disk needed), cached per size."""
    return ImageFont.load_default(size=size)


# ---- the registry, loaded lazily ------------------------------------------------------


@lru_cache(maxsize=1)
def _families() -> dict[str, Family]:
    registry = {}
    for name in FAMILY_NAMES:
        fam = importlib.import_module(f"internvl35.tasks.{name}").FAMILY
        registry[fam.name] = fam
    return registry


def __getattr__(name: str):
    # PEP 562: `FAMILIES` is built on first access so family modules can import base freely.
    if name == "FAMILIES":
        return _families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
