"""Named configs: every InternVL3.5 size of SYSTEM.md section 1 with real dimensions, plus tiny ones for tests.

The real dimensions are those of the public InternViT-300M/6B and Qwen3 configs. Building a real size
allocates its full weights, so use `torch.device("meta")` to inspect one without memory.
"""

from __future__ import annotations

from internvl35.config import ConfigError, InternVLConfig, TextConfig, VisionConfig

VIT_300M = VisionConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        qkv_bias=True, qk_normalization=False, norm_type="layer_norm")
VIT_6B = VisionConfig(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
                      qkv_bias=False, qk_normalization=True, norm_type="rms_norm")


def _qwen3(hidden: int, layers: int, heads: int, kv: int, inter: int, tie: bool) -> TextConfig:
    return TextConfig(vocab_size=151936, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=128, tie_word_embeddings=tie)


def _qwen3_moe(hidden: int, layers: int, heads: int, kv: int, moe_inter: int) -> TextConfig:
    return TextConfig(vocab_size=151936, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=128, tie_word_embeddings=False,
                      num_experts=128, num_experts_per_tok=8, moe_intermediate_size=moe_inter, norm_topk_prob=True)


QWEN3 = {
    "0.6B": _qwen3(1024, 28, 16, 8, 3072, tie=True),
    "1.7B": _qwen3(2048, 28, 16, 8, 6144, tie=True),
    "4B": _qwen3(2560, 36, 32, 8, 9728, tie=True),
    "8B": _qwen3(4096, 36, 32, 8, 12288, tie=False),
    "14B": _qwen3(5120, 40, 40, 8, 17408, tie=False),
    "32B": _qwen3(5120, 64, 64, 8, 25600, tie=False),
    "30B-A3B": _qwen3_moe(2048, 48, 32, 4, 768),
    "235B-A22B": _qwen3_moe(4096, 94, 64, 4, 1536),
}

# InternVL3.5 size -> (vision tower, Qwen3 backbone)
SIZES = {
    "1B": (VIT_300M, "0.6B"), "2B": (VIT_300M, "1.7B"), "4B": (VIT_300M, "4B"), "8B": (VIT_300M, "8B"),
    "14B": (VIT_300M, "14B"), "38B": (VIT_6B, "32B"), "30B-A3B": (VIT_300M, "30B-A3B"),
    "241B-A28B": (VIT_6B, "235B-A22B"),
}

_TINY_VISION = VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            image_size=56, patch_size=14)
_TINY_TEXT = TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                        tie_word_embeddings=False)

TINY = {
    # 56 px tiles -> 4x4 patches -> 4 tokens per tile: the smallest useful test model.
    "tiny-test": InternVLConfig(vision=_TINY_VISION, text=_TINY_TEXT),
    "tiny-test-6b": InternVLConfig(
        vision=VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            image_size=56, patch_size=14, qkv_bias=False, qk_normalization=True, norm_type="rms_norm"),
        text=_TINY_TEXT),
    "tiny-test-moe": InternVLConfig(
        vision=_TINY_VISION,
        text=TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
}


def preset(name: str) -> InternVLConfig:
    """`InternVL3.5-8B`, `8B`, `38B`, ..., or a tiny test preset."""
    if name in TINY:
        return TINY[name]
    size = name.removeprefix("InternVL3.5-").removesuffix("-HF").removesuffix("-Flash")
    if size == "20B-A4B":
        raise ConfigError("InternVL3.5-20B-A4B uses the GPT-OSS backbone, which is not implemented yet")
    if size not in SIZES:
        names = ", ".join([*SIZES, *TINY])
        raise ConfigError(f"unknown preset {name!r}; known: {names}")
    vision, llm = SIZES[size]
    return InternVLConfig(vision=vision, text=QWEN3[llm])


def preset_names() -> list[str]:
    return [f"InternVL3.5-{s}" for s in SIZES] + list(TINY)
