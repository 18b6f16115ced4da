"""Robust image loading: any file, bytes or PIL image in, an RGB PIL image out.

Every failure raises `ImageError` (a `ValueError`) whose message names the cause: missing file
(with its path), URL (never fetched here: the server decides about URLs), empty or truncated or
corrupt data, zero size, too many pixels (checked from the header before any pixel is decoded),
or not an image at all.

Odd modes are converted, not rejected:
- transparency (RGBA, LA, PA, premultiplied RGBa/La, P or L or RGB with a `transparency` key) is
  composited on white, as InternVL and transformers' `convert_to_rgb` do;
- P, L, 1, CMYK, YCbCr, HSV, LAB go through PIL's own conversion;
- I;16* (16-bit) is scaled by 255/65535; I (32-bit int) too when its values fit in 16 bits
  (that is what 16-bit PNG/TIFF decode to), else min-max stretched; F (float) is taken as
  [0, 1] when it lies there, else min-max stretched. PIL's own `convert("RGB")` clips these to
  0..255, which turns almost every 16-bit pixel white.
- JPEG/TIFF/WebP EXIF orientation is applied (`ImageOps.exif_transpose`).
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # 64 megapixels: 8000 x 8000; far above what 12 tiles of 448 can use
MAX_FILE_BYTES = 256 * 2**20  # read before decoding; 64 MP of uncompressed 32-bit pixels fit in 256 MiB
_EXIF_ORIENTATION = 0x0112
_SIGNATURES = {  # magic bytes of the formats we expect, to tell "truncated X" from "not an image"
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
    b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}
# Exceptions PIL's decoders raise on bad data (zlib and struct errors surface as these or OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


class ImageError(ValueError):
    """An input that cannot be turned into an RGB image; the message says why."""


def load_image(source: str | Path | bytes | bytearray | memoryview | Image.Image,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open `source` (path, encoded bytes or PIL image) and return it as an RGB PIL image.

    The pixel count is checked against `max_pixels` from the header, before decoding, so a
    decompression bomb costs nothing. Pillow has its own hard limit (2 * Image.MAX_IMAGE_PIXELS,
    about 179 MP) that a larger `max_pixels` cannot lift. Animated files give their first frame.
    """
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, "image")
        return to_rgb(_apply_exif(source))
    data, name = _read_source(source)
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_size(im.size, max_pixels, name)
            try:
                im.load()
            except _DECODE_ERRORS as e:
                raise ImageError(f"truncated or corrupt image data in {name}: {e}") from e
            return to_rgb(_apply_exif(im), copy=True)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name} exceeds the pixel limit (Pillow refused it before decoding: {e}); "
                         f"limit max_pixels={max_pixels:,}") from e
    except UnidentifiedImageError as e:
        raise ImageError(_unidentified_message(data, name)) from e


def to_rgb(img: Image.Image, copy: bool = False) -> Image.Image:
    """Convert any PIL mode to RGB (see the module docstring). `copy` forces a new image for RGB."""
    mode = img.mode
    if img.width == 0 or img.height == 0:
        raise ImageError(f"image has zero size ({img.width}x{img.height})")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_to_rgb(img)
    if "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:
        return _composite_on_white(img)
    if mode == "RGB":
        return img.copy() if copy else img
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ImageError(f"cannot convert image mode {mode!r} to RGB: {e}") from e


def _read_source(source: str | Path | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    """Return (encoded bytes, name for messages); refuse URLs and missing files."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("empty image data (0 bytes)")
        return data, f"image bytes ({len(data)} bytes)"
    if isinstance(source, str) and source.strip().lower().startswith(("http://", "https://")):
        raise ImageError(f"URLs are not fetched by load_image (got {source[:200]!r}); "
                         "download the image first and pass a path or bytes")
    if not isinstance(source, (str, Path)):
        raise ImageError(f"unsupported image source type {type(source).__name__}; "
                         "expected a path, bytes or PIL.Image.Image")
    path = Path(source)
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"expected an image file, got a directory: {path}")
    if not path.is_file():  # a FIFO would block the read forever, /dev/zero would never end
        raise ImageError(f"expected a regular image file, got a special file: {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ImageError(f"image file too large: {path} is {path.stat().st_size:,} bytes, over the "
                         f"{MAX_FILE_BYTES:,}-byte limit")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read image file {path}: {e}") from e
    if not data:
        raise ImageError(f"empty image file (0 bytes): {path}")
    return data, str(path)


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    w, h = size
    if w == 0 or h == 0:
        raise ImageError(f"image has zero size ({w}x{h}): {name}")
    if w * h > max_pixels:
        raise ImageError(f"{name} is {w}x{h} = {w * h:,} pixels, above the pixel limit "
                         f"max_pixels={max_pixels:,} (possible decompression bomb)")


def _unidentified_message(data: bytes, name: str) -> str:
    """PIL could not identify the data: say whether it looks like a broken image or none at all."""
    fmt = next((f for sig, f in _SIGNATURES.items() if data.startswith(sig)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt = "WebP"
    if fmt is None:
        return f"not an image (unrecognised format, first bytes {data[:8]!r}): {name}"
    size = _header_size(data, fmt)
    if size is not None and 0 in size:
        return f"image has zero size ({size[0]}x{size[1]}) in its {fmt} header: {name}"
    return f"truncated or corrupt {fmt} data (header unreadable): {name}"


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height straight from a PNG or GIF header (PIL refuses zero sizes unexplained)."""
    if fmt == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if fmt == "GIF" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _apply_exif(img: Image.Image) -> Image.Image:
    """Rotate/flip per EXIF orientation; a broken EXIF block is ignored rather than fatal."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        return ImageOps.exif_transpose(img) if orientation != 1 else img
    except _DECODE_ERRORS:
        return img


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")  # also resolves palettes, LA, premultiplied and colour-key transparency
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float single-channel images to 8-bit grey RGB, scaled not clipped."""
    a = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        unit = a.size == 0 or (a.min() >= 0.0 and a.max() <= 1.0)
        a = a * 255.0 if unit else _stretch(a)
    elif img.mode.startswith("I;16") or (a.min() >= 0 and a.max() <= 65535):
        a = a * (255.0 / 65535.0)
    else:
        a = _stretch(a)
    grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
