"""SFT trainer: loss math vs closed forms, packing equivalence, learning, exact resume, atomic checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from internvl35.checkpoint import build_model
from internvl35.presets import preset
from internvl35.train.loss import (
    IGNORE_INDEX, anchor_loss, class_balanced_weights, sample_weights, token_weight, weighted_ce,
)
from internvl35.train.packing import TrainExample, pack
from internvl35.train.sft import SFTConfig, SFTTrainer, lr_at, micro_batches, train_step

IMG = 500


def _config():
    return preset("tiny-test").replace(image_token_id=IMG)


def _example(i: int, with_image: bool | None = None) -> TrainExample:
    g = torch.Generator().manual_seed(i)
    n_prompt, n_answer = 4 + i % 5, 2 + i % 4
    ids = torch.randint(0, 400, (n_prompt + n_answer,), generator=g).tolist()
    pixels = None
    if with_image if with_image is not None else i % 2 == 0:
        ids = ids[:2] + [IMG] * 4 + ids[2:]
        pixels = torch.randn(1, 3, 56, 56, generator=g)
    labels = [IGNORE_INDEX] * (len(ids) - n_answer) + ids[-n_answer:]
    return TrainExample(ids, labels, pixels)


def test_square_weights_closed_form():
    assert token_weight(4, "square") == 0.5 and token_weight(4, "token") == 1.0 and token_weight(4, "sample") == 0.25
    w = sample_weights([IGNORE_INDEX, 5, 6, 7, 8, IGNORE_INDEX], "square")
    assert w == [0.0, 0.5, 0.5, 0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="unknown loss averaging"):
        token_weight(3, "median")


def test_weighted_loss_equals_closed_form():
    torch.manual_seed(0)
    lengths = [1, 4, 9]  # supervised tokens per sample
    logits = [torch.randn(n, 11) for n in lengths]
    targets = [torch.randint(0, 11, (n,)) for n in lengths]
    ce = [torch.nn.functional.cross_entropy(l, t, reduction="none") for l, t in zip(logits, targets)]
    expected = sum(c.sum() / math.sqrt(len(c)) for c in ce) / sum(math.sqrt(n) for n in lengths)
    w = torch.cat([torch.full((n,), n**-0.5) for n in lengths])
    got = weighted_ce(torch.cat(logits), torch.cat(targets), w, w.sum())
    assert torch.allclose(got, expected, atol=1e-6)


def test_packed_loss_equals_unpacked_loss():
    torch.manual_seed(0)
    model = build_model(_config())
    examples = [_example(i) for i in range(6)]
    packed = micro_batches(examples, SFTConfig(out_dir="-", steps=1, packing=True, pack_tokens=64, rows_per_micro=8))
    padded = micro_batches(examples, SFTConfig(out_dir="-", steps=1, packing=False, rows_per_micro=8))
    assert packed[0].input_ids.shape[0] < padded[0].input_ids.shape[0]  # really packed
    losses = []
    for batches in (packed, padded):
        denom = sum(b.weights.sum() for b in batches)
        with torch.no_grad():
            losses.append(sum(weighted_ce(model(b.input_ids, pixel_values=b.pixel_values, attn=b.attn).logits,
                                          b.targets, b.weights, denom) for b in batches))
    assert abs(losses[0].item() - losses[1].item()) < 1e-5


def test_pack_refuses_overlong_example():
    with pytest.raises(ValueError, match="more than the pack length"):
        pack([_example(0)], max_tokens=5)


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    model = build_model(_config()).train()
    cfg = SFTConfig(out_dir="-", steps=30, lr=3e-3, warmup_ratio=0.0, pack_tokens=64)
    trainer = SFTTrainer(model, lambda i: _example(i % 8), cfg)
    batches = micro_batches([_example(i) for i in range(8)], cfg)
    first = train_step(model, trainer.opt, batches, 3e-3, 1.0)["loss"]
    for _ in range(25):
        last = train_step(model, trainer.opt, batches, 3e-3, 1.0)["loss"]
    assert last < 0.5 * first


def test_anchor_loss_equals_closed_form():
    torch.manual_seed(0)
    table = torch.randn(7, 5)
    words = torch.tensor([3, IGNORE_INDEX, 0, 3])
    feats = torch.randn(4, 5)
    [weights], present = class_balanced_weights([words])
    assert weights.tolist() == [0.5, 0.0, 1.0, 0.5] and present.item() == 2  # each word weighs the same
    expected = sum(w * ((feats[i] - table[k]).pow(2).sum() / table[k].pow(2).sum()).item()
                   for i, (k, w) in enumerate(zip(words.tolist(), weights.tolist())) if k != IGNORE_INDEX) / 2
    assert anchor_loss(feats, words, table, weights, present).item() == pytest.approx(expected, rel=1e-6)
    assert anchor_loss(table[[3, 0, 3]], torch.tensor([3, 0, 3]), table, torch.ones(3), 3.0).item() == 0.0
    # The table is the target, not a parameter the loss moves.
    table.requires_grad_(True)
    anchor_loss(feats.requires_grad_(True), words, table, weights, present).backward()
    assert table.grad is None and feats.grad[1].abs().sum() == 0 and feats.grad[0].abs().sum() > 0
    # Counts span all micro-batches of a step.
    split, present = class_balanced_weights([torch.tensor([3, 0]), torch.tensor([IGNORE_INDEX, 3])])
    assert [w.tolist() for w in split] == [[0.5, 1.0], [0.0, 0.5]] and present.item() == 2


def test_anchor_weight_pulls_image_tokens_to_their_words():
    torch.manual_seed(0)
    model = build_model(_config()).train()
    words = [_example(i) for i in range(0, 8, 2)]  # the ones with an image
    for ex in words:
        ex.image_words = [7 + j % 3 if t == IMG else IGNORE_INDEX for j, t in enumerate(ex.input_ids)]
    cfg = SFTConfig(out_dir="-", steps=1, pack_tokens=64, anchor_weight=1.0)
    trainer = SFTTrainer(model, lambda i: words[i % 4], cfg)
    batches = micro_batches(words + [_example(1)], cfg)  # one example without words rides along
    first = train_step(model, trainer.opt, batches, 3e-3, 1.0, anchor_weight=1.0)
    for _ in range(30):
        last = train_step(model, trainer.opt, batches, 3e-3, 1.0, anchor_weight=1.0)
    assert first["anchor"] > 0.5 and last["anchor"] < 0.2 * first["anchor"]
    assert "anchor" not in train_step(model, trainer.opt, batches, 3e-3, 1.0)  # off by default


def test_lr_schedule_warmup_then_cosine():
    cfg = SFTConfig(out_dir="-", steps=100, lr=1.0, warmup_ratio=0.1, min_lr_ratio=0.0)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5, abs=0.02) and lr_at(99, cfg) < 0.01


def _train(out, stop_after=None, freeze=()):
    torch.manual_seed(0)
    model = build_model(_config())
    cfg = SFTConfig(out_dir=str(out), steps=6, examples_per_step=4, save_every=2, pack_tokens=64, progress=False,
                    freeze=freeze)
    SFTTrainer(model, _example, cfg).run(stop_after=stop_after)
    return model


def test_resume_gives_identical_weights(tmp_path):
    straight = _train(tmp_path / "a")
    _train(tmp_path / "b", stop_after=3)  # "crashes" after step 3; last checkpoint is step 2
    torch.manual_seed(123)  # a fresh process would not share the RNG state
    resumed = _train(tmp_path / "b")
    for (name, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), name
    steps = [int(l.split('"step": ')[1].split(",")[0]) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "b" / "loss.png").exists()


def test_freezing_keeps_parts_fixed(tmp_path):
    torch.manual_seed(0)
    before = build_model(_config()).state_dict()
    after = _train(tmp_path, freeze=("vit", "llm")).state_dict()  # the MLP warm-up stage
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same != name.startswith("mlp1"), name


def test_freezing_the_word_embeddings_trains_the_rest_of_the_language_model(tmp_path):
    from internvl35.train.sft import make_optimizer, part_of

    torch.manual_seed(0)
    before = build_model(_config()).state_dict()
    after = _train(tmp_path, freeze=("vit", "embed")).state_dict()
    embed = "language_model.model.embed_tokens.weight"
    assert part_of(embed) == "embed" and part_of("language_model.lm_head.weight") == "llm"
    assert torch.equal(before[embed], after[embed])
    assert not torch.equal(before["language_model.lm_head.weight"], after["language_model.lm_head.weight"])
    assert not torch.equal(before["mlp1.1.weight"], after["mlp1.1.weight"])
    # "llm" scales the embeddings too unless "embed" has its own scale.
    model = build_model(_config())
    for scales, want in (({"llm": 0.5}, 0.5), ({"llm": 0.5, "embed": 0.1}, 0.1)):
        opt = make_optimizer(model, SFTConfig(out_dir=str(tmp_path), steps=1, lr_scale=scales))
        group = next(g for g in opt.param_groups if any(p is model.state_dict(keep_vars=True)[embed] for p in g["params"]))
        assert group["lr_scale"] == want


def test_interrupted_checkpoint_write_leaves_previous_intact(tmp_path, monkeypatch):
    import internvl35.train.state as state

    _train(tmp_path, stop_after=2)
    good = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert [p.name for p in good] == ["step-000002"]

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(state, "save_file", boom)
    with pytest.raises(OSError):
        _train(tmp_path)
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step-*"))] == ["step-000002"]
    monkeypatch.undo()
    _train(tmp_path)  # resumes from step 2 and finishes
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))[-1] == "step-000006"


def test_segment_attention_equals_block_mask():
    from internvl35.model.attention import AttentionInput, segmented_input

    torch.manual_seed(0)
    model = build_model(_config())
    lengths = [5, 9, 3]
    ids = torch.randint(0, 400, (1, sum(lengths)))
    segmented = segmented_input(lengths)
    segment = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    block_causal = torch.ones(17, 17, dtype=torch.bool).tril() & (segment[:, None] == segment[None, :])
    masked = AttentionInput(positions=segmented.positions, mask=block_causal[None, None])
    assert segmented.positions.tolist() == [[*range(5), *range(9), *range(3)]]
    with torch.no_grad():
        a = model(ids, attn=masked).logits
        b = model(ids, attn=segmented).logits
        alone = torch.cat([model(x).logits for x in ids.split(lengths, dim=1)], dim=1)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(b, alone, atol=1e-5)


def test_kind_weights_shift_the_kinds_a_task_source_draws():
    from collections import Counter

    from internvl35.data.tokenizer import ChatTokenizer
    from internvl35.train.data import TaskMix, TaskSource

    tok = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")
    cfg = preset("tiny-test")
    plain = Counter(TaskSource(tok, cfg, TaskMix(families=("digits",))).pick(i)[0].kind for i in range(300))
    mix = TaskMix(families=("digits", "shapes"), kind_weights=(("digits/read", 8.0),))
    assert mix.kind_probabilities("shapes") is None
    assert mix.kind_probabilities("digits").tolist() == [8 / 12, 1 / 12, 1 / 12, 1 / 12, 1 / 12]
    picked = [TaskSource(tok, cfg, mix).pick(i)[0] for i in range(300)]
    digits = Counter(s.kind for s in picked if s.family == "digits")
    assert digits["read"] / sum(digits.values()) > 0.55 > plain["read"] / sum(plain.values())
    with pytest.raises(ValueError, match="chart/read"):
        TaskMix(families=("digits",), kind_weights=(("chart/read", 2.0),))


def test_kind_options_lengthen_only_the_named_kind():
    from internvl35.data.tokenizer import ChatTokenizer
    from internvl35.tasks import digits
    from internvl35.train.data import TaskMix, TaskSource

    tok = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")
    mix = TaskMix(families=("digits",), kind_options=(("digits/read", {"max_digits": 8}),))
    assert mix.kind_probabilities("digits").tolist() == [0.2] * 5  # the kind is drawn before the generator runs
    picked = [TaskSource(tok, preset("tiny-test"), mix).pick(i)[0] for i in range(200)]
    lengths = {kind: {len(s.layout) for s in picked if s.kind == kind} for kind in digits.KINDS}
    assert lengths["read"] == set(range(2, 9))
    assert all(lengths[k] == {2, 3, 4} for k in digits.KINDS if k != "read")
    long = digits.generate(3, "read", max_digits=8)
    assert len(long.answer) == len(long.layout) and long.answer == "".join(lab[-1] for _, lab in long.layout)
    with pytest.raises(ValueError, match="max_digits"):
        digits.generate(3, "read", max_digits=9)
    with pytest.raises(ValueError, match="kind options for \\['digits/reading'\\]"):
        TaskMix(families=("digits",), kind_options=(("digits/reading", {"max_digits": 8}),))
