"""Tiny random transformers InternVL models, written with save_pretrained, as the parity reference."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_TOKEN_ID = 250  # inside the tiny vocab of 300


def hf_config(text: str = "qwen3", vision: str = "300m", tie: bool = False, image_size: int = 56):
    from transformers import InternVLConfig

    vc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              image_size=[image_size, image_size], patch_size=[14, 14], layer_scale_init_value=0.1)
    if vision == "6b":
        vc.update(norm_type="rms_norm", use_qk_norm=True, attention_bias=False)
    else:
        vc.update(norm_type="layer_norm", use_qk_norm=False, attention_bias=True)
    tc = dict(model_type=text, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, intermediate_size=128, vocab_size=300, max_position_embeddings=512,
              rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=tie)
    if text == "qwen3_moe":
        tc.update(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True)
    return InternVLConfig(vision_config=vc, text_config=tc, image_token_id=IMAGE_TOKEN_ID,
                          image_seq_length=(image_size // 28) ** 2, tie_word_embeddings=tie)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (norm weights, layer scales, biases included) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "lambda" in name or "layernorm" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def write_hf_model(directory: Path, **kw) -> torch.nn.Module:
    from transformers import InternVLForConditionalGeneration

    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(hf_config(**kw)).eval()
    randomize(model)
    model.save_pretrained(directory)
    return model
