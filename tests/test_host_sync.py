"""No host synchronisation per layer: a decode step waits for the device once, for its sampled tokens.

A GPU runs ahead of Python only while nothing asks for a result: `.item()`, `.tolist()`, `bool(t)`, `int(t)`,
`nonzero`, boolean-mask indexing and friends each drain its queue. CPU tensors have no queue to drain, so
`SyncCounter` records every call of such an op instead, with the line of ours that made it: the count must not
grow with the model's depth, and must grow by one per decode step. (On a GPU, `torch.cuda.set_sync_debug_mode`
is the authority; this test guards the same property on any machine.)
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from internvl35.checkpoint import build_model
from internvl35.engine import Engine, Request, SamplingParams
from internvl35.model.qwen3 import MoE
from internvl35.presets import preset
from tests.hf_reference import randomize

IMG = 500
# Ops whose result, or whose output's size, the host must wait for.
SYNCING = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy", "unique",
           "masked_select", "equal", "any", "all"}


def _bool_index(index: object) -> bool:
    if isinstance(index, tuple):
        return any(_bool_index(i) for i in index)
    return isinstance(index, torch.Tensor) and index.dtype == torch.bool


class SyncCounter(TorchFunctionMode):
    """Counts host-syncing tensor calls by (op, our file:line)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, str]] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        syncs = (name in SYNCING
                 or (name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_index(args[1]))
                 or (name == "repeat_interleave" and "output_size" not in kwargs))
        if syncs:
            ours = [f for f in traceback.extract_stack()[:-1] if "/internvl35/" in f.filename]
            where = f"{ours[-1].filename.rsplit('/internvl35/', 1)[-1]}:{ours[-1].lineno}" if ours else "?"
            self.calls[name, where] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def _model(name: str, text_layers: int, vision_layers: int):
    config = preset(name).replace(image_token_id=IMG)
    config = config.replace(text=replace(config.text, num_hidden_layers=text_layers),
                            vision=replace(config.vision, num_hidden_layers=vision_layers))
    torch.manual_seed(0)
    model = build_model(config)
    randomize(model)
    return model


def _syncs(model, new_tokens: int, temperature: float) -> SyncCounter:
    tpt = model.config.tokens_per_tile
    params = SamplingParams(max_new_tokens=new_tokens, temperature=temperature, seed=3)
    requests = [Request([1, 2] + [IMG] * tpt + [3, 4, 5], params, pixel_values=torch.randn(1, 3, 56, 56)),
                Request(list(range(7, 20)), params)]
    engine = Engine(model, eos_token_ids=[])
    with SyncCounter() as counter:
        engine.generate(requests)
    return counter


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("name", ["tiny-test", "tiny-test-moe"])
def test_a_decode_step_syncs_once_however_deep_the_model(name, temperature):
    counts = {}
    for depth in (1, 3):
        model = _model(name, text_layers=depth, vision_layers=depth)
        short, long = _syncs(model, 4, temperature), _syncs(model, 8, temperature)
        assert long.total - short.total == 4, f"depth {depth}: {dict(long.calls)}"
        counts[depth] = long
    assert counts[1].calls == counts[3].calls, "the number of host syncs grows with the number of layers"


@pytest.mark.parametrize("tokens", [1, 14])  # 1 token: two of the four experts get nobody
def test_experts_equal_each_token_through_its_own_experts(tokens):
    """The grouped experts against the definition, forward and backward: each token through each of its k experts,
    weighted by its renormalised router probability."""
    config = preset("tiny-test-moe").text
    torch.manual_seed(0)
    moe = MoE(config)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(tokens, config.hidden_size, requires_grad=True)
    gate_up, down = moe.experts.gate_up_proj, moe.experts.down_proj

    def by_definition(x: torch.Tensor) -> torch.Tensor:
        probs = moe.gate(x).float().softmax(-1)
        weights, chosen = probs.topk(config.num_experts_per_tok, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = []
        for n, row in enumerate(x):
            terms = []
            for w, e in zip(weights[n], chosen[n].tolist()):
                gate, up = gate_up[e].chunk(2)
                terms.append(w * (down[e] @ (torch.nn.functional.silu(gate @ row) * (up @ row))))
            out.append(torch.stack(terms).sum(0))
        return torch.stack(out)

    ours, _ = moe(x[None])
    expected = by_definition(x)
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-6)
    params = [x, gate_up, down, moe.gate.weight]
    torch.testing.assert_close(torch.autograd.grad(ours.square().sum(), params),
                               torch.autograd.grad(expected.square().sum(), params), rtol=1e-4, atol=1e-4)
