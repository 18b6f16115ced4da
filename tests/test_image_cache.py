"""The engine's image feature cache: reuse for the same pixels and weights, never across a weight change."""

from __future__ import annotations

import copy

import pytest
import torch

from internvl35.engine import Engine, Request
from internvl35.engine.image_cache import ImageFeatureCache
from internvl35.model.internvl import ImageFeatures
from tests.test_engine import GREEDY, _model, _pixels, _prompt


@pytest.fixture
def model():
    return _model()


def _count_encodes(monkeypatch, model) -> list[int]:
    """Tiles passed to each ViT call."""
    calls: list[int] = []
    encode = model.encode_images

    def counting(pixels):
        calls.append(pixels.shape[0])
        return encode(pixels)

    monkeypatch.setattr(model, "encode_images", counting)
    return calls


def _request(model, tiles: int, seed: int, n_text: int = 6) -> Request:
    return Request(_prompt(n_text, tiles * model.config.tokens_per_tile, seed=seed), GREEDY,
                   pixel_values=_pixels(tiles, seed))


def test_a_follow_up_on_the_same_image_skips_the_vit_and_answers_the_same(model, monkeypatch):
    uncached = Engine(model, eos_token_ids=[], image_cache_bytes=0)
    expected = [uncached.generate([_request(model, 2, seed=s, n_text=n)])[0].token_ids for s, n in ((1, 6), (1, 15))]
    calls = _count_encodes(monkeypatch, model)
    engine = Engine(model, eos_token_ids=[])
    first = engine.generate([_request(model, 2, seed=1)])[0].token_ids
    second = engine.generate([_request(model, 2, seed=1, n_text=15)])[0].token_ids  # same image, longer prompt
    assert [first, second] == expected
    assert calls == [2]  # the second request's tiles came from the cache
    assert (engine.runner.image_cache.hits, engine.runner.image_cache.misses) == (1, 1)
    engine.generate([_request(model, 2, seed=2)])  # other pixels: encoded
    assert calls == [2, 2]


def test_the_same_image_twice_in_one_batch_is_encoded_once(model, monkeypatch):
    calls = _count_encodes(monkeypatch, model)
    outs = Engine(model, eos_token_ids=[]).generate(
        [_request(model, 1, seed=3), _request(model, 1, seed=3, n_text=9), _request(model, 2, seed=4)])
    assert calls == [3]  # one ViT call: 1 tile for both seed-3 requests + 2 tiles
    calls.clear()
    alone = Engine(model, eos_token_ids=[], image_cache_bytes=0).generate([_request(model, 1, seed=3, n_text=9)])
    assert outs[1].token_ids == alone[0].token_ids
    assert calls == [1]


@pytest.mark.parametrize("change", ["in_place", "optimizer_step"])
def test_a_weight_change_is_never_served_stale_features(model, monkeypatch, change):
    engine = Engine(model, eos_token_ids=[])
    engine.generate([_request(model, 1, seed=5)])
    vision_weight = next(model.vision_model.parameters())
    if change == "in_place":  # load_state_dict, an RL weight sync
        with torch.no_grad():
            vision_weight.add_(0.5)
    else:  # fused AdamW writes weights without bumping their version counters
        opt = torch.optim.AdamW([vision_weight], lr=0.5, fused=True)
        vision_weight.grad = torch.ones_like(vision_weight)
        opt.step()
    calls = _count_encodes(monkeypatch, model)
    after = engine.generate([_request(model, 1, seed=5)])[0].token_ids
    assert calls == [1]
    assert len(engine.runner.image_cache) == 1  # the old weights' entry was dropped
    fresh = Engine(model, eos_token_ids=[], image_cache_bytes=0).generate([_request(model, 1, seed=5)])[0].token_ids
    assert after == fresh


def _features(rows: int) -> ImageFeatures:
    return ImageFeatures(torch.zeros(rows, 4), (rows,))  # rows * 16 bytes


def test_least_recently_used_entries_go_first_within_the_byte_budget():
    cache = ImageFeatureCache(max_bytes=3 * 160)
    keys = [cache.key(torch.full((1, 3, 2, 2), float(i)), ("v",)) for i in range(4)]
    for k in keys[:3]:
        cache.put(k, _features(10))
    assert cache.get(keys[0]) is not None  # keys[0] is now the most recent
    cache.put(keys[3], _features(10))
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    assert cache.bytes == 3 * 160 and len(cache) == 3
    cache.put(cache.key(torch.zeros(1), ("v",)), _features(100))  # larger than the whole budget: not kept
    assert len(cache) == 3


def test_a_kept_entry_holds_only_its_own_features():
    """An image's features are a view into its batch's; the cache must not keep the whole batch alive."""
    cache = ImageFeatureCache(max_bytes=1 << 20)
    batch = _features(10 + 20 + 30)
    part = ImageFeatures(batch.embeds[10:30], (20,))
    key = cache.key(torch.ones(1, 3, 2, 2), ("v",))
    cache.put(key, part)
    kept = cache.get(key)
    assert torch.equal(kept.embeds, part.embeds)
    assert kept.embeds.untyped_storage().nbytes() == cache.bytes == part.embeds.numel() * part.embeds.element_size()


def test_keys_tell_apart_dtype_shape_and_content():
    cache = ImageFeatureCache(1 << 20)
    x = torch.zeros(2, 3, 4, 4)
    variants = [x, x.clone().view(1, 6, 4, 4), x.double(), x.clone().index_fill_(3, torch.tensor([1]), 1e-7)]
    assert len({cache.key(v, ("v",)) for v in variants}) == 4
    assert cache.key(x, ("v",)) == cache.key(x.clone(), ("v",))


def test_bad_budget_and_off_switch(model):
    with pytest.raises(ValueError, match="image cache size"):
        Engine(model, eos_token_ids=[], image_cache_bytes=-1)
    assert Engine(model, eos_token_ids=[], image_cache_bytes=0).runner.image_cache is None


def test_the_api_passes_the_cache_size_to_its_engine():
    from internvl35.api import InternVL

    assert InternVL.from_pretrained("tiny-test", image_cache_bytes=0).engine.runner.image_cache is None
    assert InternVL.from_pretrained("tiny-test", image_cache_bytes=1 << 20).engine.runner.image_cache.max_bytes == 1 << 20


def test_a_replaced_projector_is_a_weight_change(model, monkeypatch):
    engine = Engine(model, eos_token_ids=[])
    engine.generate([_request(model, 1, seed=6)])
    model.mlp1 = copy.deepcopy(model.mlp1)  # new parameter objects, same values
    calls = _count_encodes(monkeypatch, model)
    engine.generate([_request(model, 1, seed=6)])
    assert calls == [1]
