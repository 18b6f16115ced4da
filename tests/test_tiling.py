"""Dynamic tiling: the spec's worked examples, the grid rule against brute force, and parity with
transformers' InternVL image processor.

Differences from transformers, pinned here:
- Candidate order within one tile count: transformers sorts (count, cols) like us; InternVL's
  `dynamic_preprocess` sorts a Python set by count, so within a count it follows set iteration.
  The chosen grid is the same either way (test_within_count_order_never_matters).
- Backend: AutoImageProcessor gives `GotOcr2ImageProcessorPil` here (no torchvision), which
  resizes with PIL bicubic as we do: tiles agree to float rounding (~5e-7). Its default backend,
  torchvision's `GotOcr2ImageProcessor`, resizes with torch's antialiased bicubic and differs
  from PIL (and from InternVL's training pipeline) by a few grey levels; not installed here.
- Class defaults: `GotOcr2ImageProcessorPil()` defaults to OpenAI-CLIP mean/std and 384 px with
  crop_to_patches off; InternVL checkpoints override them in preprocessor_config.json, as below.
- Multi-image budget: transformers gives every image the full max_patches; InternVL (and we)
  give each of n images max(1, max_num // n).
"""
from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from internvl35.data.tiling import (
    IMAGENET_MEAN, IMAGENET_STD, candidate_grids, choose_grid, jpeg_augment, preprocess_image,
    preprocess_images, tile_image, to_tensor,
)

WORKED = [((448, 448), (1, 1), 1), ((896, 896), (2, 2), 5), ((1344, 1344), (3, 3), 10),
          ((1920, 1080), (4, 2), 9), ((800, 600), (4, 3), 13)]
HF_CONFIG = {  # as shipped in OpenGVLab/InternVL3_5-*-HF preprocessor_config.json
    "image_processor_type": "GotOcr2ImageProcessorFast", "crop_to_patches": True,
    "min_patches": 1, "max_patches": 12, "size": {"height": 448, "width": 448}, "resample": 3,
    "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "do_convert_rgb": True,
}


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def reference_order(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """InternVL's candidate list: a set of grids sorted (stably) by tile count."""
    grids = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
             for j in range(1, n + 1) if min_num <= i * j <= max_num}
    return sorted(grids, key=lambda g: g[0] * g[1])


def brute_force(w: int, h: int, tile: int, grids: list[tuple[int, int]]) -> tuple[int, int]:
    """The stated rule, computed from the full set of closest grids rather than a running best:
    the first closest grid, unless a later equally close grid has area > 0.5 * tile^2 * count
    (the last such one wins, since each tie replaces the previous best)."""
    diffs = [abs(w / h - c / r) for c, r in grids]
    tied = [g for g, d in zip(grids, diffs) if d == min(diffs)]
    winners = [g for g in tied[1:] if w * h > 0.5 * tile * tile * g[0] * g[1]]
    return winners[-1] if winners else tied[0]


def random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(n)]
    # exact aspect ratios of grids, at many scales, to exercise the tie rule
    for _ in range(n):
        c, r, k = rng.randint(1, 12), rng.randint(1, 12), rng.randint(1, 400)
        sizes.append((c * k, r * k))
    return sizes


@pytest.mark.parametrize("size,grid,n_tiles", WORKED)
def test_worked_examples(size, grid, n_tiles):
    assert choose_grid(*size) == grid
    x = preprocess_image(noise(*size))
    assert x.shape == (n_tiles, 3, 448, 448) and x.dtype == torch.float32
    assert len(tile_image(noise(*size))) == n_tiles


def test_candidate_grids():
    grids = candidate_grids()
    assert len(grids) == 35 and len(set(grids)) == 35
    assert set(grids) == set(reference_order(1, 12))
    counts = [c * r for c, r in grids]
    assert counts == sorted(counts) and grids[0] == (1, 1)
    assert candidate_grids(2, 4) == [(1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1)]
    with pytest.raises(ValueError):
        candidate_grids(0, 12)
    with pytest.raises(ValueError):
        candidate_grids(5, 4)


@pytest.mark.parametrize("tile,min_num,max_num", [(448, 1, 12), (224, 1, 12), (448, 1, 6),
                                                  (448, 2, 2), (448, 3, 24), (224, 1, 40)])
def test_choose_grid_matches_brute_force(tile, min_num, max_num):
    grids = candidate_grids(min_num, max_num)
    for w, h in random_sizes(300, seed=tile + max_num):
        assert choose_grid(w, h, tile, min_num, max_num) == brute_force(w, h, tile, grids), (w, h)


def test_within_count_order_never_matters():
    for mn, mx in [(1, 12), (2, 2), (1, 6), (3, 12)]:
        ours, ref = candidate_grids(mn, mx), reference_order(mn, mx)
        for w, h in random_sizes(300, seed=mx):
            assert brute_force(w, h, 448, ours) == brute_force(w, h, 448, ref), (w, h)
    assert candidate_grids() != reference_order(1, 12)  # the orders do differ, e.g. (3, 1)/(1, 3)


def test_tie_rule_examples():
    assert choose_grid(896, 896) == (2, 2)  # 896^2 > 0.5*448^2*4, but not > 0.5*448^2*9
    assert choose_grid(300, 300) == (1, 1)  # too small to take 2x2
    assert choose_grid(1000, 800, min_num=2, max_num=2) == (2, 1)  # 1.25: (1,2) and (2,1) tie
    assert choose_grid(100, 80, min_num=2, max_num=2) == (1, 2)  # too small: the first stays
    with pytest.raises(ValueError):
        choose_grid(0, 10)


