"""Image preprocessing throughput: internvl35 tiling vs transformers' InternVL image processor.

Full pipeline from an RGB PIL image to the normalised (N, 3, 448, 448) float32 tensor, tile 448,
max 12 tiles, random-content images. The transformers processor is built from the
preprocessor_config.json an InternVL3.5 "-HF" checkpoint ships (no download) and loaded with
AutoImageProcessor, so it is whatever class and backend transformers picks on this machine.

    python bench/preprocess.py [--threads 2] [--seconds 2]

The last line is `ratio: <ours/theirs images/s at 896x896>`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from internvl35.data.tiling import IMAGENET_MEAN, IMAGENET_STD, preprocess_image

SIZES = [(448, 448), (896, 896), (1920, 1080)]
HF_CONFIG = {  # as in OpenGVLab/InternVL3_5-*-HF preprocessor_config.json
    "image_processor_type": "GotOcr2ImageProcessorFast", "crop_to_patches": True,
    "min_patches": 1, "max_patches": 12, "size": {"height": 448, "width": 448}, "resample": 3,
    "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "do_convert_rgb": True,
}


def hf_processor():
    from transformers import AutoImageProcessor

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "preprocessor_config.json").write_text(json.dumps(HF_CONFIG))
        return AutoImageProcessor.from_pretrained(d)


def seconds_per_call(fn: Callable[[], object], seconds: float, warmup: int = 3) -> float:
    """Median wall time of one call, over at least 10 calls and `seconds` of timing."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 10 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same for both")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    proc = hf_processor()
    rng = np.random.default_rng(0)
    print(f"theirs: transformers {type(proc).__name__} (backend {proc.backend!r}, PIL bicubic); "
          f"ours: internvl35.data.tiling.preprocess_image (PIL bicubic, numpy normalise; "
          f"thumbnail resize on a 2nd thread when torch threads > 1)")
    print(f"torch threads {args.threads} for both; tile 448, max 12; random RGB PIL input -> "
          f"normalised float32 tensor; images/s = 1 / median time per image")
    print(f"{'image':>10} {'tiles':>5} {'ours img/s':>11} {'theirs img/s':>13} {'ratio':>6} "
          f"{'max|diff|':>10}")
    ratios = {}
    for w, h in SIZES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours_fn = lambda: preprocess_image(img, tile=448, max_num=12)  # noqa: E731
        theirs_fn = lambda: proc(images=img, return_tensors="pt")["pixel_values"]  # noqa: E731
        diff = (ours_fn() - theirs_fn()).abs().max().item()
        ours = 1 / seconds_per_call(ours_fn, args.seconds)
        theirs = 1 / seconds_per_call(theirs_fn, args.seconds)
        ratios[(w, h)] = ours / theirs
        print(f"{w}x{h:<5} {ours_fn().shape[0]:>5} {ours:>11.1f} {theirs:>13.1f} "
              f"{ours / theirs:>6.2f} {diff:>10.2e}")
    print(f"ratio: {ratios[(896, 896)]:.2f}")


if __name__ == "__main__":
    main()
