"""Model pieces: pixel shuffle order, position interpolation, image-count check, tile size as a parameter."""

from __future__ import annotations

import pytest
import torch

from internvl35.checkpoint import build_model
from internvl35.config import VisionConfig
from internvl35.model.internvl import ImageFeatures
from internvl35.model.projector import pixel_shuffle
from internvl35.presets import preset


def test_pixel_shuffle_block_order_and_row_major_tokens():
    g, C = 4, 1
    x = torch.arange(g * g, dtype=torch.float).view(1, g * g, C)  # value = row * 4 + col
    out = pixel_shuffle(x, 0.5)  # (1, 4, 4)
    # token 0 = block rows 0-1, cols 0-1: TL, TR, BL, BR; token 1 = cols 2-3 of the same rows
    assert out[0, 0].tolist() == [0, 1, 4, 5]
    assert out[0, 1].tolist() == [2, 3, 6, 7]
    assert out[0, 2].tolist() == [8, 9, 12, 13]
    quarter = pixel_shuffle(torch.arange(64.0).view(1, 64, 1), 0.25)
    assert quarter.shape == (1, 4, 16) and quarter[0, 1, :4].tolist() == [4, 5, 6, 7]


def test_pixel_shuffle_rejects_bad_grid():
    with pytest.raises(ValueError, match="divisible by 2"):
        pixel_shuffle(torch.zeros(1, 9, 3), 0.5)


def test_image_token_count_mismatch_is_an_error():
    cfg = preset("tiny-test").replace(image_token_id=500)
    model = build_model(cfg)
    ids = torch.tensor([[1, 500, 500, 500, 2]])
    with pytest.raises(ValueError, match="3 <IMG_CONTEXT> positions in the input, 4 feature rows"):
        model(ids, pixel_values=torch.randn(1, 3, 56, 56))
    with pytest.raises(ValueError, match="3 <IMG_CONTEXT> positions in the input, 0 feature rows"):
        model(ids)


def test_precomputed_features_equal_pixels_and_allow_mixed_tile_sizes():
    cfg = preset("tiny-test").replace(image_token_id=500)
    model = build_model(cfg)
    pixels = torch.randn(2, 3, 56, 56)
    ids = torch.tensor([[1] + [500] * 8 + [2]])
    with torch.no_grad():
        feats = model.encode_images(pixels)
        assert feats.tokens_per_tile == (4, 4)
        assert torch.equal(model(ids, pixel_values=pixels).logits, model(ids, image_features=feats).logits)
        mixed = ImageFeatures(feats.embeds[:5], (4, 1))  # e.g. a router shrank the second tile
        model(torch.tensor([[1] + [500] * 5 + [2]]), image_features=mixed)
    with pytest.raises(ValueError, match="do not match"):
        ImageFeatures(feats.embeds[:5], (4, 4))


def test_tile_size_is_a_parameter():
    cfg = preset("tiny-test").replace(vision=VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                          intermediate_size=64, image_size=224), image_token_id=500)
    assert cfg.tokens_per_tile == 64
    feats = build_model(cfg).encode_images(torch.randn(1, 3, 224, 224))
    assert feats.embeds.shape == (64, cfg.text.hidden_size)


def test_position_embeddings_interpolate_for_other_grid():
    model = build_model(preset("tiny-test"))
    emb = model.vision_model.embeddings
    same = emb._positions(4, 4)
    assert same is emb.position_embedding
    bigger = emb._positions(8, 8)
    assert bigger.shape == (1, 65, 32) and torch.equal(bigger[:, 0], emb.position_embedding[:, 0])
    assert model.vision_model(torch.randn(1, 3, 112, 112)).shape == (1, 64, 32)


def test_meta_build_of_largest_preset_allocates_nothing():
    from internvl35.model.internvl import InternVLModel

    with torch.device("meta"):
        model = InternVLModel(preset("InternVL3.5-241B-A28B"))
    assert all(p.is_meta for p in model.parameters())


def test_image_features_split_inverts_concat():
    feats = ImageFeatures(torch.arange(14.0)[:, None], (4, 1, 4, 4, 1))
    parts = feats.split([2, 3])
    assert [p.tokens_per_tile for p in parts] == [(4, 1), (4, 4, 1)]
    again = ImageFeatures.concat(parts)
    assert torch.equal(again.embeds, feats.embeds) and again.tokens_per_tile == feats.tokens_per_tile
    with pytest.raises(ValueError, match="cannot split 5 tiles"):
        feats.split([2, 2])
