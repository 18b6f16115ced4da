"""Training examples from the synthetic task families, as a deterministic function of the example index.

Example i picks its family by weight and its style (direct or thinking) from an RNG seeded with
(seed, i), and its sample from the family's train split at seed i, so any step of any run can be
rebuilt exactly on resume, on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from internvl35.config import InternVLConfig
from internvl35.data.chat import IGNORE_INDEX
from internvl35.data.image import load_image
from internvl35.data.inputs import ModelInputs, build_inputs
from internvl35.data.jsonl import read_jsonl
from internvl35.data.tiling import choose_grid, jpeg_augment
from internvl35.data.tokenizer import ChatTokenizer
from internvl35.tasks.base import FAMILIES, Sample, render_target, split_seeds
from internvl35.train.packing import TrainExample
from internvl35.train.vision_pretrain import LABEL_ID, exact_labels, label_words, patch_labels, token_px


@dataclass(frozen=True)
class TaskMix:
    families: tuple[str, ...] = ("digits", "shapes", "chart", "document", "gui", "embodied")
    weights: tuple[float, ...] | None = None  # relative; None = uniform
    thinking_ratio: float = 0.25
    jpeg_ratio: float = 0.0  # fraction of examples re-encoded as JPEG (quality 75-100)
    symbolic_ratio: float = 0.0  # fraction of examples with a layout given as words instead of pixels
    # Families whose pixel examples carry each image token's word (`layout_words`), for the anchor loss
    # (`SFTConfig.anchor_weight`); only one-tile images with a layout have them.
    anchor_families: tuple[str, ...] = ()
    # Relative weights of some kinds within their family, e.g. (("digits/read", 3.0),); unnamed kinds weigh 1.
    kind_weights: tuple[tuple[str, float], ...] = ()
    # Keyword arguments for some kinds' generators, e.g. (("digits/read", {"max_digits": 8}),): longer lines than
    # the task's teach the reading lookup faster (docs/results.md, E11). The test split never sees them.
    kind_options: tuple[tuple[str, dict], ...] = ()

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES]
        unknown += [f for f in self.anchor_families if f not in self.families]
        if unknown:
            raise ValueError(f"unknown task families {unknown}; known: {sorted(FAMILIES)}")
        if self.weights is not None and len(self.weights) != len(self.families):
            raise ValueError(f"{len(self.weights)} weights for {len(self.families)} families")
        known = {f"{f}/{k}" for f in self.families for k in FAMILIES[f].kinds}
        for what, named in (("kind weights", self.kind_weights), ("kind options", self.kind_options)):
            unknown = [name for name, _ in named if name not in known]
            if unknown:
                raise ValueError(f"{what} for {unknown}, which no family of this mix has")

    def probabilities(self) -> np.ndarray:
        w = np.ones(len(self.families)) if self.weights is None else np.asarray(self.weights, dtype=float)
        return w / w.sum()

    def kind_probabilities(self, family: str) -> np.ndarray | None:
        """Probabilities of the family's kinds, or None to leave the choice to the family (uniform)."""
        named = {name.split("/", 1)[1]: w for name, w in self.kind_weights if name.startswith(family + "/")}
        if not named and not any(name.startswith(family + "/") for name, _ in self.kind_options):
            return None  # with options for some kind, the kind is drawn here, before the generator runs
        w = np.array([named.get(k, 1.0) for k in FAMILIES[family].kinds])
        return w / w.sum()


class TaskSource:
    """`source(i) -> TrainExample`, the ExampleSource the SFT trainer consumes."""

    def __init__(self, tokenizer: ChatTokenizer, config: InternVLConfig, mix: TaskMix, seed: int = 0) -> None:
        self.tokenizer, self.config, self.mix, self.seed = tokenizer, config, mix, seed
        self._p = mix.probabilities()
        self._kind_p = {family: mix.kind_probabilities(family) for family in mix.families}
        self._options = dict(mix.kind_options)
        self._words = label_words(tokenizer) if mix.symbolic_ratio or mix.anchor_families else None
        self._exact = exact_labels(tokenizer).tolist()

    def pick(self, index: int) -> tuple[Sample, bool, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index])
        family = self.mix.families[int(rng.choice(len(self.mix.families), p=self._p))]
        kinds, p = FAMILIES[family].kinds, self._kind_p[family]
        kind = None if p is None else kinds[int(rng.choice(len(kinds), p=p))]
        sample = FAMILIES[family].generate(split_seeds("train", 1, index)[0], kind,
                                           **self._options.get(f"{family}/{kind}", {}))
        return sample, bool(rng.random() < self.mix.thinking_ratio), rng

    def __call__(self, index: int) -> TrainExample:
        sample, thinking, rng = self.pick(index)
        images = sample.images
        if self.mix.jpeg_ratio and rng.random() < self.mix.jpeg_ratio:
            images = [jpeg_augment(im, rng) for im in images]
        inputs = build_inputs(self.tokenizer, self.config, sample.question, images, thinking=thinking,
                              answer=render_target(sample, thinking))
        # Written as words or anchored only where every label has a word of its own (not shapes read as a colour).
        fits = (self._words is not None and symbolic_fits(sample, self.config)
                and all(self._exact[LABEL_ID[name]] for _, name in sample.layout))
        if fits and self.mix.symbolic_ratio and rng.random() < self.mix.symbolic_ratio:
            return symbolic_example(inputs, sample, self._words, self.config)
        anchored = fits and sample.family in self.mix.anchor_families
        return TrainExample(inputs.input_ids, inputs.labels, inputs.pixel_values,
                            layout_words(inputs, sample, self._words, self.config) if anchored else None)


