"""Score a model's questions of one family from pixels and from the same scenes written as words, with its answers.

    python scripts/pixels_vs_words.py MODEL_DIR --family chart [--state CKPT/model.safetensors] [--n 100]

Held-out seeds 0..n-1 of the test split for each kind, greedy. "Words" writes every image token as the word of
what covers it (`train/data.py`, `symbolic_example`), which for shapes needs a tokenizer with the family's own
tokens (`Recipe.shape_tokens`); with any other tokenizer only the pixel rows are printed. "Perceived" is the share
of labelled image tokens (a shape, a chart's handwritten value) whose features score
their own label's word highest under the tied output head, among the background and the family's labels: what
perception hands the language model. The most frequent answers show whether a model reads the scene or repeats
one answer. For digits, `scripts/digits_pixels_vs_words.py` also splits reading by line length.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_pixels_vs_words import answer_from_pixels, answer_from_words  # noqa: E402

from internvl35.api import InternVL  # noqa: E402
from internvl35.data.tiling import to_tensor  # noqa: E402
from internvl35.tasks.base import FAMILIES, Sample, split_seeds  # noqa: E402
from internvl35.train.data import symbolic_fits  # noqa: E402
from internvl35.train.vision_pretrain import (  # noqa: E402
    DIGIT_LABELS, LABEL_ID, SHAPE_LABELS, exact_labels, label_words, patch_labels, token_px,
)

FAMILY_LABELS = {"digits": DIGIT_LABELS, "shapes": SHAPE_LABELS, "chart": DIGIT_LABELS}


def writable(vl: InternVL, samples: list[Sample]) -> bool:
    """Whether every sample can be written as words: a one-tile layout whose labels each have a word of their own."""
    exact = exact_labels(vl.tokenizer)
    return all(symbolic_fits(s, vl.model.config) and all(exact[LABEL_ID[name]] for _, name in s.layout)
               for s in samples)


@torch.no_grad()
def perceived(vl: InternVL, samples: list[Sample], family: str) -> float:
    """The share of the samples' labelled tokens that score their own label's word highest (see the docstring)."""
    config = vl.model.config
    candidates = torch.tensor([LABEL_ID["background"], *(LABEL_ID[name] for name in FAMILY_LABELS[family])])
    words = label_words(vl.tokenizer)[candidates]
    feats = vl.model.encode_images(to_tensor([s.images[0] for s in samples])).embeds
    feats = feats.reshape(len(samples), -1, feats.shape[-1])
    guess = candidates[F.linear(feats, vl.model.language_model.output_weight[words]).argmax(-1)]
    cell = token_px(config.vision.patch_size, config.downsample_ratio)
    labels = torch.stack([torch.from_numpy(patch_labels(s.layout, config.vision.image_size, cell)) for s in samples])
    covered = labels > 0
    return float((guess[covered] == labels[covered]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--family", default="shapes", choices=sorted(FAMILY_LABELS))
    ap.add_argument("--state", default=None, help="a full model state (safetensors) to load over it")
    ap.add_argument("--n", type=int, default=100)
    a = ap.parse_args()
    vl = InternVL.from_pretrained(a.model)
    if a.state:
        vl.model.load_state_dict(load_file(a.state))
    family = FAMILIES[a.family]
    for kind in family.kinds:
        samples = [family.generate(seed, kind) for seed in split_seeds("test", a.n)]
        ways = [("words", answer_from_words)] if writable(vl, samples) else []
        for name, answer in [*ways, ("pixels", answer_from_pixels)]:
            outputs = answer(vl, samples)
            score = sum(family.score(s, o) for s, o in zip(samples, outputs)) / len(samples)
            common = collections.Counter(o.strip()[:10] for o in outputs).most_common(4)
            print(f"{kind:9s} {name:7s} {100 * score:5.1f}%  most frequent answers: {common}")
        if all(symbolic_fits(s, vl.model.config) for s in samples):
            print(f"{kind:9s} perceived {100 * perceived(vl, samples, a.family):5.1f}% of the labelled tokens")


if __name__ == "__main__":
    main()
