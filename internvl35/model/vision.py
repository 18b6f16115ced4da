"""InternViT: patch embedding + CLS + learned positions, then pre-norm blocks with layer scale.

Parameter names are the original checkpoint's (`vision_model.embeddings.class_embedding`, `...layers.{i}.attn.qkv`),
so loading the original layout needs no mapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internvl35.config import VisionConfig
from internvl35.model.linear import Linear
from internvl35.model.norm import RMSNorm, make_norm


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        C, g = cfg.hidden_size, cfg.grid_size
        self.patch_size = cfg.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, C))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, C, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + g * g, C))

    def _positions(self, h: int, w: int) -> Tensor:
        """Patch positions resized bicubically when the tile's patch grid differs from the trained one."""
        pos = self.position_embedding
        g = int((pos.shape[1] - 1) ** 0.5)
        if (h, w) == (g, g):
            return pos
        C = pos.shape[-1]
        grid = pos[:, 1:].reshape(1, g, g, C).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, C).to(pos.dtype)
        return torch.cat([pos[:, :1], grid], dim=1)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # (N, C, h, w)
        _, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (N, h*w, C)
        cls = self.class_embedding.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self._positions(h, w)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        C = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.qkv = Linear(C, 3 * C, bias=cfg.qkv_bias)
        self.proj = Linear(C, C)
        self.qk_normalization = cfg.qk_normalization
        if cfg.qk_normalization:
            # InternViT-6B normalises the whole C-wide q and k, before the split into heads.
            self.q_norm = RMSNorm(C, cfg.layer_norm_eps)
            self.k_norm = RMSNorm(C, cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, N, C)
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(B, N, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, nh, N, hs)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        C = cfg.hidden_size
        self.norm1 = make_norm(cfg.norm_type, C, cfg.layer_norm_eps)
        self.attn = VisionAttention(cfg)
        self.ls1 = nn.Parameter(torch.full((C,), cfg.initializer_factor))
        self.norm2 = make_norm(cfg.norm_type, C, cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)
        self.ls2 = nn.Parameter(torch.full((C,), cfg.initializer_factor))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_hidden_layers))


class InternViT(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)

    def forward(self, pixels: Tensor, num_layers: int | None = None) -> Tensor:
        """pixels (N, 3, H, W) -> patch features (N, h*w, C) after `num_layers` blocks, CLS dropped."""
        x = self.embeddings(pixels)
        for block in self.encoder.layers[: num_layers or len(self.encoder.layers)]:
            x = block(x)
        return x[:, 1:]
