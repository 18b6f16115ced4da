"""What the engine's image and prefix caches cost on a miss and save on a hit: ours with them on (the defaults)
against ours with both off.

The model is bench/generate.py's (ViT 6 x 384 at 448 px, Qwen3 8 x 512, fp32, random weights). Both engines
share the weights and alternate calls, so both see the same machine load. Rows (median of --repeats after one
warm-up call each):

- miss: time to first token of a 5-tile prompt, new pixels every call (the caches hash them, find nothing, and
  keep the features and the keys/values);
- hit: another question about an image seen before: the same 20 text tokens and 5 tiles, then 20 new ones (the
  image cache returns the features and the prefix cache the keys/values up to the image's end; with both off
  the engine runs the ViT and the whole prompt);
- group: 8 samples of one new 5-tile prompt (an RL group: temperature 1, a seed each), 16 tokens each, total
  time. With the caches on, the tiles are hashed and the 8 requests share one ViT call and one prefill
  (`Sequence.share_key`); with both off nothing is hashed, and each runs its own.

    python bench/caches.py [--repeats 7]

The last line printed is `ratio: <time to first token on a hit, caches off / on>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import hf_model, pixels, prompt  # noqa: E402

from internvl35.checkpoint import load_model  # noqa: E402
from internvl35.engine import Engine, Request, SamplingParams  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        hf_model("cpu", torch.float32).save_pretrained(tmp)
        model = load_model(tmp, dtype=torch.float32)
    engines = {"on": Engine(model, eos_token_ids=[], max_seq_len=2048),
               "off": Engine(model, eos_token_ids=[], max_seq_len=2048, image_cache_bytes=0, prefix_cache_bytes=0)}
    ids = prompt(40, 5, seed=5)  # 20 text tokens, the image's, 20 text tokens
    head = ids[:-20]

    def ttft(engine: Engine, ids: list[int], px: torch.Tensor) -> float:
        start = time.perf_counter()
        engine.generate([Request(ids, SamplingParams(max_new_tokens=1), pixel_values=px)])
        return time.perf_counter() - start

    def group(engine: Engine, ids: list[int], px: torch.Tensor) -> float:
        start = time.perf_counter()
        engine.generate([Request(ids, SamplingParams(max_new_tokens=16, temperature=1.0, seed=k), pixel_values=px)
                         for k in range(8)])
        return time.perf_counter() - start

    seen = pixels(5, seed=5)
    times: dict[tuple[str, str], list[float]] = {}
    for i in range(args.repeats + 1):  # call 0 warms up (and puts `seen` in the cache)
        order = list(engines.items()) if i % 2 else list(engines.items())[::-1]  # neither always goes first
        for name, engine in order:
            new = pixels(5, seed=1000 + 2 * i + (name == "on"))
            question = head + prompt(20, 0, seed=5000 + 2 * i + (name == "on"))
            for row, run, prompt_ids, px in (("miss", ttft, ids, new), ("hit", ttft, question, seen),
                                              ("group", group, ids, pixels(5, seed=9000 + 2 * i + (name == "on")))):
                elapsed = run(engine, prompt_ids, px)
                if i:
                    times.setdefault((row, name), []).append(elapsed)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"5-tile prompt, fp32, {args.threads} threads, median of {args.repeats}")
    print(f"{'time (ms)':28s}{'caches on':>10s}{'caches off':>11s}{'off / on':>10s}")
    for row, what in (("miss", "first token, miss"), ("hit", "first token, hit"), ("group", "RL group, 8 x 16 tokens")):
        print(f"{what:28s}{med[row, 'on']:10.1f}{med[row, 'off']:11.1f}{med[row, 'off'] / med[row, 'on']:9.3f}x")
    print(f"ratio: {med['hit', 'off'] / med['hit', 'on']:.2f}")


if __name__ == "__main__":
    main()
