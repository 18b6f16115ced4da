"""The full model: InternViT -> pixel shuffle -> mlp1 -> Qwen3, with image features merged at <IMG_CONTEXT>.

`forward` is pure: token ids plus pixel tiles or precomputed `ImageFeatures` (and optional attention
metadata / cache passed in) -> logits, or a loss when labels are given. Caches, sampling and
scheduling belong to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internvl35.config import InternVLConfig
from internvl35.data.chat import IGNORE_INDEX
from internvl35.model.attention import AttentionInput, causal_input
from internvl35.model.projector import make_projector, pixel_shuffle
from internvl35.model.qwen3 import Qwen3ForCausalLM, load_balancing_loss
from internvl35.model.vision import InternViT



@dataclass(frozen=True)
class ImageFeatures:
    """Projected image features, ready to replace the <IMG_CONTEXT> embeddings in prompt order.

    embeds: (N, D) rows, tiles in prompt order (an image's tiles in tiling order, thumbnail last).
    tokens_per_tile: LLM tokens of each tile (256, or 64 for a tile ViR compressed); sums to N.
    The same value is produced in-process and sent by a vision server.
    """

    embeds: Tensor
    tokens_per_tile: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.embeds.dim() != 2 or self.embeds.shape[0] != sum(self.tokens_per_tile):
            raise ValueError(f"ImageFeatures: embeds {tuple(self.embeds.shape)} do not match "
                             f"tokens_per_tile summing to {sum(self.tokens_per_tile)}")

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def concat(parts: list[ImageFeatures], device: torch.device | str | None = None) -> ImageFeatures:
        """One ImageFeatures of `parts` in order, on `device` (default: the first part's). Parts may come from
        different devices: features a client computed (e.g. a vision server's, on the CPU) next to ones encoded here."""
        device = parts[0].embeds.device if device is None else device
        return ImageFeatures(torch.cat([p.embeds.to(device) for p in parts]),
                             tuple(t for p in parts for t in p.tokens_per_tile))

    def split(self, tiles: list[int]) -> list[ImageFeatures]:
        """Inverse of concat: consecutive groups of `tiles[i]` tiles (e.g. one group per request)."""
        if sum(tiles) != len(self.tokens_per_tile):
            raise ValueError(f"cannot split {len(self.tokens_per_tile)} tiles into groups of {tiles}")
        out, tile, row = [], 0, 0
        for n in tiles:
            counts = self.tokens_per_tile[tile:tile + n]
            out.append(ImageFeatures(self.embeds[row:row + sum(counts)], counts))
            tile, row = tile + n, row + sum(counts)
        return out


@dataclass
class ModelOutput:
    logits: Tensor | None
    loss: Tensor | None = None
    aux_loss: Tensor | None = None
    hidden: Tensor | None = None


class InternVLModel(nn.Module):
    def __init__(self, config: InternVLConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = InternViT(config.vision)
        self.mlp1 = make_projector(config.vision.hidden_size, config.downsample_ratio, config.text.hidden_size)
        self.language_model = Qwen3ForCausalLM(config.text)

    # ---- vision ----------------------------------------------------------------------------------------

    def encode_images(self, pixels: Tensor) -> ImageFeatures:
        """pixel tiles (N, 3, H, W) -> ImageFeatures with `tokens_per_tile` rows per tile."""
        weight = self.mlp1[1].weight
        feats = self.vision_model(pixels.to(weight.device, weight.dtype), self.config.vision_layers_used)  # (N, g*g, C)
        feats = self.mlp1(pixel_shuffle(feats, self.config.downsample_ratio))  # (N, t, D)
        N, t, D = feats.shape
        return ImageFeatures(feats.reshape(N * t, D), (t,) * N)

    # ---- language --------------------------------------------------------------------------------------

    @property
    def image_token_id(self) -> int | None:
        return self.config.image_token_id

    def embed(self, input_ids: Tensor, images: ImageFeatures | None) -> Tensor:
        """Token embeddings with the image features written, in order, over the <IMG_CONTEXT> positions."""
        embeds = self.language_model.model.embed_tokens(input_ids)
        n_slots = 0 if self.image_token_id is None else int((input_ids == self.image_token_id).sum())
        n_feats = 0 if images is None else images.num_tokens
        if n_slots != n_feats:
            raise ValueError(f"image features and image tokens do not match: {n_slots} <IMG_CONTEXT> positions "
                             f"in the input, {n_feats} feature rows")
        if n_feats:
            mask = (input_ids == self.image_token_id)[..., None]
            embeds = embeds.masked_scatter(mask, images.embeds.to(embeds.device, embeds.dtype))
        return embeds

    def forward(
        self,
        input_ids: Tensor,
        *,
        pixel_values: Tensor | None = None,
        image_features: ImageFeatures | None = None,
        attn: AttentionInput | None = None,
        labels: Tensor | None = None,
        logits_at: Tensor | None = None,
        return_hidden: bool = False,
    ) -> ModelOutput:
        """input_ids (B, T) [+ pixel tiles or features] -> logits (B, T, V), or loss with labels.

        logits_at: optional (B, K) indices; logits are computed only at those positions (B, K, V),
        which saves the vocabulary projection of a long prefill.
        """
        if pixel_values is not None and image_features is not None:
            raise ValueError("pass either pixel_values or image_features, not both")
        if pixel_values is not None and pixel_values.shape[0] > 0:
            image_features = self.encode_images(pixel_values)
        B, T = input_ids.shape
        attn = attn if attn is not None else causal_input(B, T, input_ids.device)
        hidden, router_logits = self.language_model.model(self.embed(input_ids, image_features), attn)
        out = ModelOutput(logits=None, hidden=hidden if return_hidden else None)
        if router_logits:
            t = self.config.text
            out.aux_loss = load_balancing_loss(router_logits, t.num_experts, t.num_experts_per_tok)
        if labels is not None:
            out.logits = self.language_model.logits(hidden)
            out.loss = next_token_loss(out.logits, labels)
            if out.aux_loss is not None:
                out.loss = out.loss + self.config.text.router_aux_loss_coef * out.aux_loss
            return out
        if logits_at is not None:
            hidden = hidden.gather(1, logits_at[..., None].expand(-1, -1, hidden.shape[-1]))
        out.logits = self.language_model.logits(hidden)
        return out


@torch.no_grad()
def init_weights(model: InternVLModel, std: float = 0.02) -> None:
    """Initialisation for training from scratch: N(0, std) matrices and embeddings, zero biases, unit norms,
    layer scales at the config's init value. (PyTorch's defaults give an N(0, 1) embedding, which a tied
    lm_head turns into logits with a std of ~sqrt(D).)"""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("ls1", "ls2"):
            p.fill_(model.config.vision.initializer_factor)
        elif leaf == "bias":
            p.zero_()
        elif p.dim() == 1:  # norm weights
            p.fill_(1.0)
        else:
            p.normal_(0.0, std)


def next_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of predicting labels[t + 1] from position t, ignoring IGNORE_INDEX."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
