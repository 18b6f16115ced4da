"""How well can the digits family's held-out scans be read at all? A small CNN on the raw 8x8 scans.

Trains on the scans the task trains on (`digits.TRAIN_POOL`, the first 1400) and scores the 397 held-out
ones (other writers), with and without random turns, scales and sub-pixel moves of the training scans,
over a few seeds. This bounds what the bundled model's vision could reach per glyph, independent of it
(docs/results.md, E27). About 3.5 minutes on 2 CPU cores with the defaults.

    python scripts/digits_ceiling.py [--steps 2000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from internvl35.tasks.digits import TRAIN_POOL


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(128 * 4, 128), nn.ReLU(), nn.Linear(128, 10))


def vary(scans: Tensor, gen: torch.Generator) -> Tensor:
    """Each scan turned up to ~11 degrees, scaled by 0.9-1.1 and moved up to 0.6 scan pixels each way."""
    n = scans.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * 0.4
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, 0, 1], theta[:, 1, 0] = -scale * torch.sin(angle), scale * torch.sin(angle)
    theta[:, :, 2] = (torch.rand(n, 2, generator=gen) - 0.5) * 0.3  # 0.15 of the half-width (4 px) = 0.6 px
    grid = F.affine_grid(theta, list(scans.shape), align_corners=False)
    return F.grid_sample(scans, grid, align_corners=False)


def scans_and_labels() -> tuple[Tensor, Tensor]:
    """All 1797 scans as (N, 1, 8, 8) ink in [0, 1], and their digits."""
    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32)[:, None] / 16, torch.tensor(d.target)


def held_out_accuracy(scans: Tensor, labels: Tensor, varied: bool, seed: int, steps: int, batch: int = 128) -> float:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    for _ in range(steps):
        i = torch.randint(0, TRAIN_POOL, (batch,), generator=gen)
        x = vary(scans[i], gen) if varied else scans[i]
        loss = F.cross_entropy(model(x), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        return float((model(scans[TRAIN_POOL:]).argmax(-1) == labels[TRAIN_POOL:]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    scans, labels = scans_and_labels()
    for varied in (False, True):
        accs = [held_out_accuracy(scans, labels, varied, s, args.steps) for s in range(args.seeds)]
        mean = sum(accs) / len(accs)
        sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
        print(json.dumps({"varied": varied, "held_out": [round(a, 4) for a in accs], "mean": round(mean, 4),
                          "sd": round(sd, 4)}), flush=True)


if __name__ == "__main__":
    main()
