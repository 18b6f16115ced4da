"""The packed CPU linear: same math as F.linear, never stale, never on the autograd path."""

import copy

import pytest
import torch
import torch.nn.functional as F

from internvl35.model import linear as linear_mod
from internvl35.model.linear import Linear

pytestmark = pytest.mark.skipif(not linear_mod._AVAILABLE, reason="oneDNN weight packing not available")


@pytest.fixture(autouse=True)
def always_packed(request, monkeypatch):
    """Most tests check the packed path's math, so they take it for every call instead of whichever one the
    timing picks; the tests of the timed choice opt out with the `timed` marker."""
    monkeypatch.setattr(linear_mod, "_ALWAYS_PACKED", "timed" not in request.keywords)  # whatever the env says
    monkeypatch.setattr(linear_mod, "_TIMED", "timed" in request.keywords)
    monkeypatch.setattr(linear_mod, "_choices", {})
    monkeypatch.setattr(linear_mod, "_trials", {})


def _layer(bias: bool = True) -> Linear:
    torch.manual_seed(0)
    return Linear(48, 300, bias=bias)


def _reference(layer: Linear, x: torch.Tensor) -> torch.Tensor:
    out = x @ layer.weight.t()  # not F.linear, which some tests count calls of
    return out if layer.bias is None else out + layer.bias


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (3, 48), (8, 48), (2, 5, 48), (0, 48)])
def test_packed_matches_f_linear(bias, shape):
    layer = _layer(bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        out = layer(x)
    assert layer._packed_weight._key is not None  # the packed path ran
    torch.testing.assert_close(out, _reference(layer, x), rtol=1e-5, atol=1e-5)


def test_non_contiguous_input():
    layer = _layer()
    x = torch.randn(7, 3, 48).transpose(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)


def test_follows_in_place_updates_and_reassignment():
    layer = _layer()
    x = torch.randn(4, 48)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(2.0)  # an optimizer step between RL rollouts
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)
        layer.weight = torch.nn.Parameter(torch.randn(300, 48))  # a reassigned parameter
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)
        layer.weight.data = torch.randn(300, 48)  # a swapped storage
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)
        layer.load_state_dict({"weight": torch.randn(300, 48), "bias": torch.randn(300)})
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
def test_training_matches_f_linear_values_and_gradients(bias, input_grad):
    layer = _layer(bias)
    reference = copy.deepcopy(layer)
    x = torch.randn(2, 5, 48, requires_grad=input_grad)
    x_ref = x.detach().clone().requires_grad_(input_grad)
    g = torch.randn(2, 5, 300)
    out = layer(x)
    assert layer._packed_weight_t._key is not None  # the packed training path ran
    out.backward(g)
    expected = F.linear(x_ref, reference.weight, reference.bias)
    expected.backward(g)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-4)
    if bias:
        torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-4)
    if input_grad:
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_training_repacks_after_each_optimizer_step_only():
    layer = _layer()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(4, 48)
    seen = []
    for _ in range(3):
        keys = []
        for _ in range(2):  # two micro-batches share one packed copy
            layer(x).square().mean().backward()
            keys.append(layer._packed_weight._key)
        assert keys[0] == keys[1]
        seen.append(keys[0])
        opt.step()
        opt.zero_grad()
    assert len(set(seen)) == 3  # one packed copy per optimizer step
    with torch.no_grad():  # after the last step, nothing stale is served
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)


def test_frozen_layer_passes_the_input_gradient():
    layer = _layer().requires_grad_(False)  # a frozen layer in front of a trained one
    x = torch.randn(4, 48, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, -1), rtol=1e-5, atol=1e-5)
    assert layer.weight.grad is None


def test_float16_falls_back():
    layer = _layer().to(torch.float16)
    with torch.no_grad():
        layer(torch.randn(2, 48, dtype=torch.float16))
    assert layer._packed_weight._key is None


@pytest.mark.skipif(torch.bfloat16 not in linear_mod._PACKED_DTYPES, reason="this CPU's oneDNN has no native bf16")
def test_bfloat16_inference_is_packed_and_training_is_not():
    layer = _layer().to(torch.bfloat16)
    x = torch.randn(5, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
    assert layer._packed_weight._key is not None and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))  # bf16 tolerances
    packed_key = layer._packed_weight._key
    layer(x.requires_grad_()).sum().backward()  # training in bf16: plain F.linear, no transposed copy
    assert layer._packed_weight_t._key is None and layer._packed_weight._key == packed_key
    assert x.grad is not None and layer.weight.grad is not None


