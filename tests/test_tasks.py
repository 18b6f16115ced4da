"""The synthetic task world: determinism, splits, every kind self-consistent, robust checkers."""

from __future__ import annotations

import json
import time

import pytest

from internvl35.tasks import answers, base, digits, document, embodied
from internvl35.tasks.answers import score
from internvl35.tasks.base import (
    FAMILIES,
    FAMILY_NAMES,
    TEST_SEED_START,
    make_mix,
    make_split,
    render_target,
    split_seeds,
)

SEEDS_PER_KIND = 25


def _all_samples():
    for name in FAMILY_NAMES:
        fam = FAMILIES[name]
        for kind in fam.kinds:
            for i in range(SEEDS_PER_KIND):
                seed = i if i % 2 == 0 else TEST_SEED_START + i
                yield fam, fam.generate(seed, kind=kind)


def _wrong(sample) -> str:
    """An answer to `sample` that must score 0.0."""
    t = sample.target
    if t["type"] == "number":
        return str(t["value"] + 1)
    if t["type"] == "digits":
        v = t["value"]
        return v[:-1] + str((int(v[-1]) + 1) % 10)
    if t["type"] == "text":
        return t["value"] + "7"
    if t["type"] == "choice":
        bad = next(o for o in t["options"] if o not in t["answers"])
        letters = {v: k for k, v in t.get("letters", {}).items()}
        return letters.get(bad, bad)
    if t["type"] == "box":
        far = [b for b in ([0, 0, 60, 60], [940, 940, 1000, 1000]) if answers.iou(b, t["box"]) == 0]
        return "<ref>x</ref><box>[[{}, {}, {}, {}]]</box>".format(*far[0])
    x1, y1, x2, y2 = t["box"]
    out = [(x, y) for x in (0.0, 1.0) for y in (0.0, 1.0) if not (x1 <= x <= x2 and y1 <= y <= y2)]
    return f"click(x={out[0][0]}, y={out[0][1]})"


# ---- registry, determinism, splits ----------------------------------------------------


def test_registry_lists_every_family_in_order():
    assert tuple(FAMILIES) == FAMILY_NAMES
    for name, fam in FAMILIES.items():
        assert fam.name == name and len(fam.kinds) >= 2


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_same_seed_same_bytes_and_text(name):
    fam = FAMILIES[name]
    for seed in (0, 17, TEST_SEED_START + 3):
        a, b = fam.generate(seed), fam.generate(seed)
        assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]
        assert (a.kind, a.question, a.answer, a.rationale, a.target) == (
            b.kind, b.question, b.answer, b.rationale, b.target,
        )  # fmt: skip
    images = {fam.generate(s).images[0].tobytes() for s in range(8)}
    assert len(images) == 8, "different seeds should give different scenes"


def test_train_and_test_seeds_are_disjoint():
    train = set(split_seeds("train", 5000))
    test = set(split_seeds("test", 5000))
    assert not train & test
    assert max(train) < TEST_SEED_START <= min(test)
    assert split_seeds("train", 3, start=10) == [10, 11, 12]
    assert all(base.split_of(s) == "test" for s in test)
    assert all(base.split_of(s) == "train" for s in train)
    with pytest.raises(ValueError):
        split_seeds("train", 2, start=TEST_SEED_START - 1)
    with pytest.raises(ValueError):
        split_seeds("valid", 1)


def test_make_split_and_mix_are_deterministic_and_balanced():
    a = make_split("shapes", "test", 4)
    b = make_split(FAMILIES["shapes"], "test", 4)
    assert [s.question for s in a] == [s.question for s in b]
    mix = make_mix(["digits", "chart"], "train", 3)
    assert [s.family for s in mix] == ["digits", "chart"] * 3
    assert len(make_mix(None, "train", 1)) == len(FAMILY_NAMES)


def test_digit_images_come_from_disjoint_pools(monkeypatch):
    train, test = set(digits.pool_indices("train")), set(digits.pool_indices("test"))
    assert not train & test and len(train | test) == 1797
    used = []
    real = digits._glyph
    monkeypatch.setattr(digits, "_glyph", lambda idx, px: used.append(idx) or real(idx, px))
    for s in range(20):
        digits.generate(s)
    assert used and set(used) <= train
    used.clear()
    for s in range(20):
        digits.generate(TEST_SEED_START + s)
    assert used and set(used) <= test


# ---- every family and kind agrees with its own checker ---------------------------------


