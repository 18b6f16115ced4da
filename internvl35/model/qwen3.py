"""Qwen3 dense and Qwen3-MoE decoders (the InternVL3.5 language models).

Parameter names follow the checkpoints (`model.layers.{i}.self_attn.q_proj`, `mlp.gate`), prefixed by
`language_model.` in the full model; the one exception is a MoE layer's experts, held stacked
(`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`; `keymap.fuse_experts` maps the checkpoints' per-expert names).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internvl35.config import TextConfig
from internvl35.model.attention import AttentionInput, segment_attention
from internvl35.model.linear import Linear, PackedWeight, grouped_linear, linear
from internvl35.model.norm import RMSNorm

# Releases before the public name have the same op as torch._grouped_mm (a CPU kernel from 2.9, pyproject's floor).
grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and signed sin tables (B, 1, T, hd), computed in fp32 and cast once to the model dtype.

    The sign of the first half is folded into sin, so that rotate_half(x) * sin == roll(x) * signed_sin.
    """
    half = head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    freqs = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    sign = torch.cat([-torch.ones(half, device=positions.device), torch.ones(half, device=positions.device)])
    return emb.cos().to(dtype), (emb.sin() * sign).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1) = roll(x, hd/2) * sign."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        D = cfg.hidden_size
        self.q_proj = Linear(D, self.n_heads * self.hd, bias=False)
        self.k_proj = Linear(D, self.n_kv * self.hd, bias=False)
        self.v_proj = Linear(D, self.n_kv * self.hd, bias=False)
        self.o_proj = Linear(self.n_heads * self.hd, D, bias=False)
        self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
        self._packed_qkv = PackedWeight()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], attn: AttentionInput) -> Tensor:
        B, T, _ = x.shape
        q, k, v = grouped_linear(x, (self.q_proj, self.k_proj, self.v_proj), self._packed_qkv)
        q = self.q_norm(q.view(B, T, self.n_heads, self.hd)).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_norm(k.view(B, T, self.n_kv, self.hd)).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if attn.cache is not None:
            k, v = attn.cache.update(self.layer, k, v)
        gqa = self.n_kv != self.n_heads
        if attn.segments is not None:
            out = segment_attention(q, k, v, attn.segments, gqa, attn.shared_prefix)
        elif attn.mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn.mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, inner, bias=False)
        self.up_proj = Linear(hidden, inner, bias=False)
        self.down_proj = Linear(inner, hidden, bias=False)
        self._packed_gate_up = PackedWeight()

    def forward(self, x: Tensor) -> Tensor:
        gate, up = grouped_linear(x, (self.gate_proj, self.up_proj), self._packed_gate_up)
        return self.down_proj(F.silu(gate) * up)


class Experts(nn.Module):
    """E SwiGLU experts, stacked: gate_up_proj (E, 2I, D) holds each expert's gate_proj rows then its up_proj rows,
    down_proj (E, D, I). Checkpoints keep one Linear per expert; `keymap.fuse_experts` stacks them on load.

    All experts run as two grouped matrix products (`grouped_mm`) over the (token, expert) pairs sorted by
    expert, whose group boundaries never leave the device. A loop over the chosen experts needs each expert's
    tokens on the host: a sync per expert per layer (9 a layer for a decode step of a 128-expert top-8 model),
    which on a GPU stalls the launch queue at every one.
    """

    def __init__(self, num_experts: int, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, inter))

    def forward(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        """x (N, D), chosen (N, k) expert ids, weights (N, k) -> (N, D): each token's weighted sum of its experts."""
        k = chosen.shape[1]
        experts, order = chosen.flatten().sort(stable=True)  # (N*k,) pairs grouped by expert
        token = order // k
        group_ends = torch.arange(1, self.gate_up_proj.shape[0] + 1, device=x.device)
        offs = torch.searchsorted(experts, group_ends, right=False).to(torch.int32)  # pairs with expert < e + 1
        gate, up = grouped_mm(x[token], self.gate_up_proj.transpose(1, 2), offs=offs).chunk(2, dim=-1)
        y = grouped_mm(F.silu(gate) * up, self.down_proj.transpose(1, 2), offs=offs)
        return torch.zeros_like(x).index_add_(0, token, y * weights.flatten()[order, None])


class MoE(nn.Module):
    """Router Linear(D, E) + E SwiGLU experts; softmax, top-k, optional renormalisation; no shared expert."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.gate = Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> (output (B, T, D), router logits (B*T, E))."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.gate(x)
        probs = logits.float().softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return self.experts(x, chosen, weights.to(x.dtype)).view(shape), logits


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.layer_is_moe(layer) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], attn: AttentionInput) -> tuple[Tensor, Tensor | None]:
        x = x + self.self_attn(self.input_layernorm(x), rope, attn)
        h = self.mlp(self.post_attention_layernorm(x))
        h, router_logits = h if isinstance(h, tuple) else (h, None)
        return x + h, router_logits


class Qwen3Model(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, embeds: Tensor, attn: AttentionInput) -> tuple[Tensor, list[Tensor]]:
        """embeds (B, T, D) -> final hidden states (B, T, D) and the MoE router logits of each layer."""
        rope = rope_cos_sin(attn.positions, self.config.head_dim, self.config.rope_theta, embeds.dtype)
        x, router_logits = embeds, []
        for layer in self.layers:
            x, logits = layer(x, rope, attn)
            if logits is not None:
                router_logits.append(logits)
        return self.norm(x), router_logits


class Qwen3ForCausalLM(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Qwen3Model(cfg)
        # Tied models have no lm_head parameter at all: the embedding is the single source of truth.
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._packed_output, self._packed_output_t = PackedWeight(), PackedWeight(transpose=True)

    @property
    def output_weight(self) -> Tensor:
        """The (V, D) vocabulary projection: lm_head's weight, or the embedding when tied."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: Tensor) -> Tensor:
        return linear(hidden, self.output_weight, None, self._packed_output, self._packed_output_t)


def load_balancing_loss(router_logits: list[Tensor], num_experts: int, top_k: int) -> Tensor:
    """Switch-style auxiliary loss over all MoE layers: E * sum_e (token fraction_e * mean router prob_e)."""
    logits = torch.cat(router_logits, dim=0).float()  # (layers * N, E)
    probs = logits.softmax(-1)
    chosen = probs.topk(top_k, dim=-1).indices
    picked = F.one_hot(chosen, num_experts).float()  # (N, k, E)
    tokens_per_expert = picked.mean(0)  # (k, E)
    return num_experts * (tokens_per_expert * probs.mean(0)[None]).sum()