def test_copy_starts_without_a_packed_weight():
    layer = _layer()
    with torch.no_grad():
        layer(torch.randn(2, 48))
    twin = copy.deepcopy(layer)
    assert twin._packed_weight._key is None
    with torch.no_grad():
        twin.weight.zero_()
        assert (twin(torch.randn(2, 48)) - twin.bias).abs().max() < 1e-6  # not the original's weights


def test_grouped_linear_matches_the_separate_layers_and_follows_each():
    from internvl35.model.linear import PackedWeight, grouped_linear

    torch.manual_seed(0)
    layers = [Linear(48, n, bias=False) for n in (64, 32, 32)]
    group = PackedWeight()
    x = torch.randn(2, 3, 48)
    with torch.no_grad():
        for _ in range(2):  # the second round: after one member alone changed
            outs = grouped_linear(x, layers, group)
            assert [o.shape[-1] for o in outs] == [64, 32, 32]
            for out, layer in zip(outs, layers):
                torch.testing.assert_close(out, _reference(layer, x), rtol=1e-5, atol=1e-5)
            layers[1].weight.add_(1.0)
    assert group._key is not None
    # With autograd on, each layer runs itself (the training path), and gradients reach every weight.
    sum(o.sum() for o in grouped_linear(x, layers, group)).backward()
    assert all(layer.weight.grad is not None for layer in layers)


def test_environment_switch_turns_packing_off(monkeypatch):
    monkeypatch.setenv("INTERNVL35_PACKED_LINEAR", "0")
    assert not linear_mod._available()
    monkeypatch.setattr(linear_mod, "_AVAILABLE", False)
    layer = _layer()
    with torch.no_grad():
        layer(torch.randn(2, 48))
    assert layer._packed_weight._key is None


def test_fused_adamw_steps_are_seen():
    # Fused AdamW writes the weights without bumping their version counters.
    layer = _layer()
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    x = torch.randn(4, 48)
    layer(x).square().mean().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)


def test_a_weight_onednn_cannot_pack_turns_packing_off_for_its_dtype_only(monkeypatch):
    real_reorder = linear_mod._reorder

    def refuse_bf16(weight):
        if weight.dtype == torch.bfloat16:
            raise RuntimeError("unsupported")
        return real_reorder(weight)

    monkeypatch.setattr(linear_mod, "_reorder", refuse_bf16)
    monkeypatch.setattr(linear_mod, "_PACKED_DTYPES", (torch.float32, torch.bfloat16))
    x = torch.randn(3, 48)
    bf16_layer = _layer().to(torch.bfloat16)
    with torch.no_grad():
        # (bf16 rounds the bias add differently from the one-kernel F.linear: compare at bf16's resolution)
        torch.testing.assert_close(bf16_layer(x.bfloat16()), _reference(bf16_layer, x.bfloat16()), atol=2e-3, rtol=2e-2)
    assert linear_mod._PACKED_DTYPES == (torch.float32,)  # later bf16 calls go straight to F.linear
    layer = _layer()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x))
    assert layer._packed_weight._key is not None  # fp32 still packs


def test_row_buckets_are_powers_of_two():
    assert [linear_mod._row_bucket(torch.zeros(n, 4)) for n in (0, 1, 2, 3, 5, 8, 9, 64, 65)] == \
        [1, 1, 2, 4, 8, 8, 16, 64, 128]
    assert linear_mod._row_bucket(torch.zeros(2, 3, 4)) == 8  # rows are all dimensions but the last


def _count_calls(monkeypatch) -> dict[str, int]:
    """Count the packed and the plain kernel calls of linear.py from here on."""
    calls = {"packed": 0, "plain": 0}
    real_packed, real_plain = linear_mod._packed_linear, F.linear

    def packed(*args):
        calls["packed"] += 1
        return real_packed(*args)

    def plain(*args):
        calls["plain"] += 1
        return real_plain(*args)

    monkeypatch.setattr(linear_mod, "_packed_linear", packed)
    monkeypatch.setattr(linear_mod.F, "linear", plain)
    return calls


