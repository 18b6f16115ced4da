"""Score a model's digit questions from pixels and from the same scenes written as words, by line length.

    python scripts/digits_pixels_vs_words.py internvl35/assets/internvl35-tiny            # the shipped model
    python scripts/digits_pixels_vs_words.py MODEL_DIR --state CKPT/model.safetensors     # another state, same config

Held-out seeds 0..n-1 of the test split for each kind (read, largest, sum), greedy. "Words" replaces every
image token by the word of what covers it (`train/data.py`, `symbolic_example`): perfect perception,
so it measures the language model's own skill. For reading, "perceived" is the share of lines whose image
tokens each score their own digit's word highest under the tied output head (stage 0b's probe): the lines
perception gets right; "read | perceived" is the pixel accuracy on those lines alone, the hand-over's loss.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internvl35.api import InternVL  # noqa: E402
from internvl35.data.inputs import build_inputs  # noqa: E402
from internvl35.data.tiling import to_tensor  # noqa: E402
from internvl35.engine.sampling import SamplingParams  # noqa: E402
from internvl35.tasks import digits  # noqa: E402
from internvl35.tasks.base import FAMILIES, Sample, split_seeds  # noqa: E402
from internvl35.train.data import symbolic_example  # noqa: E402
from internvl35.train.vision_pretrain import LABEL_ID, label_words, token_px  # noqa: E402

PARAMS = SamplingParams(max_new_tokens=12)  # greedy; the longest digit answer is a few tokens


def answer_from_pixels(vl: InternVL, samples: list[Sample]) -> list[str]:
    return vl.batch_chat([s.question for s in samples], [s.images for s in samples], params=PARAMS)


def answer_from_words(vl: InternVL, samples: list[Sample]) -> list[str]:
    """The same questions with each image token written as the word of what covers it."""
    tok, config = vl.tokenizer, vl.model.config
    words = label_words(tok)
    prompts = [symbolic_example(build_inputs(tok, config, s.question, s.images), s, words, config).input_ids
               for s in samples]
    return [tok.decode(ids) for ids in vl.generate(prompts, PARAMS)]


@torch.no_grad()
def perceived(vl: InternVL, samples: list[Sample], per_glyph: bool = False) -> list[bool]:
    """Per line: does each glyph's image token score its own label's word highest among background and digits?
    With `per_glyph`, the answer for every glyph of every line instead, in reading order."""
    model, config = vl.model, vl.model.config
    words = label_words(vl.tokenizer)[: LABEL_ID["digit 9"] + 1]  # ".", "0", ..., "9"
    cell = token_px(config.vision.patch_size, config.downsample_ratio)
    per_row = config.vision.image_size // cell
    feats = model.encode_images(to_tensor([s.images[0] for s in samples])).embeds
    guess = F.linear(feats, model.language_model.output_weight[words]).argmax(-1).view(len(samples), -1)
    right = [[int(guess[i, (y0 // cell) * per_row + x0 // cell]) == LABEL_ID[label] for (x0, y0, _, _), label in s.layout]
             for i, s in enumerate(samples)]
    return [ok for line in right for ok in line] if per_glyph else [all(line) for line in right]


def scores(samples: list[Sample], outputs: list[str]) -> list[float]:
    return [FAMILIES["digits"].score(s, o) for s, o in zip(samples, outputs)]


def accuracy(samples: list[Sample], outputs: list[str]) -> float:
    """Mean score; NaN for no samples (e.g. no line perceived right)."""
    return sum(scores(samples, outputs)) / len(samples) if samples else float("nan")


def accuracy_where(samples: list[Sample], outputs: list[str], keep: list[bool]) -> float:
    """Mean score over the samples whose `keep` is true."""
    kept = [(s, o) for s, o, k in zip(samples, outputs, keep) if k]
    return accuracy([s for s, _ in kept], [o for _, o in kept])


def perception(vl: InternVL, samples: list[Sample], outputs: list[str]) -> dict[str, float]:
    """The share of reading lines perceived right, and the pixel answers' accuracy on those lines alone."""
    seen = perceived(vl, samples)
    return {"perceived": sum(seen) / len(seen), "read_given_perceived": accuracy_where(samples, outputs, seen)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model directory")
    ap.add_argument("--state", default=None, help="a full model state (safetensors) to load over it")
    ap.add_argument("--n", type=int, default=200, help="held-out samples per kind")
    ap.add_argument("--kinds", default="read,largest,sum", help="digit kinds to score, comma-separated")
    a = ap.parse_args()
    vl = InternVL.from_pretrained(a.model)
    if a.state:
        vl.model.load_state_dict(load_file(a.state))
    for kind in a.kinds.split(","):
        samples = [digits.generate(s, kind) for s in split_seeds("test", a.n)]
        pixels = answer_from_pixels(vl, samples)
        by_length: dict[int, list[float]] = {}
        for s, score in zip(samples, scores(samples, pixels)):
            by_length.setdefault(len(s.layout), []).append(score)
        lengths = " / ".join(f"{n}: {sum(v) / len(v):.0%}" for n, v in sorted(by_length.items()))
        words = answer_from_words(vl, samples)
        print(f"{kind}: pixels {accuracy(samples, pixels):.1%}, words {accuracy(samples, words):.1%}; "
              f"pixels by number of digits {lengths}")
        if kind == "read":
            split = perception(vl, samples, pixels)
            print(f"read: perceived {split['perceived']:.1%}; read | perceived {split['read_given_perceived']:.1%}")


if __name__ == "__main__":
    main()
