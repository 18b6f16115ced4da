"""The recipe path end to end at toy size: tokenizer, task data, SFT, export, load through the API."""

from __future__ import annotations

import json
from dataclasses import replace

from internvl35.api import InternVL
from internvl35.config import TextConfig, VisionConfig
from internvl35.train.data import TaskMix
from internvl35.train.data import corpus
from internvl35.train.recipe import TINY, build_tokenizer, run_recipe
from internvl35.train.vision_pretrain import SHAPE_TOKENS, AlignConfig, VisionPretrainConfig


def _toy_recipe():
    return replace(
        TINY, name="toy", vocab_size=400, tokenizer_samples=10, max_dynamic_patch=2,
        vision=VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14),
        text=TextConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
                        tie_word_embeddings=True),
        mix=TaskMix(families=("digits", "document"), thinking_ratio=0.5),
        sft=dict(steps=3, examples_per_step=4, pack_tokens=1024, save_every=2, lr_scale={"vit": 0.5}),
        vision_pretrain=VisionPretrainConfig(steps=2, batch_size=2),
        align=AlignConfig(steps=2, batch_size=2),
        warmup=(TaskMix(families=("digits",), symbolic_ratio=1.0),
                dict(steps=2, examples_per_step=2, pack_tokens=1024, freeze=("vit", "mlp", "embed"))),
        bridge=(TaskMix(families=("digits",)), dict(steps=2, examples_per_step=2, pack_tokens=1024, freeze=("llm",))),
        focus=(TaskMix(families=("digits",)), dict(steps=2, examples_per_step=2, pack_tokens=1024)),
    )


def test_toy_recipe_trains_exports_and_chats(tmp_path):
    final = run_recipe(_toy_recipe(), tmp_path / "run", progress=False)
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    assert (tmp_path / "run" / "loss.png").exists()
    assert (tmp_path / "run" / "vision_pretrain.safetensors").exists()  # stage 0 ran and was kept
    assert (tmp_path / "run" / "align.safetensors").exists()  # and stage 0b
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert len((tmp_path / "run" / "focus" / "metrics.jsonl").read_text().splitlines()) == 2  # stage 2 ran
    assert len((tmp_path / "run" / "warmup" / "metrics.jsonl").read_text().splitlines()) == 2  # and the warm-up
    assert len((tmp_path / "run" / "bridge" / "metrics.jsonl").read_text().splitlines()) == 2  # and the bridge
    training = json.loads((final / "training.json").read_text())
    stage_seconds = [training[stage]["seconds"] for stage in ("warmup", "bridge", "sft", "focus")]
    assert all(t > 0 for t in stage_seconds) and training["seconds"] > sum(stage_seconds)  # the whole run is timed
    vl = InternVL.from_pretrained(final)
    from internvl35.tasks.base import make_split

    sample = make_split("digits", "test", 1)[0]
    from internvl35.engine.sampling import SamplingParams

    out = vl.chat(sample.question, sample.images, params=SamplingParams(max_new_tokens=3))
    assert isinstance(out, str)


def test_a_recipe_interrupted_in_the_bridge_resumes_to_the_same_model(tmp_path, monkeypatch):
    import pytest
    from safetensors.torch import load_file

    from internvl35.train.sft import SFTTrainer

    recipe = _toy_recipe()
    straight = run_recipe(recipe, tmp_path / "a", progress=False)
    run = SFTTrainer.run

    def crash_in_bridge(self, stop_after=None):
        if self.out.name == "bridge":
            run(self, stop_after=1)
            raise KeyboardInterrupt
        return run(self, stop_after)

    monkeypatch.setattr(SFTTrainer, "run", crash_in_bridge)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "b", progress=False)
    monkeypatch.undo()
    resumed = run_recipe(recipe, tmp_path / "b", progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert len((tmp_path / "b" / "bridge" / "metrics.jsonl").read_text().splitlines()) == 2  # step 2 after step 1


def test_a_restarted_stage_reloads_its_saved_weights_and_refuses_foreign_ones(tmp_path):
    import pytest
    import torch
    from safetensors.torch import load_file, save_file

    from internvl35.checkpoint import build_model
    from internvl35.presets import preset
    from internvl35.train.recipe import vision_stage

    cfg = VisionPretrainConfig(steps=1, batch_size=2, progress=False)
    first = build_model(preset("tiny-test"))
    vision_stage(first, cfg, tmp_path, progress=False)
    saved = load_file(str(tmp_path / "vision_pretrain.safetensors"))
    assert set(saved) == {k for k in first.state_dict() if k.startswith("vision_model.")}
    again = build_model(preset("tiny-test"))
    vision_stage(again, cfg, tmp_path, progress=False)  # loads, does not train
    for key, value in saved.items():
        assert torch.equal(again.state_dict()[key], value)
    save_file({"mlp1.0.weight": torch.zeros(1)}, str(tmp_path / "vision_pretrain.safetensors"))
    with pytest.raises(ValueError, match="does not hold this stage's weights"):
        vision_stage(build_model(preset("tiny-test")), cfg, tmp_path, progress=False)


def test_own_tokens_come_on_top_of_the_vocabulary_and_leave_the_bpe_as_it_was():
    plain = build_tokenizer(replace(TINY, shape_tokens=False, tokenizer_samples=20))
    own = build_tokenizer(replace(TINY, shape_tokens=True, tokenizer_samples=20))
    assert own.vocab_size == plain.vocab_size + len(SHAPE_TOKENS)
    text = " ".join(corpus(("chart", "digits", "document"), 10))
    assert [plain.decode([t]) for t in plain.encode_text(text)] == [own.decode([t]) for t in own.encode_text(text)]
