"""Can a model's language model learn a task family from its scenes written as words? (docs/results.md, E49.)

Each training example is the family's train sample written symbolically (`train/data.py`, `symbolic_example`: every
image token the word of what covers it, "7" or "."), in the chat format; only the language model's layers train
(embeddings frozen), with AdamW, 20 warm-up steps and a cosine decay. Every 50 steps: the share of held-out samples
(the first `--n-test` test seeds) whose whole answer is right, teacher-forced, per kind. Needs a family whose samples
can be written as words (digits, chart, document).

    python scripts/family_from_words.py --family document --steps 300
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internvl35.checkpoint import load_model  # noqa: E402
from internvl35.data.inputs import build_inputs  # noqa: E402
from internvl35.data.tokenizer import ChatTokenizer  # noqa: E402
from internvl35.model.attention import causal_input  # noqa: E402
from internvl35.tasks.base import FAMILIES, split_seeds  # noqa: E402
from internvl35.train.data import symbolic_example  # noqa: E402
from internvl35.train.vision_pretrain import label_words  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "internvl35" / "assets" / "internvl35-tiny"
Example = tuple[list[int], list[int], str]  # input ids, labels, kind


def words_example(model, tokenizer: ChatTokenizer, words: torch.Tensor, family: str, seed: int) -> Example:
    sample = FAMILIES[family].generate(seed)
    inputs = build_inputs(tokenizer, model.config, sample.question, sample.images, answer=sample.answer)
    ex = symbolic_example(inputs, sample, words, model.config)
    return ex.input_ids, ex.labels, sample.kind


def forward(model, batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows: logits (B, T, V) and labels (B, T)."""
    lm, T = model.language_model, max(len(ids) for ids, _, _ in batch)
    ids = torch.tensor([ids + [0] * (T - len(ids)) for ids, _, _ in batch])
    labels = torch.tensor([lab + [-100] * (T - len(lab)) for _, lab, _ in batch])
    hidden, _ = lm.model(lm.model.embed_tokens(ids), causal_input(len(batch), T))
    return lm.logits(hidden), labels


@torch.no_grad()
def accuracy(model, test: list[Example], kinds: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for kind in kinds:
        of_kind = [ex for ex in test if ex[2] == kind]
        if not of_kind:
            continue
        logits, labels = forward(model, of_kind)
        right = (logits[:, :-1].argmax(-1) == labels[:, 1:]) | (labels[:, 1:] == -100)
        out[kind] = round(float(right.all(-1).float().mean()), 3)
    return out


def language_layers(model) -> list[torch.nn.Parameter]:
    """Freeze the model; return the language model's layers (not its embeddings), made trainable."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for name, p in model.language_model.named_parameters() if "embed" not in name]
    for p in params:
        p.requires_grad_(True)
    return params


def train_layers(params: list[torch.nn.Parameter], step_logits: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                 steps: int, lr: float, every: int, report: Callable[[int, float, float], None]) -> None:
    """AdamW (no weight decay), 20 warm-up steps then cosine to 0, gradients clipped at 1; `step_logits(step)` gives
    that step's (logits, labels); `report(step, loss, seconds)` every `every` steps."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + np.cos(np.pi * step / steps))
        logits, labels = step_logits(step)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        if (step + 1) % every == 0:
            report(step + 1, loss.item(), time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="document")
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = load_model(args.model, dtype=torch.float32)
    tokenizer = ChatTokenizer.from_dir(args.model)
    words = label_words(tokenizer)
    make = lambda seed: words_example(model, tokenizer, words, args.family, seed)  # noqa: E731
    test, kinds = [make(s) for s in split_seeds("test", args.n_test)], FAMILIES[args.family].kinds
    params = language_layers(model)
    print(f"{args.family} from words; before: {accuracy(model, test, kinds)}", flush=True)
    train_layers(params, lambda step: forward(model, [make(s) for s in range(step * args.batch,
                                                                            (step + 1) * args.batch)]),
                 args.steps, args.lr, 50, lambda step, loss, seconds: print(
                     f"step {step} loss {loss:.3f} {seconds:.0f} s {accuracy(model, test, kinds)}", flush=True))


if __name__ == "__main__":
    main()
