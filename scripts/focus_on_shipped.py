"""Train one more SFT stage (a "focus" stage) on top of the shipped model, with a re-weighted task mix.

    python scripts/focus_on_shipped.py OUT_DIR --weights 3,4,1,1,1,1 [--steps 150] [--lr 5e-4]
    python scripts/focus_on_shipped.py OUT_DIR --weights 0,0,1,0,0,0 --freeze "" --vit-lr-scale 0.2   # ViT trains too
    python scripts/focus_on_shipped.py OUT_DIR --model RUN_MODEL --weights 0,0,1,0,0,0 --symbolic-ratio 1 \
        --freeze vit,mlp,embed     # another model (e.g. a run's state saved as a model directory), charts as words

--weights are the relative weights of digits, shapes, chart, document, gui, embodied. Everything else is stage
1's mix and settings (thinking 25%, half of the digit, chart and document scenes as words, the anchor on the
others, reading 8:1 on 2-8-digit lines, the ViT frozen unless --freeze says otherwise); the example stream continues
where the recipe's stages stopped (47,600
examples), so no example repeats. The model is exported to OUT_DIR/final, in bf16 like the shipped one; score
it with `internvl35 eval --model OUT_DIR/final`. Behind docs/results.md, E42-E43, which ran on the model shipped
then (runs/e38); the offset is computed from the recipe, so it holds for the model the recipe now ships (run2, E50).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internvl35.checkpoint import load_model  # noqa: E402
from internvl35.data.tokenizer import ChatTokenizer  # noqa: E402
from internvl35.train.data import TaskSource  # noqa: E402
from internvl35.train.recipe import TINY, export_model  # noqa: E402
from internvl35.train.sft import SFTConfig, SFTTrainer  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "internvl35" / "assets" / "internvl35-tiny"
# The examples the recipe's warm-up, bridge and stage 1 consumed (47,600), so that this stage's are all new.
SHIPPED_EXAMPLES = sum(fields["steps"] * fields["examples_per_step"]
                       for fields in (TINY.warmup[1], TINY.bridge[1], TINY.sft))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", required=True, help="six relative family weights, comma-separated")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--freeze", default=",".join(TINY.sft["freeze"]),
                        help="parts to freeze, comma-separated (default: stage 1's, the ViT); \"\" trains all")
    parser.add_argument("--vit-lr-scale", type=float, default=None, help="the ViT's learning rate, as a share of --lr")
    parser.add_argument("--model", type=Path, default=SHIPPED, help="the model to train on (default: the shipped one)")
    parser.add_argument("--symbolic-ratio", type=float, default=TINY.mix.symbolic_ratio,
                        help="share of the scenes that can be written as words that are (default: stage 1's)")
    args = parser.parse_args()
    weights = tuple(float(w) for w in args.weights.split(","))
    torch.set_num_threads(2)
    model = load_model(args.model, dtype=torch.float32)
    tokenizer = ChatTokenizer.from_dir(args.model)
    mix = replace(TINY.mix, weights=weights, symbolic_ratio=args.symbolic_ratio)  # stage 1's mix, re-weighted
    stage1 = {k: v for k, v in TINY.sft.items() if k not in ("steps", "lr", "save_every", "freeze")}
    freeze = tuple(part for part in args.freeze.split(",") if part)
    lr_scale = {} if args.vit_lr_scale is None else {"vit": args.vit_lr_scale}
    cfg = SFTConfig(out_dir=str(args.out), steps=args.steps, lr=args.lr, save_every=args.steps,
                    start_example=SHIPPED_EXAMPLES, freeze=freeze, lr_scale=lr_scale, **stage1)
    started = time.perf_counter()
    SFTTrainer(model, TaskSource(tokenizer, model.config, mix, seed=1), cfg, pad_id=tokenizer.pad_id).run()
    print(f"trained in {time.perf_counter() - started:.0f} s")
    meta = {"focus_on_shipped": {"model": str(args.model), "weights": weights, "steps": args.steps, "lr": args.lr,
                                 "freeze": freeze, "lr_scale": lr_scale, "symbolic_ratio": args.symbolic_ratio}}
    export_model(model, tokenizer, args.out / "final", args.out, torch.bfloat16, meta)


if __name__ == "__main__":
    main()