@pytest.mark.timed
@pytest.mark.parametrize("packed_wins", [True, False])
def test_small_calls_try_both_kernels_then_keep_the_faster(monkeypatch, packed_wins):
    medians = iter([1.0, 2.0] if packed_wins else [2.0, 1.0])  # the packed side's median is asked first
    monkeypatch.setattr(linear_mod.statistics, "median", lambda times: next(medians))
    calls = _count_calls(monkeypatch)
    layer = _layer()
    trial = 2 * linear_mod._TRIAL_CALLS
    with torch.no_grad():
        for i in range(trial + 5):
            x = torch.randn(3 + i % 2, 48)  # 3 and 4 rows: one bucket
            torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)
            if i == trial // 2 - 1:  # the trial's first half runs packed, its second half plain
                assert calls == {"packed": trial // 2, "plain": 0}
            if i == trial - 1:  # the next call closes the last gap and decides
                assert calls == {"packed": trial // 2, "plain": trial // 2} and not linear_mod._choices
    assert linear_mod._choices == {("linear", torch.float32, 300, 48, True, 4): packed_wins}
    assert calls == {"packed": trial // 2 + 5 * packed_wins, "plain": trial // 2 + 5 * (not packed_wins)}
    with torch.no_grad():
        layer(torch.randn(1, 48))  # another bucket: a trial of its own
    assert ("linear", torch.float32, 300, 48, True, 1) in linear_mod._trials


@pytest.mark.timed
def test_large_calls_take_packed_weights_without_a_trial(monkeypatch):
    calls = _count_calls(monkeypatch)
    layer = _layer()
    x = torch.randn(linear_mod._TIMED_ROWS + 1, 48)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-5)
    assert calls == {"packed": 1, "plain": 0} and not linear_mod._trials


@pytest.mark.timed
def test_grouped_trial_compares_one_matmul_with_one_f_linear_per_layer(monkeypatch):
    from internvl35.model.linear import PackedWeight, grouped_linear

    calls = _count_calls(monkeypatch)
    torch.manual_seed(0)
    layers = [Linear(48, n, bias=False) for n in (64, 32, 32)]
    group, x = PackedWeight(), torch.randn(1, 48)
    with torch.no_grad():
        for _ in range(2 * linear_mod._TRIAL_CALLS + 1):
            for out, layer in zip(grouped_linear(x, layers, group), layers):
                torch.testing.assert_close(out, _reference(layer, x), rtol=1e-5, atol=1e-5)
    winner = linear_mod._choices[("grouped", torch.float32, 64, 32, 32, 48, 1)]
    assert calls == {"packed": linear_mod._TRIAL_CALLS + winner, "plain": 3 * (linear_mod._TRIAL_CALLS + (not winner))}


def test_by_default_small_calls_take_f_linear_and_large_ones_packed_weights(monkeypatch):
    """No timing by default: a seeded run repeats exactly (the two kernels round differently)."""
    monkeypatch.setattr(linear_mod, "_ALWAYS_PACKED", False)
    calls = _count_calls(monkeypatch)
    layer = _layer()
    with torch.no_grad():
        for _ in range(2 * linear_mod._TRIAL_CALLS + 3):
            layer(torch.randn(4, 48))
        layer(torch.randn(linear_mod._TIMED_ROWS + 1, 48))
    assert calls == {"packed": 1, "plain": 2 * linear_mod._TRIAL_CALLS + 3}
    assert not linear_mod._trials and not linear_mod._choices


def test_environment_switch_takes_only_0_1_auto_or_trial(monkeypatch):
    for value, mode in (("0", "0"), ("1", "1"), ("auto", "auto"), (" AUTO ", "auto"), ("trial", "trial")):
        monkeypatch.setenv("INTERNVL35_PACKED_LINEAR", value)
        assert linear_mod._mode() == mode
    monkeypatch.setenv("INTERNVL35_PACKED_LINEAR", "yes")
    with pytest.warns(UserWarning, match="INTERNVL35_PACKED_LINEAR='yes' is not 0, 1, auto or trial; using auto"):
        assert linear_mod._mode() == "auto"
