"""One typed config tree for InternVL3.5: vision tower, projector, language model (and router).

Reads and writes `config.json` in both layouts a user meets:
- original (remote-code) layout: `InternVLChatConfig` with `vision_config` + `llm_config`;
- HF layout: `InternVLConfig` with `vision_config` + `text_config` (+ `image_token_id`).

Derived sizes (head_dim defaults, tokens per tile, grid size) are properties, never stored. Invalid
values fail at construction and name the offending field and value.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from internvl35.atomic import atomic_write_text


class ConfigError(ValueError):
    """A config value is invalid or a config file cannot be understood."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class VisionConfig:
    """InternViT. 300M: LayerNorm + qkv bias; 6B: RMSNorm + QK norm, no bias."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    qk_normalization: bool = False
    norm_type: str = "layer_norm"  # "layer_norm" | "rms_norm"
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    initializer_factor: float = 0.1  # layer-scale init value

    def __post_init__(self) -> None:
        _require(self.norm_type in ("layer_norm", "rms_norm"), f"vision norm_type must be 'layer_norm' or 'rms_norm', got {self.norm_type!r}")
        _require(self.hidden_size % self.num_attention_heads == 0,
                 f"vision hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        _require(self.image_size % self.patch_size == 0,
                 f"vision image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        _require(self.hidden_act == "gelu", f"vision hidden_act must be 'gelu', got {self.hidden_act!r}")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size"):
            _require(getattr(self, name) > 0, f"vision {name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        """Patches per side of one tile (32 at 448 px / 14 px patches)."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    """Qwen3 dense or Qwen3-MoE decoder (`num_experts > 0` means MoE)."""

    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    max_position_embeddings: int = 40960
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    # MoE (Qwen3-MoE); zero experts = dense.
    num_experts: int = 0
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.001
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _require(self.num_attention_heads % self.num_key_value_heads == 0,
                 f"text num_attention_heads={self.num_attention_heads} is not a multiple of num_key_value_heads={self.num_key_value_heads}")
        _require(self.head_dim % 2 == 0, f"text head_dim must be even for RoPE, got {self.head_dim}")
        _require(self.hidden_act == "silu", f"text hidden_act must be 'silu', got {self.hidden_act!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            _require(getattr(self, name) > 0, f"text {name} must be positive, got {getattr(self, name)}")
        if self.is_moe:
            _require(0 < self.num_experts_per_tok <= self.num_experts,
                     f"text num_experts_per_tok={self.num_experts_per_tok} must be in 1..num_experts={self.num_experts}")
            _require(self.decoder_sparse_step > 0, f"text decoder_sparse_step must be positive, got {self.decoder_sparse_step}")
            # The experts run as grouped matmuls (`qwen3.Experts`), whose kernels need rows of a multiple of 16 bytes.
            _require(self.hidden_size % 8 == 0 and self.moe_intermediate_size % 8 == 0,
                     f"text hidden_size={self.hidden_size} and moe_intermediate_size={self.moe_intermediate_size} must be "
                     "multiples of 8 for the grouped expert matmuls")
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers))

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def layer_is_moe(self, i: int) -> bool:
        return self.is_moe and i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0


@dataclass(frozen=True)
class RouterConfig:
    """ViR (Flash models). Present only when `flash_mode` is on; thresholds are config values."""

    relative_threshold: float = 0.5
    absolute_threshold: float = 0.0


@dataclass(frozen=True)
class InternVLConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    downsample_ratio: float = 0.5
    select_layer: int = -1
    ps_version: str = "v2"
    template: str = "internvl2_5"
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    image_token_id: int | None = None  # from the tokenizer when the checkpoint does not say
    router: RouterConfig | None = None

    def __post_init__(self) -> None:
        _require(self.ps_version == "v2", f"only pixel shuffle ps_version='v2' is supported (InternVL3.5), got {self.ps_version!r}")
        scale = round(1 / self.downsample_ratio)
        _require(abs(scale * self.downsample_ratio - 1) < 1e-6 and scale >= 1,
                 f"downsample_ratio must be 1/k for an integer k, got {self.downsample_ratio}")
        _require(self.vision.grid_size % scale == 0,
                 f"downsample_ratio={self.downsample_ratio} does not divide the {self.vision.grid_size}x{self.vision.grid_size} patch grid")
        _require(-self.vision.num_hidden_layers <= self.select_layer < self.vision.num_hidden_layers,
                 f"select_layer={self.select_layer} is outside the {self.vision.num_hidden_layers} vision layers")
        _require(1 <= self.min_dynamic_patch <= self.max_dynamic_patch,
                 f"need 1 <= min_dynamic_patch <= max_dynamic_patch, got {self.min_dynamic_patch}, {self.max_dynamic_patch}")
        if self.router is not None:
            _require(self.vision.grid_size % 4 == 0, f"ViR needs a patch grid divisible by 4, got {self.vision.grid_size}")

    @property
    def tokens_per_tile(self) -> int:
        """LLM tokens one tile becomes after pixel shuffle (256 at 448 px, ratio 0.5)."""
        return (self.vision.grid_size // round(1 / self.downsample_ratio)) ** 2

    @property
    def compressed_tokens_per_tile(self) -> int:
        """Tokens for a tile routed to the 1/16 connector (64 at 448 px)."""
        return (self.vision.grid_size // 4) ** 2

    @property
    def vision_layers_used(self) -> int:
        return self.select_layer + 1 if self.select_layer >= 0 else self.vision.num_hidden_layers + 1 + self.select_layer

    def replace(self, **changes: Any) -> InternVLConfig:
        return dataclasses.replace(self, **changes)

    # ---- reading and writing config.json -------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> InternVLConfig:
        from internvl35 import config_io

        return config_io.from_dict(raw)

    def to_dict(self, layout: str = "original") -> dict[str, Any]:
        from internvl35 import config_io

        return config_io.to_dict(self, layout)

    @classmethod
    def load(cls, path: str | Path) -> InternVLConfig:
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.exists():
            raise ConfigError(f"no config.json found at {file}")
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file} is not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{file} must hold a JSON object, got {type(raw).__name__}")
        try:
            return cls.from_dict(raw)
        except (TypeError, AttributeError, KeyError) as e:  # a field of the wrong JSON type: null, a string, a list
            raise ConfigError(f"{file} has a field of the wrong type: {e}") from e

    def save(self, path: str | Path, layout: str = "original") -> None:
        path = Path(path)
        file = path / "config.json" if path.is_dir() or not path.suffix else path
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(file, json.dumps(self.to_dict(layout), indent=2, sort_keys=True) + "\n")
