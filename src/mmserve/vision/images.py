"""From what a request sends to a PIL RGB image: data URLs, bare base64, and (when the operator
allows it) http(s) URLs.

Every failure is an `InvalidRequest` naming the request parameter and saying what was wrong.
Nothing here ever reads a local file: a request cannot name one.

Accepted formats: PNG, JPEG, WebP and GIF (the first frame of an animation). Other formats are
refused before PIL's decoders for them ever see the bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mmserve.errors import InvalidRequest
from mmserve.vision.fetch import fetch_image_bytes

__all__ = ["ACCEPTED_FORMATS", "ImageLimits", "decode_image", "load_image"]

# PIL format names. MPO is how PIL names a JPEG carrying extra pictures (phone cameras).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_ACCEPTED_TEXT = "PNG, JPEG, WebP or GIF"
_OPENED_FORMATS = {*ACCEPTED_FORMATS, "MPO"}

# Magic numbers of formats we refuse, only to name them in the error message.
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"%PDF", "PDF"),
    (b"qoif", "QOI"),
)
_HEIF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

# warnings.catch_warnings swaps the process-wide filter list and restores it on exit; two
# threads inside it at once could restore each other's copy. Our own uses take this lock.
_WARNINGS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageLimits:
    """What the operator allows a request's image to be."""

    max_pixels: int = 40_000_000
    allow_remote: bool = False  # fetch http(s) URLs only when the operator allows
    max_bytes: int = 20 * 2**20  # cap on a fetched or decoded payload
    fetch_timeout: float = 10.0  # seconds for the whole fetch, not per read


def decode_image(data: bytes, limits: ImageLimits, param: str = "image") -> Image.Image:
    """Decode encoded image bytes into an RGB image, enforcing `limits`.

    Blocks (CPU-bound: call it from a thread for large images); thread-safe.
    """
    if len(data) > limits.max_bytes:
        raise InvalidRequest(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes}", param=param
        )
    image = _open(data, param)
    _check_pixels(image.size, limits, param)
    try:
        image.load()  # the first frame only, for GIF and animated WebP/PNG
    except (OSError, EOFError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"image data is truncated or corrupt: {exc}", param=param) from exc
    _check_pixels(image.size, limits, param)  # a GIF frame may reach past its screen size
    _apply_exif_orientation(image)
    return _to_rgb(image)


async def load_image(
    ref: str,
    limits: ImageLimits,
    param: str = "image",
    *,
    client: httpx.AsyncClient | None = None,
) -> Image.Image:
    """Resolve an image reference: a data URL, bare base64, or an http(s) URL.

    Remote URLs are fetched only when `limits.allow_remote`, with `client` when given (so a
    server can share one). Decoding runs in a worker thread, off the event loop.
    """
    ref = ref.strip()
    scheme = _SCHEME.match(ref)
    if scheme is None:
        return await asyncio.to_thread(_decode_base64_image, ref, limits, param)
    name = scheme.group(1).lower()
    if name == "data":
        return await asyncio.to_thread(_decode_data_url, ref, limits, param)
    if name in ("http", "https"):
        data = await fetch_image_bytes(ref, limits, param, client=client)
        return await asyncio.to_thread(decode_image, data, limits, param)
    raise InvalidRequest(
        f"image URL scheme {name!r} is not accepted: send a data URL, base64, or an http(s) URL",
        param=param,
    )


def _decode_data_url(ref: str, limits: ImageLimits, param: str) -> Image.Image:
    # data:[<media type>][;base64],<data>. The declared media type is not trusted (clients
    # mislabel JPEGs as PNG); the bytes decide.
    header, comma, payload = ref.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise InvalidRequest("data URL must be base64: data:image/png;base64,...", param=param)
    return _decode_base64_image(payload, limits, param)


def _decode_base64_image(text: str, limits: ImageLimits, param: str) -> Image.Image:
    text = "".join(text.split())  # line-wrapped base64 (MIME style) is common
    if len(text) // 4 * 3 > limits.max_bytes:  # refuse before decoding what is too big
        raise InvalidRequest(
            f"image is about {len(text) // 4 * 3} bytes; the limit is {limits.max_bytes}",
            param=param,
        )
    return decode_image(_b64decode(text, param), limits, param)


def _b64decode(text: str, param: str) -> bytes:
    altchars = b"-_" if ("-" in text or "_" in text) else None  # the URL-safe alphabet
    padded = text + "=" * (-len(text) % 4)  # some encoders drop the padding
    try:
        return base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            "image is not valid base64 (expected a data URL, base64, or an http(s) URL)",
            param=param,
        ) from exc


def _open(data: bytes, param: str) -> ImageFile.ImageFile:
    """Parse the header only: no pixels are decoded yet."""
    try:
        with _quiet_pil_warnings():
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:  # past twice PIL's own limit: no size given
        raise InvalidRequest(f"image is too large: {exc}", param=param) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(_not_an_image(data), param=param) from exc
    if image.format not in _OPENED_FORMATS:  # a plugin may answer with a sibling format
        raise InvalidRequest(
            f"image format {image.format} is not supported: send {_ACCEPTED_TEXT}", param=param
        )
    return image


def _not_an_image(data: bytes) -> str:
    refused = _sniff_refused_format(data)
    if refused:
        return f"image format {refused} is not supported: send {_ACCEPTED_TEXT}"
    return f"data is not an image in a supported format ({_ACCEPTED_TEXT}) or is corrupt"


def _sniff_refused_format(data: bytes) -> str | None:
    for signature, name in _REFUSED_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(data[8:12])
    if data.lstrip()[:5].lower() in (b"<?xml", b"<svg "):
        return "SVG"
    return None


def _check_pixels(size: tuple[int, int], limits: ImageLimits, param: str) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            f"image is {width}x{height} ({width * height} pixels); "
            f"the limit is {limits.max_pixels} pixels",
            param=param,
        )


def _apply_exif_orientation(image: Image.Image) -> None:
    """Turn phone photos upright (they are stored sideways with an EXIF orientation tag)."""
    # Metadata is best effort: a corrupt EXIF block must not fail an image that decodes.
    with contextlib.suppress(Exception), _quiet_pil_warnings():
        ImageOps.exif_transpose(image, in_place=True)


def _to_rgb(image: Image.Image) -> Image.Image:
    # Transparent pixels go on white: dropping alpha would turn them black, and black text on
    # a transparent background would vanish.
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@contextmanager
def _quiet_pil_warnings() -> Iterator[None]:
    """Silence PIL's warnings about the input (bomb size, odd metadata) for this block.

    The request's bytes are not the operator's concern: our own limits decide, and a bad image
    becomes an InvalidRequest. Kept to header and metadata parsing, which are quick.
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield
