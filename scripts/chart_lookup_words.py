"""Can the shipped language model learn a chart's name -> value lookup from words, when name and value sit side by
side? (docs/results.md, E47.) Or a lookup by place, the days of a week in calendar order, one row each? (E48.)

A chart is written directly as its 8 x 8 grid of image-token words, as a horizontal bar chart would be perceived:
each bar a row, "." everywhere but the token where the bar ends (its value's digit word, "7") and the token right
after it (the bar's name, " kiwi"; only names that are one BPE token). `--layout fused` instead writes one token
per bar at the name's place, the mean of the name's and the value's embeddings (E46's own-token design).
`--layout rows` (E48, the design `tasks/chart.py` then took) names the bars Mon, Tue, ... in order, bar k in row k,
and writes only the value where the bar ends: "the value for Wed" is the digit in the third row. The
language model trains alone (embeddings frozen) on chart questions in the chat format; accuracy is the exact
answer, teacher-forced, on 150 held-out charts a kind. Chance for "read" is about one bar in 3-5 (~27%): a model
that answers any digit it sees scores that.

    python scripts/chart_lookup_words.py --steps 600 --lr 3e-3 --kinds read
    python scripts/chart_lookup_words.py --layout rows --steps 300 --kinds read
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from family_from_words import language_layers, train_layers  # noqa: E402

from internvl35.checkpoint import load_model  # noqa: E402
from internvl35.data.inputs import build_inputs  # noqa: E402
from internvl35.data.tokenizer import ChatTokenizer  # noqa: E402
from internvl35.model.attention import causal_input  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "internvl35" / "assets" / "internvl35-tiny"
KINDS = ("read", "compare", "compute")


class Charts:
    def __init__(self, model, tokenizer: ChatTokenizer, layout: str) -> None:
        self.config, self.layout, self.tokenizer = model.config, layout, tokenizer
        self.emb = model.language_model.model.embed_tokens.weight.detach().clone()
        word = lambda text: tokenizer.encode_text(text)  # noqa: E731
        if layout == "rows":
            self.names = ["Mon", "Tue", "Wed", "Thu", "Fri"]  # never written into the grid
        else:
            self.names = [n for n in ("tea", "jam", "egg", "bun", "yam", "pea", "kiwi", "lime")
                          if len(word(" " + n)) == 1]
        self.name_id = {n: word(" " + n)[0] for n in self.names}
        self.digit_id = {v: word(str(v))[0] for v in range(10)}
        self.dot = word(".")[0]
        self.blank = Image.new("RGB", (self.config.vision.image_size,) * 2, "white")

    def grid(self, names: list[str], values: list[int], rows: list[int]) -> torch.Tensor:
        """(64, D) image-token embeddings: bar r ends in column 1 + (v - 1) // 2 (half a token a unit)."""
        grid = self.emb[self.dot].repeat(8, 8, 1)
        for r, name, v in zip(rows, names, values):
            end = 1 + (v - 1) // 2
            value, label = self.emb[self.digit_id[v]], self.emb[self.name_id[name]]
            if self.layout == "rows":
                grid[r, end] = value
            elif self.layout == "adjacent":
                grid[r, end], grid[r, end + 1] = value, label
            else:
                grid[r, end + 1] = (value + label) / 2
        return grid.reshape(64, -1)

    def sample(self, rng: np.random.Generator, kind: str):
        n = int(rng.integers(3, 6))
        rows_layout = self.layout == "rows"  # the first n days, in order, in rows 1..n
        names = self.names[:n] if rows_layout else [str(x) for x in rng.choice(self.names, n, replace=False)]
        values = [int(v) + 1 for v in rng.choice(9, n, replace=False)]
        rows = list(range(1, n + 1)) if rows_layout else sorted(int(r) for r in rng.choice(np.arange(1, 7), n,
                                                                                            replace=False))
        i, j = rng.choice(n, 2, replace=False)
        a, b, va, vb = names[i], names[j], values[i], values[j]
        if kind == "read":
            q = (f"What is the value for {a}? Answer with a number." if self.layout == "rows" else
                 f"What is the value of the {a} bar? Answer with a number.")
            answer = str(va)
        elif kind == "compare":
            q = (f"Which bar is larger?\nA. {a}\nB. {b}\n"
                 "Answer with the option's letter from the given choices directly.")
            answer = "A" if va > vb else "B"
        else:
            q, answer = f"What is the sum of the {a} and {b} bars? Answer with a number.", str(va + vb)
        inputs = build_inputs(self.tokenizer, self.config, q, [self.blank], answer=answer)
        return inputs.input_ids, inputs.labels, self.grid(names, values, rows)


def forward(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows: logits (B, T, V) and labels (B, T)."""
    lm, image_id = model.language_model, model.config.image_token_id
    T = max(len(ids) for ids, _, _ in batch)
    embeds, labels = [], []
    for ids, lab, grid in batch:
        ids = torch.tensor(ids)
        e = lm.model.embed_tokens(ids).clone()
        e[ids == image_id] = grid
        embeds.append(F.pad(e, (0, 0, 0, T - len(ids))))
        labels.append(torch.tensor(lab + [-100] * (T - len(lab))))
    embeds, labels = torch.stack(embeds), torch.stack(labels)
    hidden, _ = lm.model(embeds, causal_input(len(batch), T))
    return lm.logits(hidden), labels


@torch.no_grad()
def accuracy(model, charts: Charts, kinds: tuple[str, ...], n: int = 150) -> dict[str, float]:
    rng = np.random.default_rng(10**6)
    out = {}
    for kind in kinds:
        logits, labels = forward(model, [charts.sample(rng, kind) for _ in range(n)])
        pred, target = logits[:, :-1].argmax(-1), labels[:, 1:]
        out[kind] = float(((pred == target) | (target == -100)).all(-1).float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=("adjacent", "fused", "rows"), default="adjacent")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--reinit", action="store_true",
                        help="start the language model's layers from random weights (the embeddings stay the model's)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    kinds = tuple(args.kinds.split(","))
    model = load_model(args.model, dtype=torch.float32)
    charts = Charts(model, ChatTokenizer.from_dir(args.model), args.layout)
    params = language_layers(model)
    if args.reinit:  # as `init_weights` does: N(0, 0.02) matrices, unit norms
        with torch.no_grad():
            for p in params:
                p.fill_(1.0) if p.dim() == 1 else p.normal_(0.0, 0.02)
    print(f"{args.layout}, names {charts.names}; before: {accuracy(model, charts, kinds)}", flush=True)
    rng = np.random.default_rng(1)
    train_layers(params, lambda step: forward(model, [charts.sample(rng, kinds[int(rng.integers(len(kinds)))])
                                                      for _ in range(args.batch)]),
                 args.steps, args.lr, 100, lambda step, loss, seconds: print(
                     f"step {step} loss {loss:.3f} {seconds:.0f} s {accuracy(model, charts, kinds)}", flush=True))


if __name__ == "__main__":
    main()
