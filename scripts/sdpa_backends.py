"""Which fused attention kernels take the masked grouped-query calls the engine makes (on a GPU).

The engine passes a boolean mask with `enable_gqa=True` for decode rows of unequal length, a prompt continuing a
reused prefix, and responses sharing a prompt (`model/attention.py`, `model/qwen3.py`). Flash attention takes no
mask; if the memory-efficient kernel does not take grouped-query heads either, such calls fall back to the math
kernel, which builds the whole (heads, queries, keys) score matrix. This prints, for each kernel alone, whether
it runs those shapes, so a GPU session can tell whether the fallback happens (`scripts/gpu_checks.sh`).

    python scripts/sdpa_backends.py [--device cuda]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (what, queries, keys): an 8B model's heads (32 query, 8 key/value, 128 wide)
CALLS = (("decode, rows of unequal length", 1, 4096), ("prompt after a reused prefix", 512, 4096),
         ("responses after a shared prompt", 2048, 2048))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    device = parser.parse_args().device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    print(f"torch {torch.__version__}, {device}, {dtype}")
    for what, t, s in CALLS:
        q = torch.randn(1, 32, t, 128, device=device, dtype=dtype)
        k, v = (torch.randn(1, 8, s, 128, device=device, dtype=dtype) for _ in range(2))
        mask = torch.ones(1, 1, t, s, device=device, dtype=torch.bool).tril(s - t)
        results = []
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH):
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
                results.append(f"{backend.name.lower()}: runs")
            except RuntimeError:
                results.append(f"{backend.name.lower()}: refused")
        print(f"{what} ({t} queries x {s} keys): " + ", ".join(results))


if __name__ == "__main__":
    main()
