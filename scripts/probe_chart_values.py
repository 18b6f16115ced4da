"""Can the ViT tell a chart bar's value where its printed name is? Stage 0 on charts alone, name and value scored apart.

Trains a stage-0 ViT (a run's `vision_pretrain.safetensors`, or a random one) and a fresh linear head on chart
scenes only (`chart.dense`: the token under each bar's printed name is labelled "chart <name> <value>"), then
scores held-out charts: at the name tokens, is the name right, is the value right? With `--bar-tops`, the token
holding each bar's top edge is labelled as well, where the value is a local matter (the token's row and where the
edge crosses it) and the name is not. One line per kind of token.

    python scripts/probe_chart_values.py --vit runs/s10/vision_pretrain.safetensors --steps 150 [--bar-tops]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internvl35.model.projector import pixel_shuffle  # noqa: E402
from internvl35.model.vision import InternViT  # noqa: E402
from internvl35.tasks import chart  # noqa: E402
from internvl35.tasks.base import TEST_SEED_START  # noqa: E402
from internvl35.train import vision_pretrain as vp  # noqa: E402
from internvl35.train.recipe import TINY  # noqa: E402

def with_bar_tops(seed: int, size: int = 224):
    """`chart.dense`, plus a point at each bar's top edge labelled like the bar's name."""
    image, layout = chart.dense(seed, size)
    tops = []
    for (x0, _, x1, _), name in layout:
        top = chart.bar_top(int(name.split()[-1]), size)
        tops.append((((x0 + x1) // 2 - 1, top, (x0 + x1) // 2 + 1, top + 1), name))
    return image, layout + tops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vit", default=None, help="a run's vision_pretrain.safetensors (default: a random ViT)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bar-tops", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    vit = InternViT(TINY.vision)
    if a.vit:
        vit.load_state_dict({k.removeprefix("vision_model."): v for k, v in load_file(a.vit).items()})
    if a.bar_tops:
        vp.SCENES["chart"] = with_bar_tops
    cell = vp.token_px(TINY.vision.patch_size, 0.5)
    head = nn.Linear(vp._token_dim(vit, 0.5), len(vp.LABELS))

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return head(pixel_shuffle(vit(pixels), 0.5))

    cfg = vp.VisionPretrainConfig(steps=a.steps, batch_size=a.batch, lr=1e-3, warmup_steps=10, families=("chart",))
    start = time.perf_counter()
    vp._train_dense(cfg, [*vit.parameters(), *head.parameters()],
                    lambda p, labels: vp.dense_ce(logits(p), labels, cfg.background_weight), 224, cell, "chart")
    with torch.no_grad():
        pixels, labels = vp.dense_batch(list(range(TEST_SEED_START, TEST_SEED_START + 128)), ("chart",), 224, cell)
        guess = logits(pixels).argmax(-1)
    parts = [name.split()[1:] if name.startswith("chart") else ["-", "-"] for name in vp.LABELS]
    bottom = torch.zeros_like(labels, dtype=torch.bool)
    bottom[:, -(224 // cell):] = True  # the names' row
    for kind, where in (("name tokens", (labels > 0) & bottom), ("bar-top tokens", (labels > 0) & ~bottom)):
        pairs = [(parts[g], parts[t]) for g, t in zip(guess[where].tolist(), labels[where].tolist())]
        if pairs:
            name = sum(g[0] == t[0] for g, t in pairs) / len(pairs)
            value = sum(g[1] == t[1] for g, t in pairs) / len(pairs)
            print(f"{kind} ({len(pairs)}): name {name:.1%}, value {value:.1%}")
    print(f"{a.steps} steps x {a.batch} charts, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
