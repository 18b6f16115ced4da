"""Video input: uniform frame sampling and one 448 (or 224) tile per frame, no thumbnail.

Supported sources, with no video-codec dependency: a directory of frame images (sorted by
name, numbers compared as numbers: frame_2 before frame_10), a list of images (paths, bytes
or PIL images), or an animated GIF / WebP / PNG file. Videos such as .mp4 need a codec;
extract frames first, e.g. `ffmpeg -i clip.mp4 frames/%05d.png`.

The prompt convention (SYSTEM.md section 2) is `Frame1: <image>\\nFrame2: <image>\\n...`, 8 to
32 frames.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from internvl35.data.image import MAX_PIXELS, ImageError, load_image, to_rgb
from internvl35.data.tiling import preprocess_image

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv", ".mpg",
                  ".mpeg", ".3gp", ".ts")
SUPPORTED = ("a directory of frame images (" + ", ".join(FRAME_SUFFIXES) + "), a list of "
             "images, or an animated GIF/WebP/PNG file")


class VideoError(ValueError):
    """A video source that cannot be read; the message says why and what is supported."""


def sample_frame_indices(num_frames_total: int, num_segments: int) -> list[int]:
    """Indices of `num_segments` frames, one near the centre of each of equal segments.

    As InternVL's `get_index` without a time bound: the span 0..N-1 is cut into num_segments
    segments of size s = (N - 1) / num_segments and frame i is int(s / 2 + round(s * i))
    (round half to even, like numpy). Short videos repeat frames rather than return fewer.
    Example: N = 100, 8 segments -> s = 12.375 -> [6, 18, 31, 43, 56, 68, 80, 93].
    """
    if num_frames_total < 1:
        raise VideoError(f"a video needs at least one frame, got {num_frames_total}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be at least 1, got {num_segments}")
    seg = (num_frames_total - 1) / num_segments
    return [int(seg / 2 + round(seg * i)) for i in range(num_segments)]


def load_video_frames(source: str | Path | Sequence[str | Path | bytes | Image.Image],
                      num_segments: int = 8, max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """`num_segments` RGB frames sampled uniformly from a frame directory, list or animated file."""
    if isinstance(source, (list, tuple)):
        return _sample_list(list(source), num_segments, max_pixels)
    if isinstance(source, str) and source.strip().lower().startswith(("http://", "https://")):
        raise VideoError(f"URLs are not fetched here (got {source[:200]!r}); supported: {SUPPORTED}")
    if not isinstance(source, (str, Path)):
        raise VideoError(f"unsupported video source type {type(source).__name__}; "
                         f"supported: {SUPPORTED}")
    path = Path(source)
    if not path.exists():
        raise VideoError(f"video source not found: {path}")
    if path.is_dir():
        frames = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES),
                        key=_natural_key)
        if not frames:
            raise VideoError(f"no frame images ({', '.join(FRAME_SUFFIXES)}) in directory {path}")
        return _sample_list(frames, num_segments, max_pixels)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise VideoError(f"cannot decode {path.name}: {path.suffix} needs a video codec, which "
                         f"internvl35 does not depend on. Supported: {SUPPORTED}. Extract frames "
                         f"first, e.g. ffmpeg -i {path.name} frames/%05d.png")
    return _sample_animated(path, num_segments, max_pixels)


def preprocess_video(frames: Sequence[Image.Image], tile: int = 448) -> torch.Tensor:
    """Frames -> (num_frames, 3, tile, tile): each frame resized to tile x tile, no thumbnail."""
    if not frames:
        raise VideoError("preprocess_video needs at least one frame")
    return torch.cat([preprocess_image(f, tile=tile, dynamic=False) for f in frames])


def _sample_list(items: list, num_segments: int, max_pixels: int) -> list[Image.Image]:
    if not items:
        raise VideoError(f"empty frame list; supported: {SUPPORTED}")
    idx = sample_frame_indices(len(items), num_segments)
    loaded = {i: load_image(items[i], max_pixels) for i in sorted(set(idx))}  # repeats load once
    return [loaded[i] for i in idx]


def _sample_animated(path: Path, num_segments: int, max_pixels: int) -> list[Image.Image]:
    """Frames of an animated image; frames are decoded in order (GIF cannot seek backwards cheaply)."""
    first = load_image(path, max_pixels)  # all checks (size, corruption, format) on frame 0
    try:
        with Image.open(path) as im:
            n = getattr(im, "n_frames", 1)
            idx = sample_frame_indices(n, num_segments)
            loaded = {0: first}
            for i in sorted(set(idx) - {0}):
                im.seek(i)
                loaded[i] = to_rgb(im, copy=True)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageError):
            raise
        raise VideoError(f"truncated or corrupt animation {path}: {e}") from e
    return [loaded[i] for i in idx]


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]