def test_every_kind_reference_scores_one_and_wrong_scores_zero():
    for fam, s in _all_samples():
        ctx = f"{s.family}/{s.kind}: {s.question!r} -> {s.answer!r}"
        assert s.family == fam.name and s.kind in fam.kinds
        assert s.images and all(im.mode == "RGB" for im in s.images), ctx
        assert s.answer and s.rationale and "\n" not in s.answer, ctx
        assert fam.score(s, s.answer) == 1.0, ctx
        assert fam.score(s, render_target(s, thinking=True)) == 1.0, ctx
        assert fam.score(s, f"<think>{s.rationale}</think>\n{_wrong(s)}") == 0.0, ctx
        assert fam.score(s, _wrong(s)) == 0.0, ctx
        json.dumps(s.target)  # targets travel in eval logs
        if s.target["type"] not in ("box", "click"):
            assert fam.score(s, f"So the answer is \\boxed{{{s.answer}}}.") == 1.0, ctx
            assert fam.score(s, f"Answer: {s.answer}") == 1.0, ctx


def test_every_question_states_the_answer_format():
    for _, s in _all_samples():
        assert "Answer" in s.question or s.question.startswith("Please provide the bounding box")


def test_render_target_styles():
    s = FAMILIES["digits"].generate(1)
    assert render_target(s, thinking=False) == s.answer
    assert render_target(s, thinking=True) == f"<think>{s.rationale}</think>\n{s.answer}"


def test_embodied_bfs_counts_steps_around_walls():
    # 3x3, goal top-left, wall in the centre: the far corner is 4 steps away either way.
    d = embodied.distances(3, {(1, 1)}, (0, 0))
    assert d[(2, 2)] == 4 and d[(0, 2)] == 2 and (1, 1) not in d
    s = FAMILIES["embodied"].generate(5, kind="move")
    assert set(s.target["answers"]) == {"up", "right"}
    assert score(s.target, "right") == score(s.target, "up") == 1.0
    assert score(s.target, "down") == 0.0


def test_document_numbers_fill_whole_tokens_only_in_the_tiles():
    s = FAMILIES["document"].generate(0)
    assert s.images[0].size == (448, 448)  # 2 x 2 tiles of 224 px and a thumbnail at half the scale
    assert len(s.layout) == sum(n for _, _, n in document.FIELDS.values())
    for (x0, y0, x1, y1), name in s.layout:  # a 28-px lattice cell each: one token in a tile, a quarter in the thumbnail
        assert (x1 - x0, y1 - y0) == (28, 28) and x0 % 28 == 0 and y0 % 28 == 0 and name.startswith("digit")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_generation_is_fast(name):
    fam = FAMILIES[name]
    fam.generate(0)  # warm caches (load_digits, fonts)
    t = time.perf_counter()
    for seed in range(50):
        fam.generate(seed)
    assert (time.perf_counter() - t) / 50 < 0.02  # a few ms each; loose for a shared CPU


# ---- checker: extraction and adversarial output -----------------------------------------

NUM8 = {"type": "number", "value": 8}


@pytest.mark.parametrize(
    "out, want",
    [
        ("8", 1), ("8.0", 1), ("Answer: 8", 1), ("The answer is 8.", 1), ("5 + 3 = 8", 1),
        ("eight", 1), ("<think>the answer is 7</think>\n8", 1), ("<think>8 is it</think>\n7", 0),
        ("<think>still thinking about 8", 0), ("\\boxed{8} so \\boxed{8}", 1),
        ("\\boxed{8} or maybe \\boxed{9}", 0), ("\\boxed{9}", 0), ("8<|im_end|>", 1),
        ("", 0), ("   ", 0), ("no idea", 0), ("@@##!!", 0), ("5-3", 0),
    ],
)  # fmt: skip
def test_number_extraction(out, want):
    assert score(NUM8, out) == want


def test_choice_letters_and_words():
    t = {"type": "choice", "answers": ["tea"], "options": ["tea", "jam"], "letters": {"A": "tea", "B": "jam"}}
    for ok in ("A", "(A)", "a.", "The answer is A", "tea", "Tea is larger.", "\\boxed{A}"):
        assert score(t, ok) == 1.0, ok
    for bad in ("B", "jam", "tea or jam", "AB", "", "C"):
        assert score(t, bad) == 0.0, bad


