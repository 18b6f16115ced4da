"""Ours vs transformers' InternVLForConditionalGeneration on the same tiny random weights."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from internvl35.checkpoint import convert_checkpoint, load_model, read_checkpoint
from tests.hf_reference import IMAGE_TOKEN_ID, write_hf_model

TOL = 1e-4


def _ids(n_image_tokens: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(0, 240, (5,), generator=g)]
    for n in n_image_tokens:
        parts += [torch.tensor([241]), torch.full((n,), IMAGE_TOKEN_ID), torch.tensor([242]),
                  torch.randint(0, 240, (3,), generator=g)]
    return torch.cat(parts)[None]


@pytest.fixture(scope="module", params=["qwen3", "qwen3_moe"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    ref = write_hf_model(path, text=request.param)
    return ref, load_model(path), path


@pytest.mark.parametrize("tiles_per_image", [[], [1], [5], [3, 2]], ids=["text", "one-tile", "multi-tile", "multi-image"])
def test_logits_match_transformers(pair, tiles_per_image):
    ref, ours, _ = pair
    tpt = ours.config.tokens_per_tile
    ids = _ids([tpt * n for n in tiles_per_image])
    n_tiles = sum(tiles_per_image)
    pixels = torch.randn(n_tiles, 3, 56, 56, generator=torch.Generator().manual_seed(1)) if n_tiles else None
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=pixels).logits
        got = ours(ids, pixel_values=pixels).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOL


def test_bfloat16_logits_are_as_close_to_fp32_as_transformers_bfloat16(pair):
    """bf16 cannot match fp32 to 1e-4; ours in bf16 (packed oneDNN weights where the CPU has native bf16) must land
    about as close to the fp32 reference as transformers' own bf16 run does."""
    import copy

    ref, _, path = pair
    ours = load_model(path, dtype=torch.bfloat16)
    theirs = copy.deepcopy(ref).to(torch.bfloat16)
    tpt = ours.config.tokens_per_tile
    ids = _ids([tpt])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=pixels).logits
        our_error = (ours(ids, pixel_values=pixels.bfloat16()).logits.float() - expected).abs()
        their_error = (theirs(input_ids=ids, pixel_values=pixels.bfloat16()).logits.float() - expected).abs()
    assert their_error.mean() > 0  # the comparison means something: bf16 does round
    assert our_error.mean() <= 1.5 * their_error.mean()
    assert our_error.max() <= 3 * their_error.max()


def test_loss_matches_transformers(pair):
    ref, ours, _ = pair
    ids = _ids([ours.config.tokens_per_tile])
    labels = ids.clone()
    labels[:, :6] = -100
    labels[labels == IMAGE_TOKEN_ID] = -100
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=pixels, labels=labels)
        got = ours(ids, pixel_values=pixels, labels=labels)
    # transformers' InternVL head returns the plain LM loss; ours adds the MoE balancing term on top.
    aux = ours.config.text.router_aux_loss_coef * got.aux_loss if got.aux_loss is not None else 0.0
    assert abs((got.loss - aux).item() - expected.loss.item()) <= TOL
    assert (got.aux_loss is not None) == ours.config.text.is_moe


def test_moe_aux_loss_matches_transformers(tmp_path):
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    ref = write_hf_model(tmp_path, text="qwen3_moe")
    ours = load_model(tmp_path)
    ids = _ids([])
    with torch.no_grad():
        out = ref.model.language_model(input_ids=ids, output_router_logits=True)
        expected = load_balancing_loss_func(out.router_logits, 4, 2)
        got = ours(ids).aux_loss
    assert abs(got.item() - expected.item()) <= 1e-5


def test_vision_tower_6b_variant_matches(tmp_path):
    ref = write_hf_model(tmp_path, vision="6b")
    ours = load_model(tmp_path)
    assert ours.config.vision.qk_normalization and ours.config.vision.norm_type == "rms_norm"
    assert not ours.config.vision.qkv_bias
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        expected = ref.model.get_image_features(pixel_values=pixels).pooler_output
        got = ours.encode_images(pixels).embeds
        assert (got - expected.reshape(got.shape)).abs().max().item() <= TOL
        ids = _ids([ours.config.tokens_per_tile * 3])
        assert (ours(ids, pixel_values=pixels).logits - ref(input_ids=ids, pixel_values=pixels).logits).abs().max() <= TOL


def test_tied_embeddings_match(tmp_path):
    ref = write_hf_model(tmp_path, tie=True)
    ours = load_model(tmp_path)
    assert ours.language_model.lm_head is None
    ids = _ids([4])
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert (ours(ids, pixel_values=pixels).logits - ref(input_ids=ids, pixel_values=pixels).logits).abs().max() <= TOL


def _tensors(path):
    files = sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


@pytest.mark.parametrize("text", ["qwen3", "qwen3_moe"])
def test_hf_original_hf_roundtrip_is_identical(tmp_path, text):
    write_hf_model(tmp_path / "hf", text=text)
    convert_checkpoint(tmp_path / "hf", tmp_path / "orig", "original")
    convert_checkpoint(tmp_path / "orig", tmp_path / "hf2", "hf", max_shard_bytes=20_000)  # sharded on the way back
    assert (tmp_path / "hf2" / "model.safetensors.index.json").exists()
    _, a = read_checkpoint(tmp_path / "hf")
    _, b = read_checkpoint(tmp_path / "hf2")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the hub `-HF` spelling on disk, tensor for tensor against what transformers wrote (LLaVA spelling)
    from internvl35.model.keymap import normalize_hf_spelling

    raw1 = {normalize_hf_spelling(k): v for k, v in _tensors(tmp_path / "hf").items()}
    raw2 = _tensors(tmp_path / "hf2")
    assert raw1.keys() == raw2.keys() and all(torch.equal(raw1[k], raw2[k]) for k in raw1)
    orig = _tensors(tmp_path / "orig")
    assert any(k.endswith("attn.qkv.weight") for k in orig) and all(not k.startswith("model.") for k in orig)


def test_transformers_loads_our_hf_output(tmp_path):
    from transformers import InternVLForConditionalGeneration

    ref = write_hf_model(tmp_path / "hf", text="qwen3_moe")
    convert_checkpoint(tmp_path / "hf", tmp_path / "orig", "original")
    convert_checkpoint(tmp_path / "orig", tmp_path / "hf2", "hf")
    again = InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf2").eval()
    ids = _ids([4])
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, pixel_values=pixels).logits, ref(input_ids=ids, pixel_values=pixels).logits)


def test_position_interpolation_matches_transformers_at_other_tile_size(tmp_path):
    ref = write_hf_model(tmp_path)
    ours = load_model(tmp_path)
    pixels = torch.randn(2, 3, 112, 112)  # an 8x8 patch grid on a model trained at 4x4
    with torch.no_grad():
        expected = ref.model.vision_tower(pixel_values=pixels).last_hidden_state[:, 1:]
        got = ours.vision_model(pixels)
    assert got.shape == expected.shape == (2, 64, 32)
    assert (got - expected).abs().max().item() <= TOL
