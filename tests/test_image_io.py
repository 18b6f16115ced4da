"""load_image: every bad input gets its own message; every odd mode becomes sensible RGB."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from internvl35.data.image import MAX_PIXELS, ImageError, load_image, to_rgb


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG with a valid IHDR claiming w x h and no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def noise(w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# --- sources ---------------------------------------------------------------------------------

def test_path_bytes_and_pil_agree(tmp_path):
    img = noise()
    p = tmp_path / "a.png"
    img.save(p)
    for src in (p, str(p), p.read_bytes(), bytearray(p.read_bytes()), img):
        out = load_image(src)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img))


def test_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope" / "missing.jpg"
    with pytest.raises(ImageError, match="image file not found") as e:
        load_image(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("url", ["http://example.com/a.png", "HTTPS://example.com/a.jpg"])
def test_urls_are_refused(url):
    with pytest.raises(ImageError, match="URLs are not fetched"):
        load_image(url)


def test_directory_and_empty_inputs(tmp_path):
    with pytest.raises(ImageError, match="got a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match=r"empty image data \(0 bytes\)"):
        load_image(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty image file"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="unsupported image source type int"):
        load_image(42)


def test_non_image_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, not a picture")
    with pytest.raises(ImageError, match="not an image") as e:
        load_image(p)
    assert "notes.txt" in str(e.value)


# --- broken data -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    data = encode(noise(), fmt)
    with pytest.raises(ImageError, match="truncated or corrupt image data"):
        load_image(data[: len(data) // 2])


def test_header_unreadable_is_called_truncated_not_non_image():
    data = encode(noise(), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt JPEG"):
        load_image(data[:20])


def test_corrupt_png_stream():
    data = encode(noise(), "PNG")
    with pytest.raises(ImageError, match="truncated or corrupt image data"):
        load_image(data[:100] + bytes(200) + data[300:])


def test_zero_size():
    with pytest.raises(ImageError, match=r"zero size \(0x10\)"):
        load_image(png_header_only(0, 10))
    with pytest.raises(ImageError, match=r"zero size \(0x7\)"):
        load_image(Image.new("RGB", (0, 7)))


# --- decompression bombs: the header is checked before any pixel is decoded ------------------

def test_pixel_limit_checked_before_decoding():
    # 9000 x 9000 = 81 MP: above our 64 MP default, below Pillow's own limits. The file has no
    # pixel data, so decoding would fail with "truncated": the limit message proves it did not.
    with pytest.raises(ImageError, match="above the pixel limit") as e:
        load_image(png_header_only(9000, 9000))
    assert f"max_pixels={MAX_PIXELS:,}" in str(e.value) and "9000x9000" in str(e.value)


def test_pixel_limit_beyond_pillows_own():
    with pytest.raises(ImageError, match="exceeds the pixel limit") as e:
        load_image(png_header_only(30000, 30000))
    assert f"max_pixels={MAX_PIXELS:,}" in str(e.value)


def test_pixel_limit_is_a_parameter():
    data = encode(noise(100, 100))
    with pytest.raises(ImageError, match="max_pixels=5,000"):
        load_image(data, max_pixels=5000)
    assert load_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageError, match="max_pixels=5,000"):
        load_image(noise(100, 100), max_pixels=5000)


# --- modes -----------------------------------------------------------------------------------

def test_palette_with_transparency_goes_white(tmp_path):
    img = Image.new("P", (4, 2), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    p = tmp_path / "t.gif"
    img.save(p, transparency=0)
    out = pixels(load_image(p))
    assert out[0, 0].tolist() == [0, 0, 255]  # opaque blue
    assert out[1, 3].tolist() == [255, 255, 255]  # transparent red -> white


def test_rgba_and_la_composite_on_white():
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (200, 0, 0, 255)
    a[0, 1] = (200, 0, 0, 0)
    a[0, 2] = (0, 0, 0, 128)
    out = pixels(load_image(encode(Image.fromarray(a, "RGBA"))))
    assert out[0, 0].tolist() == [200, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert np.all(np.abs(out[0, 2] - 127) <= 1)  # black at half alpha on white
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
    assert pixels(to_rgb(la)).tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_l_and_1():
    assert pixels(load_image(encode(Image.new("L", (3, 3), 77))))[1, 1].tolist() == [77] * 3
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    assert pixels(load_image(encode(one))).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 0))
    out = pixels(load_image(encode(img, "TIFF")))
    assert out.tolist() == [[[255, 255, 255], [0, 255, 255]]]  # paper white, cyan
    jpg = pixels(load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")))
    assert np.all(np.abs(jpg - [255, 0, 0]) <= 3)  # magenta + yellow = red


def test_sixteen_bit_is_scaled_not_clipped():
    a = np.array([[0, 257 * 100, 32768, 65535]], np.uint16)
    img = load_image(encode(Image.fromarray(a)))  # a 16-bit greyscale PNG
    assert pixels(img)[0, :, 0].tolist() == [0, 100, 128, 255]
    i16 = Image.frombytes("I;16", (2, 1), np.array([1000, 60000], "<u2").tobytes())
    assert pixels(to_rgb(i16))[0, :, 0].tolist() == [4, 233]


def test_int32_and_float():
    i32 = Image.fromarray(np.array([[0, 65535]], np.int32))
    assert pixels(to_rgb(i32))[0, :, 0].tolist() == [0, 255]
    neg = Image.fromarray(np.array([[-100, 0, 100]], np.int32))
    assert np.abs(pixels(to_rgb(neg))[0, :, 0] - [0, 127.5, 255]).max() <= 0.5  # stretched
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert pixels(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-1.0, 4.0, 9.0, np.nan]], np.float32))
    assert pixels(to_rgb(wide))[0, :, 0].tolist() == [0, 128, 255, 26]  # NaN -> 0 -> 25.5
    assert to_rgb(unit).mode == "RGB"


def test_exif_rotation_is_applied():
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # left half red
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode(Image.fromarray(a), "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.size == (20, 40)
    top, bottom = pixels(out)[5, 10], pixels(out)[35, 10]
    assert top[0] > 200 and top[2] < 50  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 50
    assert load_image(encode(Image.fromarray(a), "JPEG")).size == (40, 20)  # no EXIF: unchanged


def test_animated_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert pixels(load_image(buf.getvalue()))[0, 0].tolist() == [255, 0, 0]
