"""Engine: cache vs no cache, batched vs single, joining mid-flight, stopping, sampling, streaming, scoring."""

from __future__ import annotations

import pytest
import torch

from internvl35.checkpoint import build_model
from internvl35.engine import Engine, PromptTooLongError, Request, SamplingParams, score
from internvl35.engine.runner import ModelRunner
from internvl35.engine.sampling import sample
from internvl35.engine.sequence import Sequence
from internvl35.model.internvl import ImageFeatures
from internvl35.presets import preset
from tests.hf_reference import randomize

IMG = 500  # <IMG_CONTEXT> id inside the tiny vocab of 512
GREEDY = SamplingParams(max_new_tokens=12)


def detok(ids: list[int]) -> str:
    return "".join(chr(97 + i % 26) for i in ids)


def _model(name: str = "tiny-test", dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    model = build_model(preset(name).replace(image_token_id=IMG))
    randomize(model)
    return model.to(dtype)


@pytest.fixture(scope="module")
def model():
    return _model()


def _prompt(n_text: int, n_image: int = 0, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 400, (n_text,), generator=g).tolist()
    return text[:2] + [IMG] * n_image + text[2:]


def _pixels(tiles: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(tiles, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def _mixed_requests(model, params: SamplingParams = GREEDY) -> list[Request]:
    """Text of several lengths, 1-3 tile images, and precomputed features with a non-uniform tokens_per_tile."""
    tpt = model.config.tokens_per_tile
    feats = ImageFeatures(0.5 * torch.randn(4 + 2 + 6, model.config.text.hidden_size), (4, 2, 6))
    return [
        Request(_prompt(5, seed=1), params),
        Request(_prompt(17, seed=2), params),
        Request(_prompt(6, tpt, seed=3), params, pixel_values=_pixels(1, 3)),
        Request(_prompt(9, 2 * tpt, seed=4), params, pixel_values=_pixels(2, 4)),
        Request(_prompt(4, 3 * tpt, seed=5), params, pixel_values=_pixels(3, 5)),
        Request(_prompt(7, 12, seed=6), params, image_features=feats),
        Request(_prompt(30, seed=7), SamplingParams(max_new_tokens=5)),
    ]


def _solo(model, request: Request, **kw) -> list[int]:
    return Engine(model, eos_token_ids=[], **kw).generate([request])[0].token_ids


# ---- cache vs no cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-test", "tiny-test-moe"])
def test_cached_logits_equal_full_forward(name):
    """Packed prefill of two prompts of different lengths (one with an image), then masked batched decode steps."""
    model = _model(name)
    runner = ModelRunner(model, max_slots=3, max_seq_len=64, device=torch.device("cpu"))
    tpt = model.config.tokens_per_tile
    seqs = [Sequence(0, _prompt(5, tpt, seed=1), GREEDY, pixel_values=_pixels(1)), Sequence(1, _prompt(11, seed=2), GREEDY)]
    for i, s in enumerate(seqs):
        s.slot = i
    pixels = {0: _pixels(1)}
    logits = runner.prefill(seqs)
    g = torch.Generator().manual_seed(9)
    for step in range(5):
        with torch.no_grad():
            for i, s in enumerate(seqs):
                full = model(torch.tensor([s.prompt_ids + s.output_ids]), pixel_values=pixels.get(i)).logits[0, -1]
                assert (logits[i] - full).abs().max().item() < 1e-5, (step, i)
        for s in seqs:
            s.output_ids.append(int(torch.randint(0, 400, (1,), generator=g)))
        logits = runner.decode(seqs)


# ---- batched vs single, joining mid-flight ----------------------------------------------------------------


def test_batched_greedy_equals_single(model):
    requests = _mixed_requests(model)
    batched = Engine(model, eos_token_ids=[], max_batch_size=8).generate(requests)
    for request, out in zip(requests, batched):
        assert out.finished and out.finish_reason == "length"
        assert len(out.token_ids) == request.params.max_new_tokens
        assert out.token_ids == _solo(model, request)


def test_waiting_requests_fill_freed_slots(model):
    """More requests than slots: they queue, join as others finish, and slots get compacted; outputs unchanged."""
    budgets = [3, 5, 1, 9, 1, 13]  # budget 1 finishes inside its prefill step
    requests = [Request(_prompt(4 + 3 * i, seed=i), SamplingParams(max_new_tokens=n)) for i, n in enumerate(budgets)]
    outs = Engine(model, eos_token_ids=[], max_batch_size=3, max_prefill_tokens=8).generate(requests, progress=True)
    assert [len(o.token_ids) for o in outs] == budgets
    assert [o.token_ids for o in outs] == [_solo(model, r) for r in requests]


def test_joining_mid_flight_does_not_change_others(model):
    a, b, c = _mixed_requests(model)[1:4]
    engine = Engine(model, eos_token_ids=[])
    ids = [engine.add_request(a), engine.add_request(b)]
    final = {}
    for _ in range(4):
        final.update((o.request_id, o) for o in engine.step())
    ids.append(engine.add_request(c))
    while engine.has_unfinished():
        final.update((o.request_id, o) for o in engine.step())
    assert [final[i].token_ids for i in ids] == [_solo(model, r) for r in (a, b, c)]


def test_abort_frees_the_slot_and_keeps_others(model):
    a, b, c = (Request(_prompt(6 + i, seed=i), SamplingParams(max_new_tokens=10)) for i in range(3))
    engine = Engine(model, eos_token_ids=[])
    ids = [engine.add_request(r) for r in (a, b, c)]
    engine.step()
    engine.abort(ids[0])  # slot 0 is freed; c moves from slot 2 into it
    assert [s.id for s in engine.scheduler.running] == [ids[2], ids[1]]
    final = {}
    while engine.has_unfinished():
        final.update((o.request_id, o) for o in engine.step())
    assert ids[0] not in final
    assert [final[ids[1]].token_ids, final[ids[2]].token_ids] == [_solo(model, b), _solo(model, c)]


# ---- stopping ---------------------------------------------------------------------------------------------


def test_stop_string_cuts_exactly(model):
    prompt = _prompt(8, seed=11)
    ref = _solo(model, Request(prompt, SamplingParams(max_new_tokens=20)))
    text = detok(ref)
    stop = text[6:8]
    cut = text.find(stop)
    engine = Engine(model, eos_token_ids=[], detokenize=detok)
    out = engine.generate([Request(prompt, SamplingParams(max_new_tokens=20, stop=("zzzz", stop)))])[0]
    assert (out.token_ids, out.text, out.finish_reason) == (ref[:cut], text[:cut], "stop")


def test_stop_string_inside_a_token_and_never_half_streamed(model):
    """Tokens of two characters; a stop string starting mid-token keeps only the tokens wholly before it."""
    two = lambda ids: "".join(f"{i % 5}x" for i in ids)  # noqa: E731
    prompt = _prompt(8, seed=12)
    ref = _solo(model, Request(prompt, SamplingParams(max_new_tokens=20)))
    text = two(ref)
    stop = text[9:12]  # starts at a token's second character
    cut = text.find(stop)
    engine = Engine(model, eos_token_ids=[], detokenize=two)
    params = SamplingParams(max_new_tokens=20, stop=(stop,))
    streamed = [t for chunk in engine.stream(Request(prompt, params)) for t in chunk]
    final = engine.generate([Request(prompt, params)])[0]
    assert final.text == text[:cut] and final.token_ids == ref[: cut // 2]
    assert streamed == final.token_ids


def test_stop_token_ids_and_eos(model):
    prompt = _prompt(8, seed=13)
    ref = _solo(model, Request(prompt, SamplingParams(max_new_tokens=16)))
    stop_at = ref.index(ref[5])
    out = Engine(model, eos_token_ids=[]).generate([Request(prompt, SamplingParams(max_new_tokens=16, stop_token_ids=(ref[5],)))])[0]
    assert (out.token_ids, out.finish_reason) == (ref[: stop_at + 1], "stop")
    out = Engine(model, eos_token_ids=[ref[5]]).generate([Request(prompt, SamplingParams(max_new_tokens=16))])[0]
    assert (out.token_ids, out.finish_reason) == (ref[: stop_at + 1], "stop")


# ---- sampling ---------------------------------------------------------------------------------------------


def test_seeded_sampling_reproducible_and_independent_of_batch_mates(model):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95, seed=123)
    mine = Request(_prompt(9, seed=21), params)
    alone = _solo(model, mine)
    assert alone == _solo(model, mine)
    mates = [Request(_prompt(5 + i, seed=30 + i), SamplingParams(max_new_tokens=10, temperature=0.8, seed=None if i else 7))
             for i in range(3)]
    together = Engine(model, eos_token_ids=[]).generate([mates[0], mine, *mates[1:]])[1].token_ids
    assert together == alone
    other_seed = _solo(model, Request(mine.input_ids, SamplingParams(**{**params.__dict__, "seed": 124})))
    assert other_seed != alone


def test_sampler_top_k_top_p_and_temperature():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, 4)
    hist = lambda p: torch.bincount(torch.tensor(sample(logits, [p] * 4000, [None] * 4000)), minlength=4) / 4000  # noqa: E731
    torch.manual_seed(0)
    assert (hist(SamplingParams(temperature=1.0)) - probs).abs().max() < 0.03
    assert hist(SamplingParams(temperature=1.0, top_k=2))[2:].sum() == 0
    assert hist(SamplingParams(temperature=1.0, top_p=0.6))[2:].sum() == 0  # 0.5 < 0.6, so rank 1 survives
    assert hist(SamplingParams(temperature=1.0, top_p=0.4))[1:].sum() == 0
    assert hist(SamplingParams(temperature=1e-4))[0] == 1


def test_sampling_params_validation():
    for bad in (dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                dict(stop="ab"), dict(stop=("",)), dict(stop_token_ids=(-1,)), dict(seed=1.5)):
        with pytest.raises(ValueError, match="SamplingParams"):
            SamplingParams(**bad)
    assert SamplingParams(stop=["a"], stop_token_ids=[3]).stop == ("a",)


# ---- streaming, errors, dtype -------------------------------------------------------------------------------


def test_streamed_tokens_equal_generated(model):
    request = _mixed_requests(model)[3]
    engine = Engine(model, eos_token_ids=[])
    chunks = list(engine.stream(request))
    assert [t for c in chunks for t in c] == engine.generate([request])[0].token_ids
    assert len(chunks) > 1 and not engine.has_unfinished()


def test_prompt_too_long_is_a_clear_error(model):
    engine = Engine(model, eos_token_ids=[], max_seq_len=32)
    with pytest.raises(PromptTooLongError, match=r"prompt of 30 tokens \+ max_new_tokens=12 = 42 exceeds .* 32"):
        engine.add_request(Request(_prompt(30), GREEDY))
    assert isinstance(PromptTooLongError("x"), ValueError)
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        engine.add_request(Request(_prompt(5, 3), GREEDY, pixel_values=_pixels(1)))


def test_image_placeholder_is_never_sampled(model):
    """<IMG_CONTEXT> fed back without features would break the next forward, so the runner never samples it."""
    runner = Engine(model, eos_token_ids=[]).runner
    logits = torch.zeros(2, 512)
    logits[:, IMG] = 100.0
    logits[:, 7] = 1.0
    seqs = [Sequence(0, [1], GREEDY), Sequence(1, [1], SamplingParams(temperature=1.0, seed=0))]
    assert runner.sample(seqs, logits)[0] == 7
    assert IMG not in runner.sample(seqs, logits)


def test_moe_model_batched_equals_single():
    moe = _model("tiny-test-moe")
    requests = _mixed_requests(moe)[:4]
    outs = Engine(moe, eos_token_ids=[]).generate(requests)
    assert [o.token_ids for o in outs] == [_solo(moe, r) for r in requests]


def test_bfloat16_engine_runs():
    model = _model(dtype=torch.bfloat16)
    engine = Engine(model, eos_token_ids=[])
    outs = engine.generate(_mixed_requests(model)[2:5])
    assert engine.runner.cache.kv.dtype == torch.bfloat16
    assert all(len(o.token_ids) == GREEDY.max_new_tokens for o in outs)


# ---- scoring ----------------------------------------------------------------------------------------------


def test_score_equals_log_softmax_of_full_forward(model):
    tpt = model.config.tokens_per_tile
    seqs = [(_prompt(9, seed=41), 4), (_prompt(5, tpt, seed=42), 7), (_prompt(14, seed=43), 13), (_prompt(6, seed=44), 6)]
    images = [None, _pixels(1, 8), None, None]
    with torch.no_grad():
        got = score(model, seqs, images)
        for (ids, start), image, lp in zip(seqs, images, got):
            full = model(torch.tensor([ids]), pixel_values=image).logits[0].float().log_softmax(-1)
            expected = full[start - 1: len(ids) - 1].gather(-1, torch.tensor(ids[start:])[:, None])[:, 0]
            assert lp.shape == (len(ids) - start,)
            assert (lp - expected).abs().max().item() < 1e-5 if len(expected) else True
    assert got[3].numel() == 0
    with pytest.raises(ValueError, match="response_start"):
        score(model, [([1, 2], 0)])



def test_responses_to_one_prompt_share_it_and_score_as_if_alone(model):
    tpt = model.config.tokens_per_tile
    prompt, px = _prompt(12, tpt, seed=51), _pixels(1, 9)
    responses = [[7, 8, 9], [10], [], [11, 12, 13, 14, 15]]
    seqs = [(prompt + r, len(prompt)) for r in responses]
    images: list = [px, px.clone(), px, px]  # equal tiles in another tensor share too
    seqs += [(prompt + [3, 4], len(prompt)), (_prompt(8, seed=52), 5)]
    images += [_pixels(1, 10), None]  # the same tokens with another image: a row of its own
    encoded: list[int] = []
    real = model.encode_images
    model.encode_images = lambda pixels: encoded.append(pixels.shape[0]) or real(pixels)
    try:
        shared = score(model, seqs, images)
        assert encoded == [2]  # one tile for the group, one for the other image
        alone = score(model, seqs, images, share_prompts=False)
    finally:
        del model.encode_images
    for a, b in zip(shared, alone):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # The gradient of the group's summed log-probs reaches the shared prompt as separate rows would send it.
    grads = []
    for share in (True, False):
        model.zero_grad()
        sum(lp.sum() for lp in score(model, seqs[:4], images[:4], share_prompts=share)).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