def test_tiles_are_row_major_with_thumbnail_last():
    img = noise(1920, 1080, seed=3)
    x = preprocess_image(img)
    grid = img.resize((4 * 448, 2 * 448), Image.Resampling.BICUBIC)
    crops = [grid.crop((c * 448, r * 448, (c + 1) * 448, (r + 1) * 448))
             for r in range(2) for c in range(4)]
    thumb = img.resize((448, 448), Image.Resampling.BICUBIC)
    assert torch.equal(x, to_tensor(crops + [thumb]))
    assert torch.equal(x, to_tensor(tile_image(img)))
    assert preprocess_image(img, use_thumbnail=False).shape[0] == 8


def test_single_and_multi_threaded_paths_agree():
    img = noise(1000, 700, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # thumbnail resized inline
        inline = preprocess_image(img)
        torch.set_num_threads(2)  # thumbnail resized on a helper thread
        threaded = preprocess_image(img)
    finally:
        torch.set_num_threads(threads)
    assert inline.shape[0] > 1 and torch.equal(inline, threaded)


def test_tile_224_and_no_dynamic():
    assert preprocess_image(noise(448, 448), tile=224).shape == (5, 3, 224, 224)
    assert preprocess_image(noise(1920, 1080), tile=224).shape == (9, 3, 224, 224)  # 4x2 + 1
    img = noise(640, 480)
    single = preprocess_image(img, tile=224, dynamic=False)
    assert single.shape == (1, 3, 224, 224)
    assert torch.equal(single, to_tensor([img.resize((224, 224), Image.Resampling.BICUBIC)]))


def test_normalisation_values():
    white = Image.new("RGB", (448, 448), (255, 255, 255))
    black = Image.new("RGB", (448, 448), (0, 0, 0))
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    for img, v in [(white, (1 - mean) / std), (black, -mean / std)]:
        x = preprocess_image(img)
        assert torch.allclose(x, v.view(1, 3, 1, 1).expand_as(x), atol=1e-6)
    arr = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = to_tensor(arr)
    assert torch.equal(x, to_tensor([Image.fromarray(a) for a in arr]))
    ref = (torch.from_numpy(arr).permute(0, 3, 1, 2) / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.allclose(x, ref, atol=1e-6)


def test_odd_modes_are_converted():
    rgba = Image.new("RGBA", (500, 300), (10, 20, 30, 0))
    white = Image.new("RGB", (500, 300), "white")
    assert torch.allclose(preprocess_image(rgba), preprocess_image(white))
    assert preprocess_image(Image.new("L", (500, 300), 7)).shape == (7, 3, 448, 448)  # 3x2 + 1


def test_multi_image_budget():
    imgs = [noise(1920, 1080, s) for s in range(3)]
    out = preprocess_images(imgs)  # 12 // 3 = 4 tiles each: 2x1 + thumb
    assert [t.shape[0] for t in out] == [3, 3, 3]
    assert torch.equal(out[1], preprocess_image(imgs[1], max_num=4))
    assert [t.shape[0] for t in preprocess_images([noise(900, 900)] * 13)] == [1] * 13
    assert preprocess_images([]) == []


def test_jpeg_augment_quality_draw():
    img = noise(64, 48)

    def encoded(q: int) -> np.ndarray:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    q = int(np.random.default_rng(5).integers(75, 101))
    out = jpeg_augment(img, np.random.default_rng(5))
    assert out.mode == "RGB" and out.size == img.size
    assert np.array_equal(np.asarray(out), encoded(q))
    assert np.array_equal(np.asarray(jpeg_augment(img, random.Random(0), 90, 90)), encoded(90))
    assert not np.array_equal(np.asarray(out), np.asarray(img))  # lossy on noise


# --- transformers parity -------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_proc(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf_internvl")
    (d / "preprocessor_config.json").write_text(json.dumps(HF_CONFIG))
    return transformers.AutoImageProcessor.from_pretrained(str(d))


def smooth(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(a.astype(np.uint8))


@pytest.mark.parametrize("tile", [448, 224])
@pytest.mark.parametrize("size", [(448, 448), (896, 896), (1920, 1080), (800, 600), (333, 1000),
                                  (50, 30), (2000, 500)])
def test_pixels_match_transformers(hf_proc, tile, size):
    for img in (noise(*size), smooth(*size)):
        theirs = hf_proc(images=img, return_tensors="pt", size={"height": tile, "width": tile})
        ours = preprocess_image(img, tile=tile)
        assert theirs["num_patches"].tolist() == [ours.shape[0]]
        assert torch.allclose(ours, theirs["pixel_values"], atol=1e-5, rtol=0)


def test_grid_choice_matches_transformers(hf_proc):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    for w, h in random_sizes(300, seed=7):
        assert get_optimal_tiled_canvas((h, w), (448, 448), 1, 12) == choose_grid(w, h), (w, h)


def test_transformers_differences_are_as_documented(hf_proc):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil, get_all_supported_aspect_ratios,
    )

    assert type(hf_proc).__name__ == "GotOcr2ImageProcessorPil"
    assert get_all_supported_aspect_ratios(1, 12) == candidate_grids()
    default = GotOcr2ImageProcessorPil()
    assert tuple(default.image_mean) != IMAGENET_MEAN and not default.crop_to_patches
    imgs = [noise(1920, 1080, s) for s in range(3)]
    # transformers: full budget per image (3 x 9 tiles); the InternVL budget needs max_patches=4
    assert hf_proc(images=imgs, return_tensors="pt")["num_patches"].tolist() == [9, 9, 9]
    theirs = hf_proc(images=imgs, return_tensors="pt", max_patches=4)["pixel_values"]
    assert torch.allclose(torch.cat(preprocess_images(imgs)), theirs, atol=1e-5, rtol=0)
