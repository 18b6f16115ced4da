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

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_pixels_vs_words import perceived  # noqa: E402

from internvl35.api import InternVL  # noqa: E402
from internvl35.checkpoint import build_model  # noqa: E402
from internvl35.data.tokenizer import ChatTokenizer  # noqa: E402
from internvl35.model.projector import pixel_shuffle  # noqa: E402
from internvl35.tasks import digits  # noqa: E402
from internvl35.tasks.base import split_seeds  # noqa: E402
from internvl35.train.recipe import TINY, model_config  # noqa: E402
from internvl35.train.vision_pretrain import align_projector, evaluate_dense, label_words, token_px  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="recipe run directory holding tokenizer/ and vision_pretrain.safetensors")
    ap.add_argument("--steps", type=int, default=150, help="alignment steps; 0 loads the run's align.safetensors")
    ap.add_argument("--lr", type=float, default=TINY.align.lr)
    ap.add_argument("--lines", type=int, default=1000, help="held-out reading lines to score perception on")
    a = ap.parse_args()

    tok = ChatTokenizer.from_dir(Path(a.run) / "tokenizer")
    config = model_config(TINY, tok)
    torch.manual_seed(0)
    model = build_model(config)
    model.load_state_dict(load_file(str(Path(a.run) / "vision_pretrain.safetensors")), strict=False)
    t0 = time.perf_counter()
    if a.steps:
        align_projector(model, tok, replace(TINY.align, steps=a.steps, lr=a.lr, progress=False))
    else:
        model.load_state_dict(load_file(str(Path(a.run) / "align.safetensors")), strict=False)
    seconds = time.perf_counter() - t0
    model.eval()
    targets = label_words(tok)

    @torch.no_grad()
    def token_logits(pixels: torch.Tensor) -> torch.Tensor:
        feats = pixel_shuffle(model.vision_model(pixels), config.downsample_ratio)
        return F.linear(model.mlp1(feats), model.language_model.output_weight)[..., targets]

    cell = token_px(config.vision.patch_size, config.downsample_ratio)
    sheets = evaluate_dense(token_logits, ("digits",), config.vision.image_size, cell, n=128)
    lines = [digits.generate(s, "read") for s in split_seeds("test", a.lines)]
    vl = InternVL(model, tok)
    seen, glyphs = perceived(vl, lines), perceived(vl, lines, per_glyph=True)
    print(json.dumps({"steps": a.steps, "lr": a.lr, "seconds": round(seconds, 1),
                      "digit_sheet_tokens": round(sheets["object_token_accuracy"], 4),
                      "line_glyphs": round(sum(glyphs) / len(glyphs), 4), "lines_perceived": sum(seen) / len(seen),
                      "lines_perceived_first_200": sum(seen[:200]) / len(seen[:200])}))


if __name__ == "__main__":
    main()