def _tile_grid(sample: Sample, config: InternVLConfig) -> tuple[int, int] | None:
    """The sample's (cols, rows) of tiles when it can be written symbolically, else None: a layout, one image, and
    the tiler cuts that image into whole tiles without resizing it, so each token covers the pixels its layout
    cell names (a 224-px digits canvas: 1 x 1; a 448-px document page: 2 x 2, then a thumbnail)."""
    if sample.layout is None or len(sample.images) != 1 or not config.dynamic_image_size:
        return None
    (width, height), tile = sample.images[0].size, config.vision.image_size
    cols, rows = choose_grid(width, height, tile, config.min_dynamic_patch, config.max_dynamic_patch)
    return (cols, rows) if (cols * tile, rows * tile) == (width, height) else None


def symbolic_fits(sample: Sample, config: InternVLConfig) -> bool:
    """Whether the sample can be written symbolically (`_tile_grid`)."""
    return _tile_grid(sample, config) is not None


def token_labels(sample: Sample, config: InternVLConfig) -> np.ndarray:
    """Label ids (`vision_pretrain.LABELS`) of the sample's image tokens in the order the model gets them: each tile's
    cells row-major, tiles row-major, then the thumbnail's cells, all background: at half the scale or less a
    thumbnail token holds parts of several things, and no one word names it. The sample must fit (`symbolic_fits`)."""
    grid = _tile_grid(sample, config)
    if grid is None:
        raise ValueError("a symbolic rendering needs a layout and one image cut into whole "
                         f"{config.vision.image_size}-px tiles")
    (cols, rows), tile = grid, config.vision.image_size
    cell = token_px(config.vision.patch_size, config.downsample_ratio)
    parts = []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * tile, r * tile
            inside = [((bx0 - x0, by0 - y0, bx1 - x0, by1 - y0), name) for (bx0, by0, bx1, by1), name in sample.layout
                      if x0 <= (bx0 + bx1) / 2 < x0 + tile and y0 <= (by0 + by1) / 2 < y0 + tile]
            parts.append(patch_labels(inside, tile, cell))
    if cols * rows > 1 and config.use_thumbnail:
        parts.append(np.zeros((tile // cell) ** 2, dtype=np.int64))
    return np.concatenate(parts)


def layout_words(inputs: ModelInputs, sample: Sample, words: Tensor, config: InternVLConfig) -> list[int]:
    """Aligned with inputs.input_ids: at each image token the word of what covers it ("7" for a 7, "." for
    background), IGNORE_INDEX elsewhere. The words are the ones stage 0b aligns the image tokens with; the sample
    must fit (`symbolic_fits`)."""
    labels = token_labels(sample, config)
    slots = [i for i, t in enumerate(inputs.input_ids) if t == config.image_token_id]
    if len(slots) != labels.size:
        raise ValueError(f"{len(slots)} image tokens but a {labels.size}-token layout")
    out = [IGNORE_INDEX] * len(inputs.input_ids)
    for i, label in zip(slots, labels):
        out[i] = int(words[label])
    return out


def symbolic_example(inputs: ModelInputs, sample: Sample, words: Tensor, config: InternVLConfig) -> TrainExample:
    """The sample with each image token replaced by the word of what covers it (`layout_words`).

    The language model then learns the task's logic on perfect perception, with no pixels and no vision
    tower (about twice as many examples per second).
    """
    named = layout_words(inputs, sample, words, config)
    ids = [t if w == IGNORE_INDEX else w for t, w in zip(inputs.input_ids, named)]
    return TrainExample(ids, inputs.labels, None)


class JsonlSource:
    """Your own data: one JSON object per line, `{"question", "answer", "images"?: [paths], "thinking"?: bool}`.

    Example i is line i mod N (so several epochs are just more steps), fully determined by i.
    Images are loaded (and checked) when the example is built.
    """

    def __init__(self, path: str | Path, tokenizer: ChatTokenizer, config: InternVLConfig) -> None:
        self.tokenizer, self.config, self.path = tokenizer, config, Path(path)
        self.rows = [row for _, row in read_jsonl(self.path, _check_example)]
        if not self.rows:
            raise ValueError(f"{path} holds no training examples")

    def __call__(self, index: int) -> TrainExample:
        row = self.rows[index % len(self.rows)]
        base = self.path.parent
        images = [load_image(p if Path(p).is_absolute() else base / p) for p in row.get("images", [])]
        inputs = build_inputs(self.tokenizer, self.config, row["question"], images,
                              thinking=bool(row.get("thinking", False)), answer=row["answer"])
        return TrainExample(inputs.input_ids, inputs.labels, inputs.pixel_values)


def _check_example(row: object) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise ValueError("needs string fields 'question' and 'answer'")
    return row


def corpus(families: Sequence[str], n_per_family: int = 300) -> list[str]:
    """Texts for training a small model's tokenizer: questions, answers and rationales of the train split."""
    texts = []
    for name in families:
        for seed in split_seeds("train", n_per_family):
            s = FAMILIES[name].generate(seed)
            texts += [s.question, s.answer, render_target(s, thinking=True)]
    return texts
