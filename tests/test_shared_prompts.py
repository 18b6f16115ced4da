"""Requests admitted together with the same prompt (the samples of one RL group) share one prefill, and each
samples exactly as it would alone."""

from __future__ import annotations

import pytest
import torch

from internvl35.engine import Engine, Request, SamplingParams
from internvl35.model.internvl import ImageFeatures
from tests.test_engine import GREEDY, _model, _pixels, _prompt


@pytest.fixture(scope="module")
def model():
    return _model()


def _group(model, tiles: int, n: int = 4) -> list[Request]:
    """n samples of one prompt: the same tokens, equal pixels in separate tensors, a seed each."""
    ids = _prompt(30, tiles * model.config.tokens_per_tile, seed=tiles)
    return [Request(list(ids), SamplingParams(max_new_tokens=8, temperature=1.0, seed=i),
                    pixel_values=_pixels(tiles, seed=5) if tiles else None) for i in range(n)]


def _alone(model, request: Request) -> list[int]:
    engine = Engine(model, eos_token_ids=[], image_cache_bytes=0, prefix_cache_bytes=0)
    return engine.generate([request])[0].token_ids


def _count_prefilled(engine: Engine) -> list[int]:
    """Records the prompt lengths each packed prefill runs."""
    runs: list[int] = []
    packed = engine.runner._prefill_packed
    engine.runner._prefill_packed = lambda seqs: runs.extend(s.num_prompt_tokens for s in seqs) or packed(seqs)
    return runs


@pytest.mark.parametrize("tiles", [0, 2])
def test_samples_of_one_prompt_share_a_prefill_and_sample_as_if_alone(model, tiles):
    group = _group(model, tiles)
    engine = Engine(model, eos_token_ids=[])
    runs = _count_prefilled(engine)
    outs = engine.generate(group)
    assert runs == [len(group[0].input_ids)]  # one prompt ran; three copied it
    assert [o.token_ids for o in outs] == [_alone(model, r) for r in group]
    assert len({tuple(o.token_ids) for o in outs}) > 1  # the seeds do differ


def test_a_group_is_admitted_in_one_step_past_the_prefill_budget(model):
    group = _group(model, 0)
    n = len(group[0].input_ids)
    other = Request(_prompt(30, seed=77), GREEDY)
    engine = Engine(model, eos_token_ids=[], max_prefill_tokens=n + 5)
    for r in [*group, other]:
        engine.add_request(r)
    assert len(engine.scheduler.admit()) == len(group)  # the copies cost nothing; the other prompt waits


def test_same_tokens_with_other_images_or_ready_made_features_run_each(model):
    tiles = 1
    ids = _prompt(30, tiles * model.config.tokens_per_tile, seed=3)
    feats = ImageFeatures(0.5 * torch.randn(model.config.tokens_per_tile, model.config.text.hidden_size),
                          (model.config.tokens_per_tile,))
    requests = [Request(list(ids), GREEDY, pixel_values=_pixels(1, seed=1)),
                Request(list(ids), GREEDY, pixel_values=_pixels(1, seed=2)),
                Request(list(ids), GREEDY, image_features=feats),
                Request(list(ids), GREEDY, image_features=feats)]
    engine = Engine(model, eos_token_ids=[])
    runs = _count_prefilled(engine)
    outs = engine.generate(requests)
    assert runs == [len(ids)] * 4
    assert [o.token_ids for o in outs] == [_alone(model, r) for r in requests]


def test_the_prefix_cache_switch_turns_sharing_off(model):
    engine = Engine(model, eos_token_ids=[], prefix_cache_bytes=0)
    runs = _count_prefilled(engine)
    group = _group(model, 1, n=2) + _group(model, 0, n=2)
    outs = engine.generate(group)
    assert runs == [len(r.input_ids) for r in group]
    assert [o.token_ids for o in outs] == [_alone(model, r) for r in group]


