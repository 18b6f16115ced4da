"""Probe how fast the tiny model learns the digit questions: SFT from a recipe run's stage 0/0b weights.

Loads the tokenizer, `vision_pretrain.safetensors` and `align.safetensors` of a run directory (written by
`internvl35 train recipe tiny --out RUN`), optionally a full state (`--init`, e.g. a probe's checkpoint),
trains on a digits mix for `--steps` steps and, every `--every` steps, scores `--n` held-out samples of each
digit kind from pixels, and the reading and sum questions also written as words (`words_read`, `words_sum`,
the symbolic rendering of `train/data.py`). One JSON line per evaluation. The runs in docs/results.md:

    python scripts/probe_digits.py RUN /tmp/e4 --symbolic 1 --freeze vit,mlp --kinds read --steps 300
    python scripts/probe_digits.py RUN /tmp/e6 --freeze vit --init /tmp/e4/checkpoints/step-000300/model.safetensors \\
        --start-example 100000 --steps 200 --every 50
    python scripts/probe_digits.py RUN /tmp/e7 --freeze vit --start-example 100000 --steps 200 --every 50
    python scripts/probe_digits.py RUN /tmp/e11 --symbolic 1 --freeze vit,mlp --kinds read --n 100 --max-train-digits 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_pixels_vs_words import accuracy, accuracy_where, answer_from_pixels, answer_from_words  # noqa: E402

from internvl35.api import InternVL  # noqa: E402
from internvl35.checkpoint import build_model  # noqa: E402
from internvl35.config import InternVLConfig  # noqa: E402
from internvl35.data.tokenizer import ChatTokenizer  # noqa: E402
from internvl35.model.internvl import InternVLModel  # noqa: E402
from internvl35.tasks import digits  # noqa: E402
from internvl35.tasks.base import split_seeds  # noqa: E402
from internvl35.train.data import TaskMix, TaskSource  # noqa: E402
from internvl35.train.recipe import TINY, model_config  # noqa: E402
from internvl35.train.sft import SFTConfig, SFTTrainer  # noqa: E402


def load_run(run: str, state: str | None = None, stages: tuple[str, ...] = ("vision_pretrain", "align"),
             ) -> tuple[ChatTokenizer, InternVLConfig, InternVLModel]:
    """A recipe run's tokenizer and a TINY model with the run's weights of `stages` (default stage 0 and 0b),
    then `state` (a full model state, e.g. a probe's or a stage's checkpoint) over them when given."""
    tok = ChatTokenizer.from_dir(Path(run) / "tokenizer")
    config = model_config(TINY, tok)
    torch.manual_seed(0)
    model = build_model(config)
    for stage in stages:
        model.load_state_dict(load_file(str(Path(run) / f"{stage}.safetensors")), strict=False)
    if state:
        model.load_state_dict(load_file(state))
    return tok, config, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="recipe run directory holding tokenizer/, vision_pretrain and align weights")
    ap.add_argument("out", help="probe output directory (checkpoints, metrics)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--symbolic", type=float, default=0.0, help="share of digit scenes written as words")
    ap.add_argument("--kinds", default="", help="only these digit kinds, comma-separated (default: all, uniform)")
    ap.add_argument("--freeze", default="", help="parts to freeze: vit, mlp, llm, embed")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--batch", type=int, default=24, help="examples per optimizer step")
    ap.add_argument("--init", default=None, help="a full model state to start from")
    ap.add_argument("--start-example", type=int, default=0)
    ap.add_argument("--n", type=int, default=40, help="held-out samples per kind")
    ap.add_argument("--max-train-digits", type=int, default=4,
                    help="train lines hold 2..this many digits (the task, and every test line, has 2-4)")
    a = ap.parse_args()

    tok, config, model = load_run(a.run, a.init)
    # "Only these kinds" is a kind weight far above the others' 1 (0 is not a valid weight).
    kinds = [k for k in a.kinds.split(",") if k]
    lengthen = () if a.max_train_digits == 4 else tuple((f"digits/{k}", {"max_digits": a.max_train_digits})
                                                        for k in digits.KINDS)
    mix = TaskMix(families=("digits",), thinking_ratio=0.25, symbolic_ratio=a.symbolic,
                  kind_weights=tuple((f"digits/{k}", 1e9) for k in kinds), kind_options=lengthen)
    cfg = SFTConfig(out_dir=a.out, steps=a.steps, examples_per_step=a.batch, lr=a.lr, warmup_ratio=0.03,
                    min_lr_ratio=0.05, pack_tokens=1536, rows_per_micro=4, save_every=a.every,
                    lr_scale={"vit": 0.2}, freeze=tuple(f for f in a.freeze.split(",") if f), progress=False,
                    start_example=a.start_example)
    trainer = SFTTrainer(model, TaskSource(tok, config, mix), cfg, pad_id=tok.pad_id)
    test = {k: [digits.generate(s, k) for s in split_seeds("test", a.n)] for k in digits.KINDS}
    for stop in range(a.every, a.steps + 1, a.every):
        t0 = time.perf_counter()
        trainer.run(stop_after=stop)
        t1 = time.perf_counter()
        vl = InternVL(model, tok)
        row: dict = {"step": stop, "train_s": round(t1 - t0, 1)}
        for kind, samples in test.items():
            outs = answer_from_pixels(vl, samples)
            row[kind] = accuracy(samples, outs)
            if kind == "read":
                row["read_examples"] = [(s.answer, o) for s, o in zip(samples[:4], outs)]
        for kind in ("read", "sum"):
            outs = answer_from_words(vl, test[kind])
            row[f"words_{kind}"] = accuracy(test[kind], outs)
            if kind == "read":  # lines where a digit repeats, the case a content lookup gets wrong
                repeated = [len(set(s.answer)) < len(s.answer) for s in test[kind]]
                row["words_read_repeated"] = accuracy_where(test[kind], outs, repeated)
        model.train()
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
