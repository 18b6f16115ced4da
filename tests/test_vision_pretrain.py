"""Stage-0 vision pretraining: patch labels, scenes, and that training moves the labels' loss."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from internvl35.checkpoint import build_model
from internvl35.config import VisionConfig
from internvl35.data.chat import IGNORE_INDEX
from internvl35.model.vision import InternViT
from internvl35.presets import preset
from internvl35.tasks import chart, digits
from internvl35.tasks.base import TEST_SEED_START
from internvl35.train.sft import SFTConfig, make_optimizer
from internvl35.train.vision_pretrain import (
    LABEL_ID, LABELS, VisionPretrainConfig, dense_batch, patch_labels, pretrain_vision,
)


def test_patch_labels_take_the_box_holding_each_patch_centre():
    # 56 px, 14 px patches: centres at 7, 21, 35, 49. The box [14, 42) holds centres 21 and 35.
    labels = patch_labels([((14, 0, 42, 14), "digit 3")], size=56, patch=14).reshape(4, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 1:3] = LABEL_ID["digit 3"]
    np.testing.assert_array_equal(labels, expected)


def test_a_box_between_cell_centres_labels_the_cell_holding_its_own_centre():
    # Centres at 7, 21, 35, 49: the box [23, 33) holds none, and its own centre (28, 28) lies in cell (2, 2).
    labels = patch_labels([((23, 23, 33, 33), "digit 3")], size=56, patch=14).reshape(4, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[2, 2] = LABEL_ID["digit 3"]
    np.testing.assert_array_equal(labels, expected)


def test_each_chart_value_labels_one_token_in_its_days_row_after_its_bar(monkeypatch):
    for seed in range(40):
        sample = chart.generate(seed, kind="read")
        grid = patch_labels(sample.layout, 224, 28).reshape(8, 8)
        values = [int(name.split()[1]) for _, name in sample.layout]  # Mon, Tue, ... in order
        assert [LABELS[i] for i in grid.reshape(-1) if i] == [f"digit {v}" for v in values]  # one token each
        for day, v in enumerate(values):
            assert grid[day + 1, chart.value_column(v)] == LABEL_ID[f"digit {v}"]  # row 0 holds the title
        asked = re.search(r"value for (\w+)\?", sample.question).group(1)
        assert values[chart.DAYS.index(asked)] == int(sample.answer)
    # Each bar ends in the cell before its value's: the bar's colour along its middle stops there.
    sample = chart.generate(3)
    image = np.asarray(sample.images[0])
    for k, ((x0, y0, _, _), _) in enumerate(sample.layout):
        line = image[y0 + 14]
        end = int(np.flatnonzero((line == chart.BAR_COLOURS[k]).all(-1)).max())
        assert x0 - 28 <= end < x0
    used: list[int] = []
    real = digits._glyph
    monkeypatch.setattr(digits, "_glyph", lambda idx, px: used.append(idx) or real(idx, px))
    chart.generate(TEST_SEED_START + 5)
    assert used and min(used) >= digits.TRAIN_POOL  # test charts are written with test scans
    chart.generate(5)
    assert max(used[-3:]) < digits.TRAIN_POOL


def test_digit_sheets_label_their_glyphs_and_keep_the_test_scans_apart(monkeypatch):
    pixels, labels = dense_batch([0, 1], ("digits",), size=224, patch=14)
    assert pixels.shape == (2, 3, 224, 224) and labels.shape == (2, 256)
    image, boxes = digits.dense(0)
    assert len(boxes) == int((labels[0].reshape(16, 16)[::2, ::2] > 0).sum())  # one cell = 2x2 patches
    used: list[int] = []
    real = digits._glyph
    monkeypatch.setattr(digits, "_glyph", lambda idx, px: used.append(idx) or real(idx, px))
    digits.dense(TEST_SEED_START + 5)
    assert used and min(used) >= digits.TRAIN_POOL


def test_task_canvases_write_one_line_on_the_lattice():
    rng = np.random.default_rng(0)
    _, boxes = digits._render([0, 1, 2, 3], 224, rng)
    cell = 224 // digits.CELLS
    assert all(x0 % cell == 0 and y0 % cell == 0 and x1 - x0 == cell for x0, y0, x1, _ in boxes)
    assert [b[0] for b in boxes] == sorted({b[0] for b in boxes})  # distinct columns, left to right
    assert len({b[1] for b in boxes}) == 1  # one line: reading order is also the tokens' row-major order


def test_pretraining_lowers_the_token_loss():
    torch.manual_seed(0)
    vit = InternViT(VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=56, patch_size=14))
    first = pretrain_vision(vit, VisionPretrainConfig(steps=1, batch_size=8, lr=3e-3, warmup_steps=1,
                                                      families=("shapes",), progress=False))
    torch.manual_seed(0)
    vit = InternViT(vit.config)
    later = pretrain_vision(vit, VisionPretrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=1,
                                                      families=("shapes",), progress=False))
    assert later["loss"] < first["loss"]
    assert 0.0 <= later["object_token_accuracy"] <= 1.0


def test_unknown_scene_family_is_named():
    with pytest.raises(ValueError, match="document"):
        VisionPretrainConfig(families=("chart", "document"))


def test_lr_scale_gives_a_part_its_own_learning_rate():
    model = build_model(preset("tiny-test"))
    cfg = SFTConfig(out_dir="unused", steps=1, lr_scale={"vit": 0.25})
    opt = make_optimizer(model, cfg)
    vit_params = {id(p) for p in model.vision_model.parameters()}
    for group in opt.param_groups:
        in_vit = {id(p) in vit_params for p in group["params"]}
        assert len(in_vit) == 1  # a group never mixes parts
        assert group["lr_scale"] == (0.25 if in_vit.pop() else 1.0)
    with pytest.raises(ValueError, match="learning-rate scale"):
        SFTConfig(out_dir="unused", steps=1, lr_scale={"vision": 0.5})


def test_alignment_targets_are_the_label_words_and_need_tied_embeddings():
    from dataclasses import replace

    from internvl35.data.tokenizer import ChatTokenizer
    from internvl35.train.vision_pretrain import AlignConfig, align_projector, label_words

    tok = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")
    words = [tok.decode([i]) for i in label_words(tok).tolist()]
    assert words[LABEL_ID["digit 7"]] == "7" and words[LABEL_ID["background"]] == "."
    assert words[LABEL_ID["red circle"]].startswith("red"[: len(words[LABEL_ID["red circle"]])])
    cfg = preset("tiny-test")
    untied = build_model(replace(cfg, text=replace(cfg.text, tie_word_embeddings=False)))
    with pytest.raises(ValueError, match="tied"):
        align_projector(untied, tok, AlignConfig(steps=1, progress=False))


def test_symbolic_examples_write_each_image_token_as_the_word_of_what_covers_it():
    from dataclasses import replace

    from internvl35.data.inputs import build_inputs
    from internvl35.data.tokenizer import ChatTokenizer
    from internvl35.train.data import TaskMix, TaskSource, symbolic_example
    from internvl35.train.vision_pretrain import label_words

    tok = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")
    cfg = replace(preset("tiny-test"), image_token_id=tok.img_context_id)
    cfg = replace(cfg, vision=replace(cfg.vision, image_size=224, patch_size=14))
    sample = digits.generate(3, "read")
    inputs = build_inputs(tok, cfg, sample.question, sample.images, answer=sample.answer)
    ex = symbolic_example(inputs, sample, label_words(tok), cfg)
    assert ex.pixel_values is None and ex.labels == inputs.labels
    start = inputs.input_ids.index(tok.img_context_id)
    grid = [tok.decode([i]) for i in ex.input_ids[start:start + 64]]
    assert tok.img_context_id not in ex.input_ids
    assert "".join(w for w in grid if w != ".") == sample.answer  # the digits, in reading order
    row = {box[1] // 28 for box, _ in sample.layout}.pop()
    assert all(w == "." for i, w in enumerate(grid) if i // 8 != row)  # background everywhere else
    # The source renders about the requested share symbolically, and only samples that have a layout.
    src = TaskSource(tok, cfg, TaskMix(families=("digits", "gui"), symbolic_ratio=0.5))
    picks = [(src.pick(i)[0].family, src(i).pixel_values is None) for i in range(40)]
    assert not any(symbolic for family, symbolic in picks if family == "gui")
    assert 0 < sum(symbolic for family, symbolic in picks if family == "digits") < sum(f == "digits" for f, _ in picks)
    wide = replace(sample, images=[sample.images[0].resize((300, 224))])  # one tile, resized: cells would blur
    with pytest.raises(ValueError, match="one image cut into whole 224-px tiles"):
        symbolic_example(build_inputs(tok, cfg, wide.question, wide.images), wide, label_words(tok), cfg)


def test_anchored_pixel_examples_carry_the_word_of_each_image_token():
    from dataclasses import replace

    from internvl35.data.inputs import build_inputs
    from internvl35.data.tokenizer import ChatTokenizer
    from internvl35.train.data import TaskMix, TaskSource, symbolic_example
    from internvl35.train.vision_pretrain import label_words

    tok = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")
    cfg = replace(preset("tiny-test"), image_token_id=tok.img_context_id)
    cfg = replace(cfg, vision=replace(cfg.vision, image_size=224, patch_size=14))
    src = TaskSource(tok, cfg, TaskMix(families=("digits", "chart"), anchor_families=("digits",)))
    for i in range(12):
        sample, thinking, _ = src.pick(i)
        ex = src(i)
        assert ex.pixel_values is not None  # anchoring never replaces the pixels
        if sample.family != "digits":
            assert ex.image_words is None
            continue
        # Exactly the image tokens carry words, and they are the words a symbolic rendering would write there.
        words = symbolic_example(build_inputs(tok, cfg, sample.question, sample.images, thinking=thinking,
                                              answer=sample.answer), sample, label_words(tok), cfg).input_ids
        assert [w != IGNORE_INDEX for w in ex.image_words] == [t == tok.img_context_id for t in ex.input_ids]
        assert [w for w in ex.image_words if w != IGNORE_INDEX] == [
            w for w, t in zip(words, ex.input_ids) if t == tok.img_context_id]
    with pytest.raises(ValueError, match="unknown task families \\['shapes'\\]"):
        TaskMix(families=("digits",), anchor_families=("shapes",))


def test_the_alignment_anchor_brings_digit_tokens_to_their_words():
    from dataclasses import replace

    from internvl35.data.tokenizer import ChatTokenizer
    from internvl35.train.vision_pretrain import (
        AlignConfig, align_projector, dense_batch, label_words, projected_tokens,
    )

    tok = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")
    cfg = preset("tiny-test")
    cfg = replace(cfg, text=replace(cfg.text, vocab_size=tok.vocab_size, tie_word_embeddings=True),
                  vision=replace(cfg.vision, image_size=112, patch_size=14))
    pixels, labels = dense_batch(list(range(TEST_SEED_START, TEST_SEED_START + 4)), ("digits",), 112, 28)

    def distance(anchor_weight: float) -> float:
        torch.manual_seed(0)
        model = build_model(cfg)
        align_projector(model, tok, AlignConfig(steps=40, batch_size=4, families=("digits",), progress=False,
                                                anchor_weight=anchor_weight))
        with torch.no_grad():
            x = projected_tokens(model)(pixels)
            target = model.language_model.output_weight[label_words(tok)[labels]]
            return float(((x - target).pow(2).sum(-1) / target.pow(2).sum(-1)).mean())

    anchored, free = distance(1.0), distance(0.0)
    assert anchored < 0.5 < free  # cross-entropy alone leaves the tokens far from (and longer than) the words


class _Draws:
    """Stands in for the generator `_varied` draws from: angle, scale, then the (dx, dy) move."""

    def __init__(self, *values):
        self.values = list(values)

    def uniform(self, low, high, size=None):
        return self.values.pop(0)


def test_varied_train_glyphs_move_by_the_drawn_amount():
    original = np.asarray(digits._glyph(0, 28))
    same = np.asarray(digits._varied(0, 28, _Draws(0.0, 1.0, np.array([0.0, 0.0]))))
    np.testing.assert_array_equal(same, original)
    moved = np.asarray(digits._varied(0, 28, _Draws(0.0, 1.0, np.array([2.0, -3.0]))))
    np.testing.assert_array_equal(moved[:-3, 2:], original[3:, :-2])  # 2 px right, 3 px up
    assert (moved[-3:] == 255).all() and (moved[:, :2] == 255).all()  # uncovered pixels are white paper


def test_shape_tokens_name_whole_shapes_and_only_then_are_shapes_written_or_anchored():
    from dataclasses import replace

    from internvl35.data.tokenizer import ChatTokenizer, train_tokenizer
    from internvl35.train.data import TaskMix, TaskSource, corpus
    from internvl35.train.vision_pretrain import SHAPE_TOKENS, exact_labels, label_words

    old = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")  # trained before SHAPE_TOKENS existed
    new = train_tokenizer(corpus(("digits", "shapes"), 20), 700, extra_special=SHAPE_TOKENS)
    assert not exact_labels(old)[LABEL_ID["red circle"]] and exact_labels(old)[LABEL_ID["digit 7"]]
    assert bool(exact_labels(new)[: LABEL_ID["digit 9"] + 1 + len(SHAPE_TOKENS)].all())
    assert new.decode([int(label_words(new)[LABEL_ID["red circle"]])], skip_special_tokens=False) == "<|red circle|>"
    # They are special: typed by a user they stay plain text, and decoding hides them.
    assert not set(new.encode_text("<|red circle|>")) & set(new.added_token_ids.values())
    assert new.decode([new.added_token_ids["<|red circle|>"]]) == ""
    mix = TaskMix(families=("shapes",), symbolic_ratio=1.0)
    for tok in (old, new):
        cfg = replace(preset("tiny-test"), image_token_id=tok.img_context_id)
        cfg = replace(cfg, vision=replace(cfg.vision, image_size=224, patch_size=14))
        sample, ex = TaskSource(tok, cfg, mix).pick(0)[0], TaskSource(tok, cfg, mix)(0)
        assert sample.layout and {name for _, name in sample.layout} <= set(LABEL_ID)
        if tok is old:  # colour words would erase the shapes: the scene stays pixels
            assert ex.pixel_values is not None
            continue
        written = {new.decode([t], skip_special_tokens=False) for t in ex.input_ids} & set(SHAPE_TOKENS)
        assert ex.pixel_values is None and written == {f"<|{name}|>" for _, name in sample.layout}


def test_alignment_puts_a_shape_token_at_the_mean_of_its_colour_and_shape_words():
    from dataclasses import replace

    from internvl35.data.tokenizer import train_tokenizer
    from internvl35.train.data import corpus
    from internvl35.train.vision_pretrain import (
        SHAPE_TOKENS, AlignConfig, align_projector, dense_batch, label_mixture, label_words, projected_tokens,
    )

    tok = train_tokenizer(corpus(("digits", "shapes"), 20), 700, extra_special=SHAPE_TOKENS)
    mixture = label_mixture(tok)
    red_circle, seven = LABEL_ID["red circle"], LABEL_ID["digit 7"]
    assert _weights(mixture[red_circle]) == {tok.encode_text("red")[0]: 0.5, tok.encode_text(" circle")[0]: 0.5}
    assert _weights(mixture[seven]) == {int(label_words(tok)[seven]): 1.0}
    cfg = preset("tiny-test")
    cfg = replace(cfg, text=replace(cfg.text, vocab_size=tok.vocab_size, tie_word_embeddings=True),
                  vision=replace(cfg.vision, image_size=112, patch_size=14))
    torch.manual_seed(0)
    model = build_model(cfg)
    align_projector(model, tok, AlignConfig(steps=20, batch_size=4, families=("shapes",), progress=False,
                                            anchor_weight=1.0))
    E = model.language_model.output_weight.detach()
    torch.testing.assert_close(E[tok.added_token_ids["<|red circle|>"]], mixture[red_circle] @ E)
    # The shape scenes' tokens are held there too: closer to their targets than to any other label's.
    pixels, labels = dense_batch(list(range(TEST_SEED_START, TEST_SEED_START + 8)), ("shapes",), 112, 28)
    with torch.no_grad():
        x = projected_tokens(model)(pixels)
    shape = labels > LABEL_ID["digit 9"]
    targets = E[label_words(tok)]
    own = (x[shape] - targets[labels[shape]]).norm(dim=-1)
    assert float(own.mean()) < float((x[shape][:, None] - targets[None]).norm(dim=-1).mean())


def _weights(row: torch.Tensor) -> dict[int, float]:
    return {int(i): round(float(row[i]), 6) for i in row.nonzero().flatten()}


def test_a_chart_written_as_words_reads_its_values_in_day_order():
    from dataclasses import replace

    from internvl35.data.inputs import build_inputs
    from internvl35.data.tokenizer import ChatTokenizer
    from internvl35.train.data import symbolic_example
    from internvl35.train.vision_pretrain import label_words

    tok = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")
    cfg = replace(preset("tiny-test"), image_token_id=tok.img_context_id)
    cfg = replace(cfg, vision=replace(cfg.vision, image_size=224, patch_size=14))
    for seed in range(10):
        sample = chart.generate(seed)
        inputs = build_inputs(tok, cfg, sample.question, sample.images, answer=sample.answer)
        ids = symbolic_example(inputs, sample, label_words(tok), cfg).input_ids
        start = inputs.input_ids.index(tok.img_context_id)
        words = [tok.decode([i]) for i in ids[start:start + 64]]
        assert [w for w in words if w != "."] == [name.split()[1] for _, name in sample.layout]


def test_a_document_page_written_as_words_puts_each_field_in_its_tile_and_nothing_in_the_thumbnail():
    from dataclasses import replace

    from internvl35.data.inputs import build_inputs
    from internvl35.data.tokenizer import ChatTokenizer
    from internvl35.tasks import document
    from internvl35.train.data import symbolic_example
    from internvl35.train.vision_pretrain import label_words

    tok = ChatTokenizer.from_dir("internvl35/assets/internvl35-tiny")
    cfg = replace(preset("tiny-test"), image_token_id=tok.img_context_id, max_dynamic_patch=6)
    cfg = replace(cfg, vision=replace(cfg.vision, image_size=224, patch_size=14))
    for seed in range(6):
        sample = document.generate(seed)
        inputs = build_inputs(tok, cfg, sample.question, sample.images, answer=sample.answer)
        assert inputs.tiles_per_image == [5]  # 2 x 2 tiles and the thumbnail
        ids = symbolic_example(inputs, sample, label_words(tok), cfg).input_ids
        start = inputs.input_ids.index(tok.img_context_id)
        tiles = ["".join(w for w in (tok.decode([i]) for i in ids[start + 64 * t:start + 64 * (t + 1)]) if w != ".")
                 for t in range(5)]
        for kind, ((col, row), _, n_digits) in document.FIELDS.items():  # tiles come row-major
            assert len(tiles[2 * row + col]) == n_digits
        (col, row), _, _ = document.FIELDS[sample.kind]
        assert tiles[2 * row + col] == sample.answer and tiles[4] == ""  # the thumbnail says nothing
