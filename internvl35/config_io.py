"""config.json <-> InternVLConfig, in the original (`llm_config`) and HF (`text_config`) layouts.

Field spellings differ across eras: released checkpoints (transformers 4.x) write `rope_theta` and
`num_experts`; transformers 5.x writes `rope_parameters: {rope_theta, rope_type}` and
`num_local_experts`. Both are read; the original spelling is written for the original layout and the
5.x spelling for the HF layout.
"""

from __future__ import annotations

from typing import Any

from internvl35.config import ConfigError, InternVLConfig, RouterConfig, TextConfig, VisionConfig

QWEN3_ARCHS = {"Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3_moe"}
UNSUPPORTED_ARCHS = {
    "GptOssForCausalLM": "the GPT-OSS backbone (InternVL3.5-20B-A4B) is not implemented yet (see docs/ROADMAP)",
    "Qwen2ForCausalLM": "Qwen2 backbones belong to InternVL2.5/3, not InternVL3.5",
}


def _pair(value: Any, name: str) -> int:
    """HF writes image/patch sizes as [h, w]; only square tiles exist in InternVL."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"vision {name} must be square, got {value}")
        return int(value[0])
    return int(value)


def _rope_theta(raw: dict[str, Any]) -> float:
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(f"text rope type {rope_type!r} is not supported (only the default RoPE of Qwen3)")
    return float(params.get("rope_theta", raw.get("rope_theta", 1_000_000.0)))


def text_from_dict(raw: dict[str, Any]) -> TextConfig:
    archs = raw.get("architectures") or []
    for arch in archs:
        if arch in UNSUPPORTED_ARCHS:
            raise ConfigError(f"language model {arch}: {UNSUPPORTED_ARCHS[arch]}")
    model_type = raw.get("model_type", "qwen3")
    if model_type not in ("qwen3", "qwen3_moe"):
        raise ConfigError(f"language model model_type {model_type!r} is not supported; expected 'qwen3' or 'qwen3_moe'")
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    experts = int(raw.get("num_experts", raw.get("num_local_experts", 0)) or 0) if model_type == "qwen3_moe" else 0
    return TextConfig(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        max_position_embeddings=int(raw.get("max_position_embeddings", 40960)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(raw),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        hidden_act=raw.get("hidden_act", "silu"),
        num_experts=experts,
        num_experts_per_tok=int(raw.get("num_experts_per_tok", 8)),
        moe_intermediate_size=int(raw.get("moe_intermediate_size", 768)),
        norm_topk_prob=bool(raw.get("norm_topk_prob", True)),
        router_aux_loss_coef=float(raw.get("router_aux_loss_coef", 0.001)),
        decoder_sparse_step=int(raw.get("decoder_sparse_step", 1)),
        mlp_only_layers=tuple(raw.get("mlp_only_layers") or ()),
    )


def text_to_dict(t: TextConfig, layout: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads, "head_dim": t.head_dim,
        "max_position_embeddings": t.max_position_embeddings, "rms_norm_eps": t.rms_norm_eps,
        "tie_word_embeddings": t.tie_word_embeddings, "hidden_act": t.hidden_act, "attention_bias": False,
        "model_type": "qwen3_moe" if t.is_moe else "qwen3",
        "architectures": ["Qwen3MoeForCausalLM" if t.is_moe else "Qwen3ForCausalLM"],
    }
    if layout == "hf":
        out["rope_parameters"] = {"rope_theta": t.rope_theta, "rope_type": "default"}
    else:
        out["rope_theta"] = t.rope_theta
    if t.is_moe:
        out["num_local_experts" if layout == "hf" else "num_experts"] = t.num_experts
        out.update(num_experts_per_tok=t.num_experts_per_tok, moe_intermediate_size=t.moe_intermediate_size,
                   norm_topk_prob=t.norm_topk_prob, router_aux_loss_coef=t.router_aux_loss_coef,
                   decoder_sparse_step=t.decoder_sparse_step, mlp_only_layers=list(t.mlp_only_layers))
    return out


def vision_from_original(raw: dict[str, Any], force_image_size: int | None) -> VisionConfig:
    image_size = _pair(raw.get("image_size", 448), "image_size")
    if force_image_size and int(force_image_size) != image_size:
        raise ConfigError(f"force_image_size={force_image_size} differs from vision image_size={image_size}; "
                          "resize the position embeddings and save a consistent checkpoint first")
    return VisionConfig(
        hidden_size=int(raw["hidden_size"]), num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=int(raw["num_attention_heads"]), intermediate_size=int(raw["intermediate_size"]),
        image_size=image_size, patch_size=_pair(raw.get("patch_size", 14), "patch_size"),
        num_channels=int(raw.get("num_channels", 3)), qkv_bias=bool(raw.get("qkv_bias", True)),
        qk_normalization=bool(raw.get("qk_normalization", False)), norm_type=raw.get("norm_type", "layer_norm"),
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-6)), hidden_act=raw.get("hidden_act", "gelu"),
        initializer_factor=float(raw.get("initializer_factor", 0.1)),
    )


def vision_from_hf(raw: dict[str, Any]) -> VisionConfig:
    if not raw.get("use_mean_pooling", True):
        raise ConfigError("vision use_mean_pooling=false (an extra final LayerNorm) is not an InternVL3.5 layout")
    if not raw.get("use_absolute_position_embeddings", True):
        raise ConfigError("vision use_absolute_position_embeddings=false is not an InternVL3.5 layout")
    return VisionConfig(
        hidden_size=int(raw["hidden_size"]), num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=int(raw["num_attention_heads"]), intermediate_size=int(raw["intermediate_size"]),
        image_size=_pair(raw.get("image_size", 448), "image_size"), patch_size=_pair(raw.get("patch_size", 14), "patch_size"),
        num_channels=int(raw.get("num_channels", 3)), qkv_bias=bool(raw.get("attention_bias", False)),
        qk_normalization=bool(raw.get("use_qk_norm", False)), norm_type=raw.get("norm_type", "layer_norm"),
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-6)), hidden_act=raw.get("hidden_act", "gelu"),
        initializer_factor=float(raw.get("layer_scale_init_value", 0.1)),
    )


def vision_to_dict(v: VisionConfig, layout: str) -> dict[str, Any]:
    common = {"hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
              "num_attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size,
              "num_channels": v.num_channels, "norm_type": v.norm_type, "layer_norm_eps": v.layer_norm_eps,
              "hidden_act": v.hidden_act}
    if layout == "hf":
        return {**common, "model_type": "internvl_vision", "image_size": [v.image_size] * 2,
                "patch_size": [v.patch_size] * 2, "attention_bias": v.qkv_bias, "use_qk_norm": v.qk_normalization,
                "layer_scale_init_value": v.initializer_factor, "use_mean_pooling": True,
                "use_absolute_position_embeddings": True}
    return {**common, "model_type": "intern_vit_6b", "architectures": ["InternVisionModel"], "image_size": v.image_size,
            "patch_size": v.patch_size, "qkv_bias": v.qkv_bias, "qk_normalization": v.qk_normalization,
            "initializer_factor": v.initializer_factor}


def _router_from(raw: dict[str, Any]) -> RouterConfig | None:
    if not raw.get("flash_mode"):
        return None
    return RouterConfig(relative_threshold=float(raw.get("flash_relative_threshold", 0.5)),
                        absolute_threshold=float(raw.get("flash_absolute_threshold", 0.0)))


def detect_layout(raw: dict[str, Any]) -> str:
    if "llm_config" in raw:
        return "original"
    if "text_config" in raw:
        return "hf"
    raise ConfigError("config.json has neither 'llm_config' (original InternVL layout) nor 'text_config' (HF layout); "
                      f"model_type={raw.get('model_type')!r} is not an InternVL checkpoint")


def from_dict(raw: dict[str, Any]) -> InternVLConfig:
    if "vision_config" not in raw:
        raise ConfigError("config.json has no 'vision_config'; not an InternVL checkpoint")
    layout = detect_layout(raw)
    try:
        if layout == "original":
            text = text_from_dict(raw["llm_config"])
            vision = vision_from_original(raw["vision_config"], raw.get("force_image_size"))
            image_token_id = raw.get("image_token_id")
        else:
            vision = vision_from_hf(raw["vision_config"])
            text_raw = dict(raw["text_config"])
            # transformers ties lm_head from the top-level flag of InternVLConfig (default true).
            text_raw["tie_word_embeddings"] = raw.get("tie_word_embeddings", True)
            text = text_from_dict(text_raw)
            image_token_id = raw.get("image_token_id")
            if raw.get("vision_feature_select_strategy", "default") != "default":
                raise ConfigError("vision_feature_select_strategy must be 'default' (drop the CLS token)")
    except KeyError as e:
        raise ConfigError(f"config.json ({layout} layout) is missing the required field {e.args[0]!r}") from e
    return InternVLConfig(
        vision=vision, text=text,
        downsample_ratio=float(raw.get("downsample_ratio", 0.5)),
        select_layer=int(raw.get("select_layer", raw.get("vision_feature_layer", -1))),
        ps_version=raw.get("ps_version", "v2"), template=raw.get("template", "internvl2_5"),
        dynamic_image_size=bool(raw.get("dynamic_image_size", True)), use_thumbnail=bool(raw.get("use_thumbnail", True)),
        min_dynamic_patch=int(raw.get("min_dynamic_patch", 1)), max_dynamic_patch=int(raw.get("max_dynamic_patch", 12)),
        image_token_id=None if image_token_id is None else int(image_token_id), router=_router_from(raw),
    )


def _common_fields(c: InternVLConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"downsample_ratio": c.downsample_ratio, "template": c.template, "ps_version": c.ps_version,
                           "dynamic_image_size": c.dynamic_image_size, "use_thumbnail": c.use_thumbnail,
                           "min_dynamic_patch": c.min_dynamic_patch, "max_dynamic_patch": c.max_dynamic_patch}
    if c.image_token_id is not None:
        out["image_token_id"] = c.image_token_id
    if c.router is not None:
        out.update(flash_mode=True, flash_relative_threshold=c.router.relative_threshold,
                   flash_absolute_threshold=c.router.absolute_threshold)
    return out


def to_dict(c: InternVLConfig, layout: str = "original") -> dict[str, Any]:
    if layout == "original":
        return {**_common_fields(c), "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
                "vision_config": vision_to_dict(c.vision, layout), "llm_config": text_to_dict(c.text, layout),
                "select_layer": c.select_layer, "force_image_size": c.vision.image_size}
    if layout == "hf":
        return {**_common_fields(c), "architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl",
                "vision_config": vision_to_dict(c.vision, layout), "text_config": text_to_dict(c.text, layout),
                "vision_feature_layer": c.select_layer, "vision_feature_select_strategy": "default",
                "image_seq_length": c.tokens_per_tile, "projector_hidden_act": "gelu",
                "tie_word_embeddings": c.text.tie_word_embeddings}
    raise ConfigError(f"unknown checkpoint layout {layout!r}; expected 'original' or 'hf'")
