"""SFT throughput with sequence packing vs padding, on the internvl35-tiny task mix.

Both modes train the same model on the same examples with the same optimizer; only the batching
differs. Packed: examples laid end to end in rows of `--pack-tokens`, attention inside each example.
Padded: `--pad-batch` examples per forward, right-padded to the longest. Throughput counts real
(non-padding) tokens per second of full optimizer steps (forward, backward, AdamW).

    python bench/train.py [--steps 6] [--threads 2]

The last printed line is the headline figure: `ratio: <packed/padded tokens/s>`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from internvl35.checkpoint import build_model
from internvl35.train.data import TaskSource
from internvl35.train.recipe import TINY, build_tokenizer, model_config
from internvl35.train.sft import SFTConfig, make_optimizer, micro_batches, train_step


def measure(packing: bool, args, tok, config, source) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(config).train()
    cfg = SFTConfig(out_dir="-", steps=args.steps, examples_per_step=args.examples, packing=packing,
                    pack_tokens=args.pack_tokens, rows_per_micro=4 if packing else args.pad_batch)
    opt = make_optimizer(model, cfg)
    rates, padded_share = [], []
    for step in range(args.steps + 1):  # the first step is warm-up
        examples = [source(i) for i in range(step * args.examples, (step + 1) * args.examples)]
        batches = micro_batches(examples, cfg, tok.pad_id)
        t0 = time.perf_counter()
        m = train_step(model, opt, batches, 1e-4, 1.0)
        if step:
            rates.append(m["tokens"] / (time.perf_counter() - t0))
            padded_share.append(1 - m["tokens"] / sum(b.input_ids.numel() for b in batches))
    return statistics.median(rates), statistics.mean(padded_share)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--examples", type=int, default=24, help="examples per optimizer step")
    p.add_argument("--pack-tokens", type=int, default=1536)
    p.add_argument("--pad-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tok = build_tokenizer(TINY)
    config = model_config(TINY, tok)
    source = TaskSource(tok, config, TINY.mix)
    packed, packed_pad = measure(True, args, tok, config, source)
    padded, padded_pad = measure(False, args, tok, config, source)
    print(f"SFT throughput, internvl35-tiny config, task mix, {args.examples} examples/step, "
          f"{args.threads} threads, median of {args.steps} steps")
    print(f"{'mode':<8} {'tokens/s':>10} {'padding':>8}")
    print(f"{'packed':<8} {packed:>10.0f} {packed_pad:>8.1%}")
    print(f"{'padded':<8} {padded:>10.0f} {padded_pad:>8.1%}")
    print(f"ratio: {packed / padded:.2f}")


if __name__ == "__main__":
    main()
