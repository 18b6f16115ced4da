"""The engine's prefix cache: a prompt that continues a finished request reuses its keys/values, and answers
exactly as if it had been prefilled from scratch."""

from __future__ import annotations

import pytest
import torch

from internvl35.engine import Engine, Request, SamplingParams
from internvl35.engine.prefix_cache import MIN_REUSE
from internvl35.model.internvl import ImageFeatures
from tests.test_engine import GREEDY, _model, _pixels, _prompt


@pytest.fixture
def model():
    return _model()


def _next_turn(model, tiles: int, seed: int) -> tuple[Request, Request]:
    """A first request, and a second whose prompt is the first's prompt, its answer and new text (same images)."""
    first = Request(_prompt(40, tiles * model.config.tokens_per_tile, seed=seed), GREEDY,
                    pixel_values=_pixels(tiles, seed) if tiles else None)
    answer = Engine(model, eos_token_ids=[], prefix_cache_bytes=0).generate([first])[0].token_ids
    second = Request(first.input_ids + answer + _prompt(10, seed=seed + 1), GREEDY, pixel_values=first.pixel_values)
    return first, second


def _fresh(model, request: Request) -> list[int]:
    return Engine(model, eos_token_ids=[], prefix_cache_bytes=0, image_cache_bytes=0).generate([request])[0].token_ids


@pytest.mark.parametrize("tiles", [0, 2])
def test_a_next_turn_reuses_the_prefix_and_answers_the_same(model, tiles):
    first, second = _next_turn(model, tiles, seed=1)
    engine = Engine(model, eos_token_ids=[])
    engine.generate([first])
    assert engine.generate([second])[0].token_ids == _fresh(model, second)
    cache = engine.runner.prefix_cache
    assert cache.hits == 1


def test_prefix_logits_equal_a_full_prefill(model):
    first, second = _next_turn(model, 1, seed=3)
    engine = Engine(model, eos_token_ids=[], max_batch_size=2)
    engine.generate([first])
    fresh = Engine(model, eos_token_ids=[], max_batch_size=2, prefix_cache_bytes=0)
    logits = []
    for e in (engine, fresh):
        e.add_request(second)
        seqs = e.scheduler.admit()
        logits.append(e.runner.prefill(seqs))
    assert engine.runner.prefix_cache.hits == 1
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_reused_and_packed_prompts_in_one_prefill(model):
    first, second = _next_turn(model, 0, seed=5)
    other = Request(_prompt(50, seed=9), GREEDY)
    engine = Engine(model, eos_token_ids=[])
    engine.generate([first])
    outs = engine.generate([other, second])
    assert engine.runner.prefix_cache.hits == 1
    assert [o.token_ids for o in outs] == [_fresh(model, other), _fresh(model, second)]


def test_other_images_behind_the_same_tokens_are_not_reused(model):
    first, second = _next_turn(model, 1, seed=7)
    engine = Engine(model, eos_token_ids=[])
    engine.generate([first])
    other_image = Request(second.input_ids, GREEDY, pixel_values=_pixels(1, seed=99))
    assert engine.generate([other_image])[0].token_ids == _fresh(model, other_image)
    assert engine.runner.prefix_cache.hits == 0


def test_a_weight_change_drops_the_kept_prefixes(model):
    first, second = _next_turn(model, 0, seed=11)
    engine = Engine(model, eos_token_ids=[])
    engine.generate([first])
    with torch.no_grad():
        model.language_model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    assert engine.generate([second])[0].token_ids == _fresh(model, second)
    assert engine.runner.prefix_cache.hits == 0


def test_short_prompts_are_not_kept_and_the_budget_is_respected(model):
    engine = Engine(model, eos_token_ids=[], prefix_cache_bytes=1)
    engine.generate([Request(_prompt(MIN_REUSE + 20, seed=13), GREEDY)])
    assert len(engine.runner.prefix_cache) == 0  # larger than the budget
    engine = Engine(model, eos_token_ids=[])
    engine.generate([Request(_prompt(MIN_REUSE // 2, seed=13), SamplingParams(max_new_tokens=2))])
    assert len(engine.runner.prefix_cache) == 0  # too short to be worth reusing
    with pytest.raises(ValueError, match="prefix cache size"):
        Engine(model, eos_token_ids=[], prefix_cache_bytes=-1)


def test_ready_made_image_features_are_never_keyed_by_their_tokens(model):
    # A vision server's features arrive without pixels: the same <IMG_CONTEXT> ids could be any image.
    tpt = model.config.tokens_per_tile
    ids = _prompt(40, tpt, seed=15)
    features = [ImageFeatures(torch.randn(tpt, model.config.text.hidden_size, generator=torch.Generator().manual_seed(s)),
                              (tpt,)) for s in (1, 2)]
    engine = Engine(model, eos_token_ids=[])
    engine.generate([Request(ids, GREEDY, image_features=features[0])])
    second = Request(ids + _prompt(10, seed=16), GREEDY, image_features=features[1])
    assert engine.generate([second])[0].token_ids == _fresh(model, second)
    assert len(engine.runner.prefix_cache) == 0 and engine.runner.prefix_cache.hits == 0
