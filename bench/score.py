"""Scoring a GSPO group: log-probs of 8 responses to one 5-tile prompt, ours against transformers, same weights.

The model is bench/generate.py's (ViT 6 x 384 at 448 px, Qwen3 8 x 512, fp32, random weights), loaded by ours
from transformers' save_pretrained. The group is one 1,320-token prompt with 5 tiles and 8 responses of 64
tokens. Rows (median of --repeats after one warm-up each; the three alternate, so all see the same load):

- ours: `score(...)` with the prompt shared (the default): one row of the prompt and the 8 responses after it
  as segments (each attends to the prompt and itself), the ViT and the prompt run once;
- ours, not shared (`share_prompts=False`): 8 right-padded rows, the ViT and the prompt 8 times;
- transformers: one forward of the same 8 padded rows, pixel tiles repeated for each, then log-softmax and
  gather at the response positions (what a trainer built on `InternVLForConditionalGeneration` runs).

Forward only, under no_grad (old-policy and reference log-probs), and forward + backward of the summed log-probs
(the policy loss's pass), ours shared against ours not shared. The script first prints how closely the three agree.

    python bench/score.py [--repeats 3]

The last line printed is `ratio: <transformers / ours time, forward only>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import hf_model, pixels, prompt  # noqa: E402

from internvl35.checkpoint import load_model  # noqa: E402
from internvl35.engine import score  # noqa: E402

GROUP, RESPONSE_TOKENS = 8, 64


def timed(fns: dict[str, Callable[[], object]], repeats: int,
          sync: Callable[[], object] = lambda: None) -> dict[str, float]:
    """Median milliseconds of each after one warm-up call; the functions alternate (and rotate who goes first).
    `sync` waits for the device (torch.cuda.synchronize) around each timed call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    theirs = hf_model("cpu", torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        ours = load_model(tmp, dtype=torch.float32)
    ids, px = prompt(40, 5, seed=5), pixels(5, seed=5)
    g = torch.Generator().manual_seed(1)
    responses = [torch.randint(1, 31000, (RESPONSE_TOKENS,), generator=g).tolist() for _ in range(GROUP)]
    seqs = [(ids + r, len(ids)) for r in responses]

    def ours_scores(share: bool) -> list[torch.Tensor]:
        return score(ours, seqs, [px] * GROUP, share_prompts=share)

    def theirs_scores() -> torch.Tensor:
        x = torch.tensor([s for s, _ in seqs])
        logits = theirs(input_ids=x, pixel_values=px.repeat(GROUP, 1, 1, 1)).logits[:, len(ids) - 1: -1]
        return logits.float().log_softmax(-1).gather(-1, x[:, len(ids):, None])[..., 0]

    with torch.no_grad():
        a, b, c = torch.stack(ours_scores(True)), torch.stack(ours_scores(False)), theirs_scores()
        print(f"agreement: max |shared - not shared| {(a - b).abs().max():.1e}, |shared - transformers| "
              f"{(a - c).abs().max():.1e}")
        forward = timed({"shared": lambda: ours_scores(True), "not shared": lambda: ours_scores(False),
                         "transformers": theirs_scores}, args.repeats)

    def backward(share: bool) -> None:
        ours.zero_grad(set_to_none=True)
        sum(lp.sum() for lp in ours_scores(share)).backward()

    both = timed({"shared": lambda: backward(True), "not shared": lambda: backward(False)}, args.repeats)
    print(f"{GROUP} responses x {RESPONSE_TOKENS} tokens to one {len(ids)}-token 5-tile prompt, fp32, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"{'time (ms)':26s}{'ours':>10s}{'not shared':>12s}{'transformers':>14s}{'ratio':>8s}")
    print(f"{'forward (no_grad)':26s}{forward['shared']:10.1f}{forward['not shared']:12.1f}"
          f"{forward['transformers']:14.1f}{forward['transformers'] / forward['shared']:7.2f}x")
    print(f"{'forward + backward':26s}{both['shared']:10.1f}{both['not shared']:12.1f}{'':>14s}"
          f"{both['not shared'] / both['shared']:7.2f}x (against not shared)")
    print(f"ratio: {forward['transformers'] / forward['shared']:.2f}")


if __name__ == "__main__":
    main()
