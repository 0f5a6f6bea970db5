"""Request images to PIL RGB images: accepted encodings and formats, and each refusal."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from mmserve.errors import InvalidRequest
from mmserve.vision import ImageLimits, decode_image, load_image

LIMITS = ImageLimits()
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png(size: tuple[int, int] = (8, 6), color: tuple[int, ...] = RED, mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, size, color), "PNG")


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def refusal(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(InvalidRequest) as caught:
        decode_image(data, limits, param="messages[0].content[1]")
    assert caught.value.param == "messages[0].content[1]"
    return caught.value.message


async def load_refusal(ref: str, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(InvalidRequest) as caught:
        await load_image(ref, limits, param="image")
    assert caught.value.param == "image"
    return caught.value.message


# --- accepted ---------------------------------------------------------------------------------


async def test_data_url_and_bare_base64_give_the_same_rgb_image() -> None:
    data = png((8, 6))
    from_url = await load_image(data_url(data), LIMITS)
    bare = await load_image(base64.b64encode(data).decode(), LIMITS)
    for image in (from_url, bare):
        assert image.mode == "RGB" and image.size == (8, 6)
        assert image.getpixel((0, 0)) == RED


async def test_base64_may_be_line_wrapped_urlsafe_or_unpadded() -> None:
    image = Image.effect_noise((33, 17), 80).convert("RGB")  # bytes that use + and /
    data = encode(image, "PNG")
    wrapped = base64.encodebytes(data).decode()  # a newline every 76 characters
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    for ref in (wrapped, urlsafe, f"data:image/png;base64,{wrapped}"):
        assert (await load_image(ref, LIMITS)).tobytes() == image.tobytes()


async def test_the_bytes_decide_not_the_declared_media_type() -> None:
    jpeg = encode(Image.new("RGB", (16, 16), BLUE), "JPEG")
    image = await load_image(data_url(jpeg, "image/png"), LIMITS)
    assert image.size == (16, 16)


@pytest.mark.parametrize(("fmt", "options"), [("JPEG", {"quality": 95}), ("WEBP", {})])
def test_lossy_formats_decode_to_rgb(fmt: str, options: dict[str, Any]) -> None:
    image = decode_image(encode(Image.new("RGB", (20, 10), RED), fmt, **options), LIMITS)
    assert image.mode == "RGB" and image.size == (20, 10)
    red, green, blue = image.getpixel((10, 5))  # type: ignore[misc]
    assert red > 240 and green < 15 and blue < 15


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), RED), Image.new("RGB", (10, 10), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    image = decode_image(buffer.getvalue(), LIMITS)
    assert image.mode == "RGB" and image.getpixel((5, 5)) == RED


def test_transparency_becomes_white_not_black() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    image = decode_image(encode(rgba, "PNG"), LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == WHITE and image.getpixel((0, 0)) == (0, 0, 0)


def test_palette_gif_with_a_transparent_colour_becomes_rgb() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, *BLUE] + [0, 0, 0] * 254)
    palette.putpixel((0, 0), 1)
    image = decode_image(encode(palette, "GIF", transparency=0), LIMITS)
    assert image.getpixel((0, 0)) == BLUE and image.getpixel((2, 2)) == WHITE


def test_greyscale_becomes_rgb() -> None:
    image = decode_image(png(mode="L", color=(128,)), LIMITS)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    data = encode(Image.new("RGB", (40, 20), RED), "JPEG", exif=exif.tobytes())
    assert decode_image(data, LIMITS).size == (20, 40)


# --- refused ----------------------------------------------------------------------------------


async def test_bad_base64_is_refused() -> None:
    assert "not valid base64" in await load_refusal("data:image/png;base64,iVBOR*w0KGgo")
    assert "not valid base64" in await load_refusal("@@@@")


async def test_a_data_url_must_be_base64() -> None:
    assert "must be base64" in await load_refusal("data:image/svg+xml,<svg></svg>")


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file\nwith two lines\n",
        b"",
        bytes(range(256)) * 4,
    ],
)
def test_bytes_that_are_not_an_image_are_refused(data: bytes) -> None:
    assert "not an image" in refusal(data)


async def test_a_text_file_sent_as_base64_is_refused() -> None:
    text = base64.b64encode(b"just some words, not a picture").decode()
    assert "not an image" in await load_refusal(f"data:text/plain;base64,{text}")


@pytest.mark.parametrize(("fmt", "name"), [("BMP", "BMP"), ("TIFF", "TIFF"), ("ICO", "ICO")])
def test_formats_outside_the_list_are_refused_by_name(fmt: str, name: str) -> None:
    message = refusal(encode(Image.new("RGB", (16, 16), RED), fmt))
    assert f"format {name} is not supported" in message
    assert "PNG, JPEG, WebP or GIF" in message


def test_a_truncated_image_is_refused() -> None:
    data = encode(Image.effect_noise((64, 64), 80), "PNG")
    assert "truncated or corrupt" in refusal(data[: len(data) // 2])


def test_over_the_pixel_limit_says_the_size_and_the_limit() -> None:
    message = refusal(png((100, 60)), ImageLimits(max_pixels=5000))
    assert "100x60" in message and "6000 pixels" in message and "5000" in message


def test_exactly_at_the_pixel_limit_is_accepted() -> None:
    assert decode_image(png((100, 50)), ImageLimits(max_pixels=5000)).size == (100, 50)


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims another size: decoding its pixels would be a bomb."""
    data = bytearray(png((1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (10_000, 10_000),  # past PIL's warning threshold (89M): the warning must not escape
        (20_000, 20_000),  # past PIL's error threshold (179M): its error must not escape
    ],
)
def test_a_decompression_bomb_is_refused_before_decoding(width: int, height: int) -> None:
    # filterwarnings = error: a DecompressionBombWarning escaping would fail this test.
    message = refusal(png_claiming(width, height))
    assert "too large" in message or f"{width}x{height}" in message


def test_the_size_check_reads_the_header_only() -> None:
    # 6000x6000 fits PIL's own limit but not ours; its header is honest about the size.
    message = refusal(png_claiming(6000, 6000), ImageLimits(max_pixels=1_000_000))
    assert "6000x6000" in message and "1000000" in message


def test_a_payload_over_max_bytes_is_refused() -> None:
    data = encode(Image.effect_noise((64, 64), 80), "PNG")
    assert "limit is 100" in refusal(data, ImageLimits(max_bytes=100))


async def test_base64_over_max_bytes_is_refused_before_decoding() -> None:
    ref = "A" * 4000
    assert "limit is 1000" in await load_refusal(ref, ImageLimits(max_bytes=1000))


@pytest.mark.parametrize(
    "ref",
    ["file:///etc/passwd", "FILE:///etc/hosts", "ftp://example.com/cat.png", "gopher://x/"],
)
async def test_other_url_schemes_are_refused(ref: str) -> None:
    message = await load_refusal(ref, ImageLimits(allow_remote=True))
    assert "scheme" in message and "not accepted" in message


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/hostname", "./cat.png"])
async def test_a_local_path_is_never_read(path: str) -> None:
    # No scheme: it is taken as base64, and is either not base64 or not an image.
    message = await load_refusal(path)
    assert "base64" in message or "not an image" in message
