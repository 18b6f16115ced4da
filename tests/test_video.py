"""Video: InternVL's segment-centre frame sampling, frame sources, one tile per frame."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, features

from internvl35.data.tiling import preprocess_image
from internvl35.data.video import (
    VideoError, load_video_frames, preprocess_video, sample_frame_indices,
)


def get_index_reference(n: int, segments: int) -> list[int]:
    """InternVL's get_index without a bound: start 0, end max_frame = n - 1, numpy rounding."""
    seg = float(n - 1) / segments
    return [int(seg / 2 + np.round(seg * i)) for i in range(segments)]


def grey_frames(n: int, size=(32, 24)) -> list[Image.Image]:
    """Frame k is uniformly grey at level 10 * k, so a frame's value names its index."""
    return [Image.new("RGB", size, (10 * k,) * 3) for k in range(n)]


def frame_ids(frames: list[Image.Image]) -> list[int]:
    return [int(np.asarray(f)[0, 0, 0]) // 10 for f in frames]


def test_sample_indices_known_values():
    assert sample_frame_indices(100, 8) == [6, 18, 31, 43, 56, 68, 80, 93]
    assert sample_frame_indices(1, 8) == [0] * 8
    assert sample_frame_indices(3, 8) == [0, 0, 0, 1, 1, 1, 2, 2]  # short clips repeat frames


@pytest.mark.parametrize("segments", [8, 16, 32])
def test_sample_indices_match_reference(segments):
    for n in range(1, 700, 7):
        idx = sample_frame_indices(n, segments)
        assert idx == get_index_reference(n, segments)
        assert len(idx) == segments and idx == sorted(idx) and 0 <= idx[0] and idx[-1] <= n - 1
        if n >= segments * 2:
            assert len(set(idx)) == segments  # long clips: all distinct


def test_sample_indices_invalid():
    with pytest.raises(VideoError, match="at least one frame"):
        sample_frame_indices(0, 8)
    with pytest.raises(ValueError, match="num_segments"):
        sample_frame_indices(10, 0)


def test_directory_of_frames_natural_order(tmp_path):
    for k, f in enumerate(grey_frames(20)):
        f.save(tmp_path / f"frame_{k + 1}.png")  # frame_1 .. frame_20: frame_10 after frame_9
    (tmp_path / "notes.txt").write_text("ignored")
    out = load_video_frames(tmp_path, num_segments=4)
    assert frame_ids(out) == sample_frame_indices(20, 4) == [2, 7, 12, 16]
    assert all(f.mode == "RGB" for f in out)


def test_list_of_images_paths_and_bytes(tmp_path):
    frames = grey_frames(10)
    assert frame_ids(load_video_frames(frames, num_segments=5)) == sample_frame_indices(10, 5)
    paths = []
    for k, f in enumerate(frames):
        paths.append(tmp_path / f"{k}.png")
        f.save(paths[-1])
    assert frame_ids(load_video_frames(paths, 3)) == sample_frame_indices(10, 3)
    buf = io.BytesIO()
    frames[4].save(buf, format="PNG")
    assert frame_ids(load_video_frames([buf.getvalue()], 2)) == [4, 4]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_file(tmp_path, fmt):
    if fmt == "WEBP":
        assert features.check("webp")  # Pillow wheels ship it; fail loudly if not
    frames = grey_frames(12)
    p = tmp_path / f"clip.{fmt.lower()}"
    kw = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(p, format=fmt, save_all=True, append_images=frames[1:], duration=40, **kw)
    out = load_video_frames(p, num_segments=4)
    assert frame_ids(out) == sample_frame_indices(12, 4)
    assert len(out) == 4 and all(f.mode == "RGB" and f.size == (32, 24) for f in out)


def test_unsupported_and_missing(tmp_path):
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(VideoError, match="needs a video codec") as e:
        load_video_frames(mp4)
    assert "GIF" in str(e.value) and "directory of frame images" in str(e.value)
    with pytest.raises(VideoError, match="not found"):
        load_video_frames(tmp_path / "missing.gif")
    with pytest.raises(VideoError, match="no frame images"):
        load_video_frames(tmp_path)  # only the .mp4 is there
    with pytest.raises(VideoError, match="URLs are not fetched"):
        load_video_frames("https://example.com/v.gif")
    with pytest.raises(VideoError, match="empty frame list"):
        load_video_frames([])
    text = tmp_path / "fake.gif"
    text.write_text("not a gif")
    with pytest.raises(ValueError, match="not an image"):
        load_video_frames(text)


@pytest.mark.parametrize("tile", [448, 224])
def test_preprocess_video_one_tile_per_frame(tile):
    frames = [Image.new("RGB", (1920, 1080), (255, 255, 255)), *grey_frames(2, (300, 500))]
    x = preprocess_video(frames, tile=tile)
    assert x.shape == (3, 3, tile, tile) and x.dtype == torch.float32
    for i, f in enumerate(frames):
        assert torch.equal(x[i : i + 1], preprocess_image(f, tile=tile, dynamic=False))
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0].mean(dim=(1, 2)), white, atol=1e-5)
    with pytest.raises(VideoError):
        preprocess_video([])
