"""Training examples from the synthetic task families, as a deterministic function of the example index.

Example i picks its family by weight and its style (direct or thinking) from an RNG seeded with
(seed, i), and its sample from the family's train split at seed i, so any step of any run can be
rebuilt exactly on resume, on any machine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from internvl35.config import InternVLConfig
from internvl35.data.image import load_image
from internvl35.data.inputs import build_inputs
from internvl35.data.tiling import jpeg_augment
from internvl35.data.tokenizer import ChatTokenizer
from internvl35.tasks.base import FAMILIES, Sample, render_target, split_seeds
from internvl35.train.packing import TrainExample


@dataclass(frozen=True)
class TaskMix:
    families: tuple[str, ...] = ("digits", "shapes", "chart", "document", "gui", "embodied")
    weights: tuple[float, ...] | None = None  # relative; None = uniform
    thinking_ratio: float = 0.25
    jpeg_ratio: float = 0.0  # fraction of examples re-encoded as JPEG (quality 75-100)

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown task families {unknown}; known: {sorted(FAMILIES)}")
        if self.weights is not None and len(self.weights) != len(self.families):
            raise ValueError(f"{len(self.weights)} weights for {len(self.families)} families")

    def probabilities(self) -> np.ndarray:
        w = np.ones(len(self.families)) if self.weights is None else np.asarray(self.weights, dtype=float)
        return w / w.sum()


class TaskSource:
    """`source(i) -> TrainExample`, the ExampleSource the SFT trainer consumes."""

    def __init__(self, tokenizer: ChatTokenizer, config: InternVLConfig, mix: TaskMix, seed: int = 0) -> None:
        self.tokenizer, self.config, self.mix, self.seed = tokenizer, config, mix, seed
        self._p = mix.probabilities()

    def pick(self, index: int) -> tuple[Sample, bool, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index])
        family = self.mix.families[int(rng.choice(len(self.mix.families), p=self._p))]
        sample = FAMILIES[family].generate(split_seeds("train", 1, index)[0])
        return sample, bool(rng.random() < self.mix.thinking_ratio), rng

    def __call__(self, index: int) -> TrainExample:
        sample, thinking, rng = self.pick(index)
        images = sample.images
        if self.mix.jpeg_ratio and rng.random() < self.mix.jpeg_ratio:
            images = [jpeg_augment(im, rng) for im in images]
        inputs = build_inputs(self.tokenizer, self.config, sample.question, images, thinking=thinking,
                              answer=render_target(sample, thinking))
        return TrainExample(inputs.input_ids, inputs.labels, inputs.pixel_values)


class JsonlSource:
    """Your own data: one JSON object per line, `{"question", "answer", "images"?: [paths], "thinking"?: bool}`.

    Example i is line i mod N (so several epochs are just more steps), fully determined by i.
    Images are loaded (and checked) when the example is built.
    """

    def __init__(self, path: str | Path, tokenizer: ChatTokenizer, config: InternVLConfig) -> None:
        self.tokenizer, self.config, self.path = tokenizer, config, Path(path)
        self.rows = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
                raise ValueError(f"{path}: line {n} needs string fields 'question' and 'answer'")
            self.rows.append(row)
        if not self.rows:
            raise ValueError(f"{path} holds no training examples")

    def __call__(self, index: int) -> TrainExample:
        row = self.rows[index % len(self.rows)]
        base = self.path.parent
        images = [load_image(p if Path(p).is_absolute() else base / p) for p in row.get("images", [])]
        inputs = build_inputs(self.tokenizer, self.config, row["question"], images,
                              thinking=bool(row.get("thinking", False)), answer=row["answer"])
        return TrainExample(inputs.input_ids, inputs.labels, inputs.pixel_values)


def corpus(families: Sequence[str], n_per_family: int = 300) -> list[str]:
    """Texts for training a small model's tokenizer: questions, answers and rationales of the train split."""
    texts = []
    for name in families:
        for seed in split_seeds("train", n_per_family):
            s = FAMILIES[name].generate(seed)
            texts += [s.question, s.answer, render_target(s, thinking=True)]
    return texts
