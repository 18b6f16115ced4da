"""Config tree: both layouts, presets with real sizes, derived values, named validation errors."""

from __future__ import annotations

import json

import pytest
import torch

from internvl35.config import ConfigError, InternVLConfig, TextConfig, VisionConfig
from internvl35.model.internvl import InternVLModel
from internvl35.presets import preset, preset_names


def _params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


# Published sizes: Qwen3 model cards (0.6B, 1.7B, 4.0B, 8.2B, 14.8B, 32.8B, 30.5B, 235B total parameters);
# InternViT-300M (0.3B) and the 45-layer InternViT-6B of InternVL2.5/3.5 (5.5B).
@pytest.mark.parametrize("name,vit,llm", [("1B", 0.3, 0.6), ("2B", 0.3, 1.7), ("4B", 0.3, 4.0), ("8B", 0.3, 8.2),
                                          ("14B", 0.3, 14.8), ("38B", 5.5, 32.8), ("30B-A3B", 0.3, 30.5),
                                          ("241B-A28B", 5.5, 235.0)])
def test_presets_have_real_sizes(name, vit, llm):
    with torch.device("meta"):
        model = InternVLModel(preset(f"InternVL3.5-{name}"))
    assert _params(model.vision_model) == pytest.approx(vit, rel=0.03)
    assert _params(model.language_model) == pytest.approx(llm, rel=0.03)


def test_derived_sizes_are_computed():
    cfg = preset("InternVL3.5-8B")
    assert cfg.tokens_per_tile == 256 and cfg.compressed_tokens_per_tile == 64
    assert cfg.vision.grid_size == 32 and cfg.vision.head_dim == 64
    small = cfg.replace(vision=VisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=128, image_size=224))
    assert small.tokens_per_tile == 64  # (224 / 14)^2 / 4
    assert cfg.replace(downsample_ratio=0.25).tokens_per_tile == 64


@pytest.mark.parametrize("layout", ["original", "hf"])
@pytest.mark.parametrize("name", ["InternVL3.5-38B", "InternVL3.5-30B-A3B", "tiny-test", "tiny-test-moe"])
def test_roundtrip_both_layouts(tmp_path, layout, name):
    cfg = preset(name).replace(image_token_id=151671)
    cfg.save(tmp_path, layout)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert ("llm_config" in raw) == (layout == "original")
    assert InternVLConfig.load(tmp_path) == cfg


def test_reads_both_config_spellings():
    base = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "model_type": "qwen3_moe",
            "moe_intermediate_size": 16, "num_experts_per_tok": 2}
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
              "image_size": 56, "patch_size": 14}
    old = InternVLConfig.from_dict({"vision_config": vision, "llm_config": {**base, "rope_theta": 5e5, "num_experts": 4}})
    new = InternVLConfig.from_dict({"vision_config": vision, "llm_config": {
        **base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}, "num_local_experts": 4}})
    assert old.text == new.text and old.text.num_experts == 4 and old.text.rope_theta == 5e5


@pytest.mark.parametrize("make,message", [
    (lambda: VisionConfig(hidden_size=30, num_attention_heads=4), "hidden_size=30 is not divisible by num_attention_heads=4"),
    (lambda: VisionConfig(image_size=450), "image_size=450 is not divisible by patch_size=14"),
    (lambda: VisionConfig(norm_type="batch_norm"), "'batch_norm'"),
    (lambda: TextConfig(num_attention_heads=6, num_key_value_heads=4), "num_attention_heads=6 is not a multiple of num_key_value_heads=4"),
    (lambda: TextConfig(num_experts=4, num_experts_per_tok=8), "num_experts_per_tok=8"),
    (lambda: InternVLConfig(downsample_ratio=0.3), "downsample_ratio must be 1/k"),
    (lambda: InternVLConfig(ps_version="v1"), "ps_version='v2'"),
    (lambda: InternVLConfig(select_layer=30), "select_layer=30"),
    (lambda: InternVLConfig(min_dynamic_patch=4, max_dynamic_patch=2), "min_dynamic_patch <= max_dynamic_patch"),
])
def test_invalid_configs_name_the_values(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


@pytest.mark.parametrize("raw,message", [
    ({"model_type": "llava"}, "no 'vision_config'"),
    ({"vision_config": {}}, "neither 'llm_config'"),
    ({"vision_config": {"hidden_size": 8}, "llm_config": {}}, "missing the required field"),
    ({"vision_config": {}, "llm_config": {"architectures": ["GptOssForCausalLM"]}}, "GPT-OSS"),
])
def test_wrong_checkpoint_configs_are_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        InternVLConfig.from_dict(raw)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="known: 1B"):
        preset("InternVL3.5-9B")
    with pytest.raises(ConfigError, match="GPT-OSS"):
        preset("InternVL3.5-20B-A4B")
    assert "InternVL3.5-241B-A28B" in preset_names()


def test_missing_and_corrupt_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        InternVLConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        InternVLConfig.load(tmp_path)
