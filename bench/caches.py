"""What the engine's image and prefix caches cost on a miss and save on a hit: ours with them on (the defaults)
against ours with both off.

The model is bench/generate.py's (ViT 6 x 384 at 448 px, Qwen3 8 x 512, fp32, random weights). Both engines
share the weights and alternate calls, so both see the same machine load. Rows (median of --repeats after one
warm-up call each):

- miss: time to first token of a 5-tile prompt, new pixels every call (the caches hash them, find nothing, and
  keep the features and the keys/values);
- hit: another question about an image seen before: the same 20 text tokens and 5 tiles, then 20 new ones (the
  image cache returns the features and the prefix cache the keys/values up to the image's end; with both off
  the engine runs the ViT and the whole prompt).

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

    seen = pixels(5, seed=5)
    times: dict[tuple[str, str], list[float]] = {}
    for i in range(args.repeats + 1):  # call 0 warms up (and puts `seen` in the cache)
        order = list(engines.items()) if i % 2 else list(engines.items())[::-1]  # neither always goes first
        for name, engine in order:
            new = pixels(5, seed=1000 + 2 * i + (name == "on"))
            question = head + prompt(20, 0, seed=5000 + 2 * i + (name == "on"))
            for row, prompt_ids, px in (("miss", ids, new), ("hit", question, seen)):
                elapsed = ttft(engine, prompt_ids, px)
                if i:
                    times.setdefault((row, name), []).append(elapsed)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"5-tile prompt, fp32, {args.threads} threads, median of {args.repeats}")
    print(f"{'time to first token (ms)':28s}{'caches on':>10s}{'caches off':>11s}{'off / on':>10s}")
    for row in ("miss", "hit"):
        print(f"{row:28s}{med[row, 'on']:10.1f}{med[row, 'off']:11.1f}{med[row, 'off'] / med[row, 'on']:9.3f}x")
    print(f"ratio: {med['hit', 'off'] / med['hit', 'on']:.2f}")


if __name__ == "__main__":
    main()
