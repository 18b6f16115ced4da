"""Dynamic high-resolution tiling (SYSTEM.md section 2): PIL image -> normalised tile tensor.

Algorithm, for tile size T (448 by default; 224 works the same) and a tile budget
min_num..max_num (1..12 by default):

1. Candidate grids: every (cols, rows) with min_num <= cols * rows <= max_num, ordered by tile
   count, then by cols (35 grids for 1..12).
2. Choose the grid whose aspect ratio cols / rows is closest to width / height (float
   arithmetic, as the reference). On an exact tie with the best grid so far, a later (larger)
   grid wins only if the image area exceeds half the grid's pixel area,
   width * height > 0.5 * T^2 * cols * rows; so small images do not get blown up.
3. Resize the image once to (T * cols, T * rows), bicubic (PIL), and cut it row-major into
   cols * rows tiles of T x T (one reshape/transpose, not cols * rows crops).
4. If there is more than one tile (and use_thumbnail), append a thumbnail: the whole original
   image resized to T x T. The thumbnail is always last.
5. uint8 RGB -> float32 (N, 3, T, T), x / 255 normalised with the ImageNet mean and std:
   one strided multiply that reads the resized grid in tile order and casts as it goes, then
   one add (numpy, see `_normalise_into`). The thumbnail resize runs on a helper thread
   meanwhile when torch is allowed more than one thread (PIL releases the GIL).

Worked example, 1920x1080 at T=448, max 12: aspect 1.778. The closest ratio is 2 (diff 0.222;
3/2 is 0.278 away). Grids with ratio 2 are (2, 1) and (4, 2), a tie; the area 2,073,600 >
0.5 * 448^2 * 8 = 802,816, so (4, 2) wins ((6, 3) has 18 tiles, over budget). The image is
resized to 1792x896 and cut into 8 tiles (row 0 left to right, then row 1), plus a 448x448
thumbnail: 9 tiles, 9 * 256 = 2304 image tokens. Likewise 448x448 -> 1 tile; 896x896 -> 2x2 +
thumb = 5 (3x3 loses the tie: 802,816 < 0.5 * 448^2 * 9); 1344x1344 -> 3x3 + thumb = 10;
800x600 -> 4x3 + thumb = 13.

Several images in one prompt share the budget: each gets max(1, max_num // n_images) tiles.

Relation to the references. The grid rule, resize backend (PIL bicubic, no reducing_gap),
tile order and thumbnail are those of InternVL's `dynamic_preprocess`. Its candidate list is a
Python set sorted by tile count, so the order within one count is the set's iteration order;
we order by (count, cols) like transformers' `get_all_supported_aspect_ratios`. The order
within a count could only matter if two grids of one count tied exactly; a sweep of every size
up to 3000x3000 for several budgets found no image where the chosen grid differs. transformers'
`GotOcr2ImageProcessorPil` (chosen by AutoImageProcessor when torchvision is absent) gives the
same tiles to float rounding; its default torchvision backend resizes with torch's bicubic
(antialiased), which differs from PIL by a few grey levels. transformers also gives every image
of a multi-image prompt the full max_patches, not max(1, max_num // n). See tests/test_tiling.py.
"""
from __future__ import annotations

import io
import random
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from internvl35.data.image import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# x_norm = (x / 255 - mean) / std = x * scale + shift.
_SCALE = np.array([1.0 / (255.0 * s) for s in IMAGENET_STD], dtype=np.float32).reshape(3, 1, 1)
_SHIFT = np.array([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
                  dtype=np.float32).reshape(3, 1, 1)


def candidate_grids(min_num: int = 1, max_num: int = 12) -> list[tuple[int, int]]:
    """All (cols, rows) with min_num <= cols * rows <= max_num, by tile count then cols."""
    return list(_grids(min_num, max_num))


@lru_cache(maxsize=64)
def _grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    if not 1 <= min_num <= max_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    grids = [(c, r) for c in range(1, max_num + 1) for r in range(1, max_num + 1)
             if min_num <= c * r <= max_num]
    return tuple(sorted(grids, key=lambda g: (g[0] * g[1], g[0])))


def choose_grid(width: int, height: int, tile: int = 448, min_num: int = 1,
                max_num: int = 12) -> tuple[int, int]:
    """The (cols, rows) grid for a width x height image (steps 1-2 of the module docstring)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in _grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)  # exact tie: the larger grid only if the image fills half of it
    return best


def tile_image(img: Image.Image, tile: int = 448, min_num: int = 1, max_num: int = 12,
               use_thumbnail: bool = True) -> list[Image.Image]:
    """Tiles as PIL images: row-major grid tiles, then the thumbnail when there are several."""
    img = to_rgb(img)
    cols, rows = choose_grid(img.width, img.height, tile, min_num, max_num)
    grid = _resize(img, tile * cols, tile * rows)
    tiles = [grid.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(_resize(img, tile, tile))
    return tiles


def to_tensor(tiles: Sequence[Image.Image] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Square RGB tiles (PIL images, or uint8 (N, T, T, 3)) -> normalised float32 (N, 3, T, T)."""
    if isinstance(tiles, (np.ndarray, torch.Tensor)):
        u8 = np.asarray(tiles)
        if u8.dtype != np.uint8 or u8.ndim != 4 or u8.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, T, T, 3), got {u8.dtype} {u8.shape}")
        out = np.empty((u8.shape[0], 3, u8.shape[1], u8.shape[2]), dtype=np.float32)
        _normalise_into(out, u8.transpose(0, 3, 1, 2))
        return torch.from_numpy(out)
    if len(tiles) == 0:
        raise ValueError("to_tensor needs at least one tile")
    w, h = tiles[0].size
    out = np.empty((len(tiles), 3, h, w), dtype=np.float32)
    for i, t in enumerate(tiles):
        if t.size != (w, h):
            raise ValueError(f"tile {i} is {t.size}, expected {(w, h)}")
        _normalise_into(out[i], _u8(to_rgb(t)).transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)
    return torch.from_numpy(out)