def test_a_group_continuing_a_kept_prefix_reuses_it_once_and_copies_it(model):
    first = Request(_prompt(40, model.config.tokens_per_tile, seed=21), GREEDY, pixel_values=_pixels(1, seed=21))
    engine = Engine(model, eos_token_ids=[])
    answer = engine.generate([first])[0].token_ids
    ids = first.input_ids + answer + _prompt(10, seed=22)
    group = [Request(list(ids), SamplingParams(max_new_tokens=6, temperature=1.0, seed=k),
                     pixel_values=first.pixel_values.clone()) for k in range(3)]
    runs = _count_prefilled(engine)
    outs = engine.generate(group)
    assert runs == [] and engine.runner.prefix_cache.hits == 1  # the leader ran its suffix; the others copied
    assert [o.token_ids for o in outs] == [_alone(model, r) for r in group]


# ---- from requests still running -------------------------------------------------------------------------


def _suffixes(engine: Engine) -> list[tuple[int, int | None]]:
    """Records (tokens reused, source slot or None for a kept block) of each prefill that reuses a prefix."""
    runs: list[tuple[int, int | None]] = []
    suffix = engine.runner._prefill_suffix
    engine.runner._prefill_suffix = lambda seq, start, source: runs.append(
        (start, source if isinstance(source, int) else None)) or suffix(seq, start, source)
    return runs


def _long_group(model, tiles: int, n: int) -> list[Request]:
    """As `_group`, with prompts past MIN_REUSE tokens, the shortest prefix worth copying."""
    ids = _prompt(40, tiles * model.config.tokens_per_tile, seed=10 + tiles)
    return [Request(list(ids), SamplingParams(max_new_tokens=8, temperature=1.0, seed=i),
                    pixel_values=_pixels(tiles, seed=5) if tiles else None) for i in range(n)]


def _late_sample(model, group: list[Request], engine: Engine, steps: int = 3) -> list:
    """The group's first request runs for `steps` steps alone; then the rest are added (a group split across
    admissions: more samples than free slots)."""
    first = engine.add_request(group[0])
    outs = {}
    for _ in range(steps):
        outs.update((o.request_id, o) for o in engine.step() if o.finished)
    rest = [engine.add_request(r) for r in group[1:]]
    done = engine.wait([first, *rest], done=outs)
    return [done[i] for i in [first, *rest]]


@pytest.mark.parametrize("tiles", [0, 1])
def test_a_sample_added_while_its_prompt_runs_copies_that_slot(model, tiles):
    group = _long_group(model, tiles, n=3)
    engine = Engine(model, eos_token_ids=[])
    packed, suffixes = _count_prefilled(engine), _suffixes(engine)
    outs = _late_sample(model, group, engine)
    n = len(group[0].input_ids)
    assert packed == [n]  # only the first ran its prompt
    assert suffixes == [(n - 1, 0)]  # the next copied slot 0's prompt and ran its last token; the third copied it
    assert [o.token_ids for o in outs] == [_alone(model, r) for r in group]


def test_a_prompt_sharing_only_a_prefix_with_a_running_one_reuses_that_prefix(model):
    tpt = model.config.tokens_per_tile
    head = _prompt(40, tpt, seed=31)  # system prompt and image
    first = Request(head + _prompt(6, seed=32), GREEDY, pixel_values=_pixels(1, seed=31))
    second = Request(head + _prompt(9, seed=33), GREEDY, pixel_values=_pixels(1, seed=31))
    engine = Engine(model, eos_token_ids=[])
    suffixes = _suffixes(engine)
    outs = _late_sample(model, [first, second], engine, steps=1)
    common = next(i for i, (a, b) in enumerate(zip(first.input_ids, second.input_ids)) if a != b)
    assert suffixes == [(common, 0)]
    assert [o.token_ids for o in outs] == [_alone(model, r) for r in (first, second)]


def test_a_running_request_is_no_source_once_the_weights_change(model):
    group = _long_group(model, 0, n=2)
    engine = Engine(model, eos_token_ids=[])
    packed, suffixes = _count_prefilled(engine), _suffixes(engine)
    first = engine.add_request(group[0])
    engine.step()
    with torch.no_grad():  # an RL weight sync while the first request runs
        model.language_model.model.norm.weight.mul_(1.0)
    done = engine.wait([first, engine.add_request(group[1])])
    assert suffixes == [] and packed == [len(group[0].input_ids)] * 2  # the second ran its whole prompt
    assert done[first].finished
