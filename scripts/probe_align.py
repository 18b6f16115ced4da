"""Probe stage 0b (projector alignment) alone: how much of the ViT's digit perception survives into the words.

From a recipe run's tokenizer and stage-0 ViT (`vision_pretrain.safetensors`), run `align_projector` with the
given steps and learning rate (or load the run's own `align.safetensors` with `--steps 0`), then report
held-out digit-sheet token accuracy under the tied output head (`evaluate_dense` on digit sheets only) and the
share of held-out reading lines whose every glyph token scores its own digit highest (`perceived`, as in
`digits_pixels_vs_words.py`), on the first `--lines` test seeds and on the first 200 (that script's subset,
a harder one). One JSON line.

    python scripts/probe_align.py runs/tiny12 --steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_pixels_vs_words import perceived  # noqa: E402
from probe_digits import load_run  # noqa: E402

from internvl35.api import InternVL  # noqa: E402
from internvl35.tasks import digits  # noqa: E402
from internvl35.tasks.base import split_seeds  # noqa: E402
from internvl35.train.recipe import TINY  # noqa: E402
from internvl35.train.vision_pretrain import (  # noqa: E402
    align_projector, aligned_token_logits, evaluate_dense, label_words, token_px,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="recipe run directory holding tokenizer/ and vision_pretrain.safetensors")
    ap.add_argument("--steps", type=int, default=150, help="alignment steps; 0 loads the run's align.safetensors")
    ap.add_argument("--lr", type=float, default=TINY.align.lr)
    ap.add_argument("--lines", type=int, default=1000, help="held-out reading lines to score perception on")
    a = ap.parse_args()

    tok, config, model = load_run(a.run, stages=("vision_pretrain",) if a.steps else ("vision_pretrain", "align"))
    t0 = time.perf_counter()
    if a.steps:
        align_projector(model, tok, replace(TINY.align, steps=a.steps, lr=a.lr, progress=False))
    seconds = time.perf_counter() - t0
    model.eval()
    cell = token_px(config.vision.patch_size, config.downsample_ratio)
    sheets = evaluate_dense(aligned_token_logits(model, label_words(tok)), ("digits",), config.vision.image_size,
                            cell, n=128)
    lines = [digits.generate(s, "read") for s in split_seeds("test", a.lines)]
    vl = InternVL(model, tok)
    seen, glyphs = perceived(vl, lines), perceived(vl, lines, per_glyph=True)
    print(json.dumps({"steps": a.steps, "lr": a.lr, "seconds": round(seconds, 1),
                      "digit_sheet_tokens": round(sheets["object_token_accuracy"], 4),
                      "line_glyphs": round(sum(glyphs) / len(glyphs), 4), "lines_perceived": sum(seen) / len(seen),
                      "lines_perceived_first_200": sum(seen[:200]) / len(seen[:200])}))


if __name__ == "__main__":
    main()
