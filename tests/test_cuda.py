"""The same computations on a GPU: skipped where no CUDA device is present (as on this project's CI machines).

Each has a CPU twin elsewhere in the suite. These check what only a device shows: tensors built on the CPU
(training batches, image features a client computed) reaching a model on the GPU, and no host sync inside the
decoder's layers (`torch.cuda.set_sync_debug_mode("error")` raises at the first one).
"""

from __future__ import annotations

import pytest
import torch

from internvl35.checkpoint import build_model
from internvl35.engine import Engine, score
from internvl35.model.attention import causal_input
from internvl35.presets import preset
from internvl35.train.packing import collate, pack
from internvl35.train.sft import train_step
from tests.test_engine import _mixed_requests, _model, _pixels, _prompt
from tests.test_train import _config, _example

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_engine_takes_cpu_features_next_to_gpu_encoded_ones():
    gpu = _model().cuda()
    requests = _mixed_requests(gpu)  # CPU ImageFeatures and pixel tiles admitted together
    outputs = Engine(gpu, eos_token_ids=[]).generate(requests)
    assert [len(o.token_ids) for o in outputs] == [r.params.max_new_tokens for r in requests]


def test_scores_on_gpu_equal_scores_on_cpu():
    cpu, gpu = _model(), _model().cuda()
    tpt = cpu.config.tokens_per_tile
    seqs = [(_prompt(9, seed=41), 4), (_prompt(5, tpt, seed=42), 7)]
    images = [None, _pixels(1, 8)]
    with torch.no_grad():
        for a, b in zip(score(cpu, seqs, images), score(gpu, seqs, images)):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-3)


def test_a_training_step_on_gpu_equals_one_on_cpu():
    losses = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_model(_config()).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = collate(pack([_example(i) for i in range(4)], 64))  # built on the CPU, as the trainer does
        losses.append(train_step(model, opt, [batch], lr=1e-3, grad_clip=1.0)["loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


@pytest.mark.parametrize("name", ["tiny-test", "tiny-test-moe"])
def test_no_host_sync_inside_the_decoder(name):
    if name.endswith("moe") and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("grouped matmuls run without a host sync on sm90+ in bf16; older GPUs take torch's loop")
    model = build_model(preset(name), dtype=torch.bfloat16, device="cuda")
    x = torch.randn(2, 7, model.config.text.hidden_size, device="cuda", dtype=torch.bfloat16)
    attn = causal_input(2, 7, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model.language_model.model(x, attn)
    finally:
        torch.cuda.set_sync_debug_mode("default")
