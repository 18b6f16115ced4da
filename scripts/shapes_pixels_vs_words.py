"""Score a model's shape questions from pixels and from the same scenes written as words, with its answers.

    python scripts/shapes_pixels_vs_words.py MODEL_DIR [--state CKPT/model.safetensors] [--n 100]

Held-out seeds 0..n-1 of the test split for each kind (colour, count, position), greedy. "Words" writes every
image token as the word of what covers it (`train/data.py`, `symbolic_example`), which needs a tokenizer with a
token per colour + shape (`Recipe.shape_tokens`); with any other tokenizer only the pixel rows are printed.
The most frequent answers show whether a model reads the scene or repeats one answer.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_pixels_vs_words import answer_from_pixels, answer_from_words  # noqa: E402

from internvl35.api import InternVL  # noqa: E402
from internvl35.tasks.base import FAMILIES, split_seeds  # noqa: E402
from internvl35.train.vision_pretrain import exact_labels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--state", default=None, help="a full model state (safetensors) to load over it")
    ap.add_argument("--n", type=int, default=100)
    a = ap.parse_args()
    vl = InternVL.from_pretrained(a.model)
    if a.state:
        vl.model.load_state_dict(load_file(a.state))
    ways = [("pixels", answer_from_pixels)]
    if bool(exact_labels(vl.tokenizer).all()):
        ways.insert(0, ("words", answer_from_words))
    family = FAMILIES["shapes"]
    for kind in family.kinds:
        samples = [family.generate(seed, kind) for seed in split_seeds("test", a.n)]
        for name, answer in ways:
            outputs = answer(vl, samples)
            score = sum(family.score(s, o) for s, o in zip(samples, outputs)) / len(samples)
            common = collections.Counter(o.strip()[:10] for o in outputs).most_common(4)
            print(f"{kind:9s} {name:7s} {100 * score:5.1f}%  most frequent answers: {common}")


if __name__ == "__main__":
    main()
