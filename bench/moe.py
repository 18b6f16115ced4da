"""One Qwen3-MoE layer's experts, ours against transformers', on the same weights: decode and prefill token counts.

The layer has InternVL3.5-30B-A3B's language model's shape (Qwen3-30B-A3B: 128 experts, top 8, hidden 2048,
expert MLP 768, renormalised top-k), random weights, fp32 by default. Both sides hold the experts stacked
((E, 2I, D) and (E, D, I)) and share the very same tensors here.

- ours (`qwen3.MoE`): the (token, expert) pairs sorted by expert, two grouped matmuls; no host sync;
- transformers (`Qwen3MoeSparseMoeBlock`, 5.x, its default eager experts): a Python loop over the experts that
  got tokens, with a host sync to find them and one per expert (`torch.where`).

On a CPU a host sync costs nothing, so the figures here compare the kernels and the Python; what the syncs cost
on a GPU (9 per layer at batch 1 in the loop, 48 layers) needs a GPU to measure. The script first prints how
closely the two agree. Times are medians of --repeats calls after a warm-up, the two sides alternating.

    python bench/moe.py [--repeats 20] [--dtype bfloat16] [--device cuda]

The last line printed is `ratio: <transformers / ours time at 1 token>` (a decode step at batch 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from score import timed  # noqa: E402

from internvl35.model.qwen3 import MoE  # noqa: E402
from internvl35.presets import preset  # noqa: E402

TOKENS = (1, 8, 64, 512)  # decode at batch 1 and 8, a short and a longer prefill chunk


def peer(ours: MoE, config) -> torch.nn.Module:
    """transformers' block on our layer's tensors (no copies)."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    hf_config = Qwen3MoeConfig(hidden_size=config.hidden_size, num_experts=config.num_experts,
                               num_experts_per_tok=config.num_experts_per_tok,
                               moe_intermediate_size=config.moe_intermediate_size, norm_topk_prob=config.norm_topk_prob)
    hf_config._experts_implementation = "eager"  # its default in a full model; named, as the block stands alone here
    with torch.device("meta"):
        block = Qwen3MoeSparseMoeBlock(hf_config)
    block.load_state_dict({"gate.weight": ours.gate.weight, "experts.gate_up_proj": ours.experts.gate_up_proj,
                           "experts.down_proj": ours.experts.down_proj}, assign=True)
    return block.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = preset("30B-A3B").text
    torch.manual_seed(0)
    with torch.device(device):
        ours = MoE(config)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.02)
    ours = ours.to(dtype).eval()
    theirs = peer(ours, config)
    print(f"one MoE layer: {config.num_experts} experts, top {config.num_experts_per_tok}, hidden {config.hidden_size}, "
          f"expert MLP {config.moe_intermediate_size}; {args.dtype} on {device}, {torch.get_num_threads()} threads")
    rows = []
    with torch.no_grad():
        for n in TOKENS:
            x = torch.randn(1, n, config.hidden_size, device=device, dtype=dtype)
            diff = (ours(x)[0].float() - theirs(x).float()).abs().max().item()
            t = timed({"ours": lambda: ours(x), "transformers": lambda: theirs(x)}, args.repeats, sync)
            rows.append((n, t["ours"], t["transformers"], diff))
    print("\n| tokens | ours ms | transformers ms | speedup | max abs diff |\n|---|---|---|---|---|")
    for n, a, b, diff in rows:
        print(f"| {n} | {a:.2f} | {b:.2f} | {b / a:.2f}x | {diff:.1e} |")
    print(f"ratio: {rows[0][2] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
