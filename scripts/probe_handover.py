"""Probe a hand-over by distillation: pixels taught to put the language model where the words put it.

With the language model frozen, mlp1 (and the ViT, at a fifth of the rate) train so that the language
model's hidden states at every layer, on a digit line given as pixels, match its hidden states on the same
line written as words (`train/data.py`, `symbolic_example`), which the words warm-up taught it to read.
The loss is the squared error summed over the layers' outputs at every position, relative to the words
states' energy; no answer tokens are needed. Every `--every` steps it scores 200 held-out reading
questions from pixels, the share of lines perception gets right, and reading on those lines alone
(`digits_pixels_vs_words.perception`). One JSON line per evaluation. E22 in docs/results.md:

    python scripts/probe_handover.py runs/tiny11 runs/tiny11/warmup/checkpoints/step-002700/model.safetensors \\
        --steps 300 --every 100

It also starts from a finished checkpoint directory (E24: after stage 1, from the shipped model), and then
`--save` writes a checkpoint directory that `internvl35 eval --model` reads:

    python scripts/probe_handover.py internvl35/assets/internvl35-tiny --steps 200 --save /tmp/e24
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_pixels_vs_words import accuracy, answer_from_pixels, perception  # noqa: E402
from probe_digits import load_run  # noqa: E402

from internvl35.api import InternVL  # noqa: E402
from internvl35.checkpoint import load_model, save_checkpoint  # noqa: E402
from internvl35.data.inputs import build_inputs  # noqa: E402
from internvl35.data.tokenizer import ChatTokenizer  # noqa: E402
from internvl35.model.attention import causal_input  # noqa: E402
from internvl35.model.internvl import InternVLModel  # noqa: E402
from internvl35.tasks import digits  # noqa: E402
from internvl35.tasks.base import split_seeds  # noqa: E402
from internvl35.train.data import symbolic_example  # noqa: E402
from internvl35.train.vision_pretrain import label_words  # noqa: E402

FIRST_TRAIN_SEED = 500_000  # past the examples the recipe's SFT stages drew


def layer_states(model: InternVLModel, embeds: Tensor, length: int) -> list[Tensor]:
    """The output of every decoder layer, (B, T, D) each, for right-padded rows of `length` tokens."""
    states: list[Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: states.append(out[0]))
             for layer in model.language_model.model.layers]
    try:
        model.language_model.model(embeds, causal_input(embeds.shape[0], length, embeds.device))
    finally:
        for h in hooks:
            h.remove()
    return states


def handover_loss(student: list[Tensor], teacher: list[Tensor], valid: Tensor) -> Tensor:
    """Mean over layers of sum |s - t|^2 / sum |t|^2 over the valid positions (valid: (B, T, 1))."""
    return sum(((s - t).pow(2).sum(-1, keepdim=True) * valid).sum() / (t.pow(2).sum(-1, keepdim=True) * valid).sum()
               for s, t in zip(student, teacher)) / len(student)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="recipe run directory holding tokenizer/, vision_pretrain and align weights, "
                                "or a checkpoint directory (config.json, weights, tokenizer.json)")
    ap.add_argument("state", nargs="?", default=None,
                    help="with a run directory: the words-trained full model state to start from (the warm-up's checkpoint)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16, help="reading questions per step (lines of 2-8 digits)")
    ap.add_argument("--lr", type=float, default=1.5e-3, help="mlp1's learning rate; the ViT's is a fifth of it")
    ap.add_argument("--save", default=None, help="write the final full model state here: a safetensors file when "
                                                 "starting from a run, a checkpoint directory when starting from one")
    a = ap.parse_args()

    from_checkpoint = (Path(a.run) / "config.json").exists()
    if from_checkpoint:
        tok = ChatTokenizer.from_dir(a.run)
        model = load_model(a.run, image_token_id=tok.img_context_id).train()
        config = model.config
    else:
        tok, config, model = load_run(a.run, a.state)
    model.language_model.requires_grad_(False)
    trained = [*model.mlp1.parameters(), *model.vision_model.parameters()]
    opt = torch.optim.AdamW([{"params": list(model.mlp1.parameters()), "lr": a.lr},
                             {"params": list(model.vision_model.parameters()), "lr": a.lr / 5}], weight_decay=0.0)
    words = label_words(tok)
    test = [digits.generate(s, "read") for s in split_seeds("test", 200)]

    def evaluate(step: int, seconds: float) -> None:
        model.eval()
        vl = InternVL(model, tok)
        outs = answer_from_pixels(vl, test)
        print(json.dumps({"step": step, "train_s": round(seconds, 1), "read": accuracy(test, outs),
                          **perception(vl, test, outs)}), flush=True)
        model.train()

    evaluate(0, 0.0)
    seconds = 0.0
    for step in range(a.steps):
        t0 = time.perf_counter()
        first = FIRST_TRAIN_SEED + step * a.batch
        samples = [digits.generate(s, "read", max_digits=8) for s in range(first, first + a.batch)]
        inputs = [build_inputs(tok, config, s.question, s.images, answer=s.answer) for s in samples]
        as_words = [symbolic_example(i, s, words, config).input_ids for i, s in zip(inputs, samples)]
        T = max(len(i.input_ids) for i in inputs)
        pad = [T - len(i.input_ids) for i in inputs]
        ids = torch.tensor([i.input_ids + [tok.pad_id] * p for i, p in zip(inputs, pad)])
        word_ids = torch.tensor([w + [tok.pad_id] * p for w, p in zip(as_words, pad)])
        valid = (torch.arange(T)[None] < torch.tensor([T - p for p in pad])[:, None]).float()[..., None]
        with torch.no_grad():
            teacher = layer_states(model, model.embed(word_ids, None), T)
        images = model.encode_images(torch.cat([i.pixel_values for i in inputs]))
        loss = handover_loss(layer_states(model, model.embed(ids, images), T), teacher, valid)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - t0
        if (step + 1) % a.every == 0:
            evaluate(step + 1, seconds)
    if a.save and from_checkpoint:
        save_checkpoint(model, a.save)
        tok.save(a.save)
    elif a.save:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, a.save)


if __name__ == "__main__":
    main()