def test_digits_and_text_equivalents():
    d = {"type": "digits", "value": "503"}
    assert all(score(d, o) == 1.0 for o in ("503", "5 0 3", "5, 0, 3", "The digits are 5, 0, 3."))
    assert score(d, "53") == 0.0 and score(d, "3 digits: 5 0 3") == 0.0
    t = {"type": "text", "value": "INV-4821"}
    assert all(score(t, o) == 1.0 for o in ("INV-4821", "inv-4821.", "The invoice number is INV-4821."))
    assert score(t, "INV-4822") == 0.0 and score(t, "INV-4821 or INV-4822") == 0.0


BOX = {"type": "box", "box": [0, 0, 100, 100]}


def test_iou_threshold_is_inclusive_at_one_half():
    assert answers.iou([0, 0, 100, 50], [0, 0, 100, 100]) == 0.5
    assert score(BOX, "<ref>a</ref><box>[[0, 0, 100, 50]]</box>") == 1.0
    assert score(BOX, "<ref>a</ref><box>[[0, 0, 100, 49]]</box>") == 0.0
    assert score(BOX, "[[0, 0, 100, 100]]") == 1.0  # the tags are optional


@pytest.mark.parametrize(
    "out",
    [
        "<box>[[0, 0, 1200, 100]]</box>", "<box>[[-5, 0, 100, 100]]</box>", "<box>[[0, 0, 100]]</box>",
        "<box>[[a, b, c, d]]</box>", "<box>[[100, 0, 0, 100]]</box>", "<box>[[0, 0, 100, 100]]",
        "[[0, 0, 100, 100]] [[500, 500, 900, 900]]", "<box>[[0, 0, 100, 100, 5]]</box>", "<box></box>",
        "[[nan, 0, 100, 100]]", "[[inf, 0, 100, 100]]",
    ],
)  # fmt: skip
def test_bad_boxes_are_wrong_not_errors(out):
    want = 1.0 if out == "<box>[[0, 0, 100, 100]]" else 0.0  # a missing </box> still has [[..]]
    assert score(BOX, out) == want


CLICK = {"type": "click", "box": [0.2, 0.4, 0.5, 0.6]}


def test_click_inside_outside_and_malformed():
    assert score(CLICK, "click(x=0.35, y=0.5)") == 1.0
    assert score(CLICK, "<think>it is the button</think>\npyautogui.click(x=0.2, y=0.6)") == 1.0
    assert score(CLICK, "click(0.3, 0.45)") == 1.0
    for bad in (
        "click(x=0.51, y=0.5)", "click(x=0.35, y=0.39)", "click(x=1.5, y=0.5)", "click(x=0.35)",
        "click(x=abc, y=0.5)", "click()", "click(x=nan, y=0.5)", "click(x=0.3, y=0.5) click(x=0.9, y=0.9)",
        "click(x=0.3, 0.5)", "tap the button", "",
    ):  # fmt: skip
        assert score(CLICK, bad) == 0.0, bad


def test_huge_and_hostile_outputs_never_raise_and_stay_fast():
    megabyte = 1 << 20
    hostile = [
        "a" * megabyte, "(" * megabyte, "[[" * megabyte, "\\boxed{" * (megabyte // 7),
        "click(" * (megabyte // 6), "<think>" * (megabyte // 7), "9" * megabyte, "1," * megabyte,
        "Answer: " * (megabyte // 8), "</think>" * (megabyte // 8), "\x00\xff\ud7ff" * 1000,
    ]  # fmt: skip
    targets = [NUM8, BOX, CLICK, {"type": "digits", "value": "5"}, {"type": "text", "value": "x"},
               {"type": "choice", "answers": ["up"], "options": ["up", "down"]}]  # fmt: skip
    t = time.perf_counter()
    for out in hostile:
        for target in targets:
            assert score(target, out) in (0.0, 1.0)
    assert score(NUM8, "x" * megabyte + " Answer: 8") == 1.0  # the tail is read
    assert score(NUM8, None) == 0.0  # type: ignore[arg-type]
    assert time.perf_counter() - t < 10.0


# ---- example assets ---------------------------------------------------------------------


def test_examples_are_small_and_match_the_committed_copy(tmp_path):
    from internvl35.tasks import examples

    index = examples.write_examples(tmp_path)
    assert set(index) == set(FAMILY_NAMES)
    for name, ex in index.items():
        png = tmp_path / ex["image"]
        assert png.stat().st_size < 30_000, name
        s = FAMILIES[name].generate(ex["seed"], kind=ex["kind"])
        assert s.answer == ex["answer"] and score(s.target, ex["answer"]) == 1.0
    committed = examples.OUT / "examples.json"
    if committed.exists():
        assert json.loads(committed.read_text()) == index, "rerun python -m internvl35.tasks.examples"
