"""How far bf16 logits land from fp32 ones, ours against transformers, on the generation benchmark's weights.

    python scripts/bf16_parity.py [--device cuda]

Builds bench/generate.py's random ~70M-parameter InternVL in transformers (fp32, the reference), loads the same
weights into ours in bf16 and fp32, and compares the logits of the last 8 positions of a 1-tile prompt with the
reference's. Ours in bf16 should sit as close to fp32 as transformers in bf16 does; greedy tokens of the two
bf16 runs may still differ where a top-2 gap is below bf16 rounding, which the last line shows.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import generate as bench  # noqa: E402

from internvl35.checkpoint import load_model  # noqa: E402
from internvl35.model.attention import causal_input  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    device = parser.parse_args().device
    torch.set_num_threads(2)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference on a GPU
    reference = bench.hf_model(device, torch.float32).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        ours = {dtype: load_model(tmp, dtype=dtype, device=device) for dtype in (torch.float32, torch.bfloat16)}
    theirs_bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    ids = torch.tensor([bench.prompt(24, 1, seed=0)], device=device)
    pixels = bench.pixels(1, seed=0).to(device)
    with torch.inference_mode():
        ref = reference(input_ids=ids, pixel_values=pixels).logits[0, -8:].float()
        theirs = theirs_bf16(input_ids=ids, pixel_values=pixels.bfloat16()).logits[0, -8:].float()

        def our_logits(dtype: torch.dtype) -> torch.Tensor:
            model = ours[dtype]
            feats = model.encode_images(pixels.to(dtype))
            return model(ids, image_features=feats, attn=causal_input(1, ids.shape[1], device)).logits[0, -8:].float()

        for name, logits in (("ours fp32", our_logits(torch.float32)), ("ours bf16", our_logits(torch.bfloat16)),
                             ("transformers bf16", theirs)):
            diff = (logits - ref).abs()
            print(f"{name:18s} vs transformers fp32: max |diff| {diff.max():.2e}, mean {diff.mean():.2e}")
    top2 = ref.topk(2).values
    print(f"mean |logit| {ref.abs().mean():.3f}; top-2 gaps of the 8 positions: "
          + ", ".join(f"{g:.4f}" for g in (top2[:, 0] - top2[:, 1]).tolist()))


if __name__ == "__main__":
    main()
