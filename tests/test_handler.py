"""The Inference Endpoints handler's image decoding on what clients send: data URLs, MIME base64 and images too large
to decode safely (the handler end to end is tested with a published folder in test_publish.py)."""

import base64
import io

import numpy as np
import PIL.Image
import pytest
from skimage import data

from clustr_hf import ClusTRImageProcessor
from clustr_hf.handler import decode_image


@pytest.fixture(scope="module")
def png() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(data.chelsea()).resize((64, 48)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_mime_base64_with_line_breaks_and_a_data_url_decode_to_the_image(png):
    expected = np.asarray(decode_image(png))
    assert expected.shape == (48, 64, 3)
    mime = base64.encodebytes(png).decode()  # lines of 76 characters, each ending in a newline
    assert "\n" in mime.rstrip("\n") and mime.endswith("\n")
    for encoded in (mime, base64.b64encode(png).decode() + "\n", f"data:image/png;base64,{mime}"):
        assert np.array_equal(np.asarray(decode_image(encoded)), expected)


def test_a_data_url_without_its_comma_is_named(png):
    with pytest.raises(ValueError, match="data URL without the comma"):
        decode_image("data:image/png;base64" + base64.b64encode(png).decode())


@pytest.mark.parametrize("limit", [1000, 2000])  # 3072 pixels: above twice the limit (PIL raises), or below (warns)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_image_above_the_pixel_limit_is_refused_with_the_limit(png, monkeypatch, limit):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ValueError, match=f"too large to decode safely, above PIL's limit of {limit:,} pixels"):
        decode_image(png)


def test_16_bit_and_transparent_images_reach_the_processor_as_the_pipeline_gives_them():
    """PIL's convert("RGB") clips 16-bit pixels to white and drops alpha; the processor scales and composites them."""
    photo = data.camera()[::8, ::8].astype(np.uint16) * 257  # the full 16-bit range
    rgba = np.dstack([data.chelsea()[::8, ::8], np.full(data.chelsea()[::8, ::8].shape[:2], 128, np.uint8)])
    processor = ClusTRImageProcessor(size=32)
    for image in (PIL.Image.fromarray(photo), PIL.Image.fromarray(rgba)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        decoded = decode_image(buffer.getvalue())
        assert decoded.mode == image.mode
        expected = processor(image, return_tensors="pt").pixel_values
        assert np.array_equal(processor(decoded, return_tensors="pt").pixel_values, expected)
        assert not np.array_equal(processor(image.convert("RGB"), return_tensors="pt").pixel_values, expected)