def preprocess_image(img: Image.Image, tile: int = 448, max_num: int = 12, min_num: int = 1,
                     use_thumbnail: bool = True, dynamic: bool = True) -> torch.Tensor:
    """One image -> (N, 3, tile, tile) float32. dynamic=False: a single tile resized to tile x tile."""
    img = to_rgb(img)
    if not dynamic:
        return _grid_tensor(img, tile, 1, 1, use_thumbnail=False)
    cols, rows = choose_grid(img.width, img.height, tile, min_num, max_num)
    return _grid_tensor(img, tile, cols, rows, use_thumbnail)


def preprocess_images(images: Sequence[Image.Image], tile: int = 448, max_num: int = 12,
                      min_num: int = 1, use_thumbnail: bool = True,
                      dynamic: bool = True) -> list[torch.Tensor]:
    """Several images of one prompt: each gets at most max(1, max_num // len(images)) tiles."""
    if not images:
        return []
    budget = max(1, max_num // len(images))
    return [preprocess_image(im, tile, budget, min(min_num, budget), use_thumbnail, dynamic)
            for im in images]


def jpeg_augment(img: Image.Image, rng: np.random.Generator | random.Random, low: int = 75,
                 high: int = 100) -> Image.Image:
    """Training augmentation: re-encode as JPEG, quality uniform in [low, high] (inclusive).

    `rng` is a numpy Generator or a `random.Random`.
    """
    if hasattr(rng, "integers"):
        quality = int(rng.integers(low, high + 1))
    else:
        quality = rng.randint(low, high)
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")  # convert() decodes fully, so the buffer may close


def _grid_tensor(img: Image.Image, tile: int, cols: int, rows: int,
                 use_thumbnail: bool) -> torch.Tensor:
    """Steps 3-5: resize once, cut and normalise with one strided pass into the output."""
    n = cols * rows
    extra = 1 if use_thumbnail and n > 1 else 0
    # The thumbnail resize is independent of the grid: overlap it (PIL releases the GIL).
    thumb = _Background(_resize, img, tile, tile) if extra else None
    out = np.empty((n + extra, 3, tile, tile), dtype=np.float32)
    grid = _u8(_resize(img, tile * cols, tile * rows))  # (rows*T, cols*T, 3)
    # (rows, T, cols, T, 3) -> (rows, cols, 3, T, T): tiles row-major, channels first
    _normalise_into(out[:n].reshape(rows, cols, 3, tile, tile),
                    grid.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3))
    if thumb is not None:
        _normalise_into(out[n], _u8(thumb.result()).transpose(2, 0, 1))
    return torch.from_numpy(out)


class _Background:
    """fn(*args) on a helper thread when torch may use more than one thread, else inline.

    A fresh thread per call (about 0.1 ms) rather than a pool: nothing to leak into forked
    data-loader workers, which run with one torch thread and so never start one.
    """

    def __init__(self, fn: Callable[..., Image.Image], *args: object) -> None:
        self._out: Image.Image | None = None
        self._err: BaseException | None = None
        self._thread = None
        if torch.get_num_threads() > 1:
            self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
            self._thread.start()
        else:
            self._run(fn, args)

    def _run(self, fn: Callable[..., Image.Image], args: tuple) -> None:
        try:
            self._out = fn(*args)
        except BaseException as e:  # re-raised in the caller's thread by result()
            self._err = e

    def result(self) -> Image.Image:
        if self._thread is not None:
            self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out


def _resize(img: Image.Image, width: int, height: int) -> Image.Image:
    # PIL bicubic without reducing_gap, as the reference; skip the copy when the size is right.
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.BICUBIC)


def _u8(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> read-only uint8 array (H, W, 3), one copy out of PIL."""
    return np.asarray(img)


def _normalise_into(out: np.ndarray, u8: np.ndarray) -> None:
    """out = (u8 / 255 - mean) / std over a channels-first (..., 3, H, W) view.

    numpy, not torch: single-threaded kernels stay fast when the cores are busy, where torch's
    OpenMP parallel regions slowed down by over 10x (measured on a loaded 2-core box); and the
    multiply casts uint8 to float32 during the (strided, permuting) read, so there is no
    separate conversion pass.
    """
    np.multiply(u8, _SCALE, out=out, casting="unsafe")
    np.add(out, _SHIFT, out=out)
