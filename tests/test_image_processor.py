"""ClusTRImageProcessor / ClusTRImageProcessorPil: the evaluation transform of docs/algorithm.md section 6 on real
photos."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from skimage import data
from torchvision import transforms
from torchvision.transforms import v2
from transformers import AutoImageProcessor

from clustr_hf import ClusTRImageProcessor, ClusTRImageProcessorPil


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
GREY_LEVEL = 1 / (255 * min(STD))  # one uint8 step after normalisation
# rocket (427x640) resizes to 256x383: its crop offset 79.5 rounds to 80 (torchvision), not 79 (transformers' crop).
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]
BACKENDS = [ClusTRImageProcessor, ClusTRImageProcessorPil]


def raw(name: str) -> np.ndarray:
    """A real uint8 photo from skimage.data, (H, W, 3), (H, W, 4) or (H, W) for greyscale."""
    return getattr(data, name)()


def reference_transform(crop: int, crop_pct: float, v2_api: bool = False):
    """The spec's eval transform written with torchvision: v1 on PIL images (the reference's), or v2 on uint8 tensors."""
    api = v2 if v2_api else transforms
    to_float = v2.ToDtype(torch.float32, scale=True) if v2_api else transforms.ToTensor()
    return api.Compose([
        api.Resize(int(crop / crop_pct), interpolation=api.InterpolationMode.BICUBIC), api.CenterCrop(crop),
        to_float, api.Normalize(MEAN, STD),
    ])


def pixels(processor, images, **kwargs) -> torch.Tensor:
    return processor(images, return_tensors="pt", **kwargs).pixel_values


@pytest.mark.parametrize("name", PHOTOS)
def test_pil_backend_equals_the_reference_pipeline_on_pil_images(name):
    image = PIL.Image.fromarray(raw(name))
    expected = reference_transform(224, 0.875)(image)
    assert pixels(ClusTRImageProcessorPil(), image)[0].shape == (3, 224, 224)
    torch.testing.assert_close(pixels(ClusTRImageProcessorPil(), image)[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", PHOTOS)
def test_torchvision_backend_equals_the_v2_pipeline_on_uint8_tensors(name):
    image = torch.from_numpy(raw(name)).permute(2, 0, 1)
    expected = reference_transform(224, 0.875, v2_api=True)(image)
    torch.testing.assert_close(pixels(ClusTRImageProcessor(), image)[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("crop, crop_pct", [(96, 0.75), (400, 0.875)])
def test_size_and_crop_pct_are_configurable(crop, crop_pct):
    """Any crop size resizes then crops (ConvNeXt's processor would warp at 400 instead)."""
    image = PIL.Image.fromarray(raw("coffee"))
    expected = reference_transform(crop, crop_pct)(image)
    for processor in (ClusTRImageProcessorPil(size=crop, crop_pct=crop_pct), ClusTRImageProcessorPil()):
        call_kwargs = {} if processor.size["shortest_edge"] == crop else {"size": crop, "crop_pct": crop_pct}
        torch.testing.assert_close(pixels(processor, image, **call_kwargs)[0], expected, atol=1e-6, rtol=0)
    assert pixels(ClusTRImageProcessor(size=crop, crop_pct=crop_pct), image).shape == (1, 3, crop, crop)


@pytest.mark.parametrize("name", PHOTOS + ["camera", "page", "colorwheel"])
def test_backends_agree_within_two_grey_levels(name):
    """The documented tolerance: torch's and PIL's uint8 bicubic round differently, by at most 2 levels per pixel."""
    image = raw(name)
    for size in (224, 96):
        difference = (pixels(ClusTRImageProcessor(), image, size=size) - pixels(ClusTRImageProcessorPil(), image, size=size)).abs()
        assert difference.max() <= 2 * GREY_LEVEL + 1e-6
        assert difference.mean() < 3e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_pil_numpy_and_tensor_inputs_in_either_layout_give_the_same_pixels(backend):
    image = raw("chelsea")
    expected = pixels(backend(), PIL.Image.fromarray(image))
    channels_first = np.ascontiguousarray(image.transpose(2, 0, 1))
    for same_image in (image, channels_first, torch.from_numpy(image), torch.from_numpy(channels_first)):
        torch.testing.assert_close(pixels(backend(), same_image), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greyscale_becomes_rgb(backend):
    grey = raw("camera")
    as_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    expected = pixels(backend(), as_rgb)
    for same_image in (grey, grey[:, :, None], PIL.Image.fromarray(grey), torch.from_numpy(grey)):
        torch.testing.assert_close(pixels(backend(), same_image), expected, atol=1e-6, rtol=0)
    unnormalised = expected[0] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    torch.testing.assert_close(unnormalised[0], unnormalised[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rgba_is_composited_onto_white(backend):
    """A real photo made translucent (its own brightness as alpha) comes out as its composite onto white."""
    rgb = raw("coffee")
    rgba = np.dstack([rgb, rgb.mean(axis=2).astype(np.uint8)])
    alpha = rgba[:, :, 3:] / 255
    composite = np.round(rgba[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    tolerance = 2 * GREY_LEVEL + 1e-6  # the backends round the blend to uint8 their own way (torchvision truncates)
    for same_image in (rgba, PIL.Image.fromarray(rgba)):
        torch.testing.assert_close(pixels(backend(), same_image), pixels(backend(), composite), atol=tolerance, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_mixed_sizes_matches_images_one_by_one(backend):
    images = [raw("astronaut"), raw("coffee"), raw("camera"), PIL.Image.fromarray(raw("rocket"))]
    batch = pixels(backend(), images)
    assert batch.shape == (4, 3, 224, 224)
    for image, processed in zip(images, batch):
        torch.testing.assert_close(processed, pixels(backend(), image)[0], atol=1e-6, rtol=0)
    stacked = np.stack([raw("astronaut"), raw("immunohistochemistry")])
    torch.testing.assert_close(pixels(backend(), stacked), pixels(backend(), list(stacked)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_already_in_unit_range_need_do_rescale_false(backend):
    image = raw("coffee")
    unit = image.astype(np.float32) / 255
    with pytest.raises(ValueError, match="fractions between 0 and 1: .0, 1. data, .* pass do_rescale=False"):
        pixels(backend(), unit)
    with pytest.raises(ValueError, match=r"Float pixels range from 0 to 255, but do_rescale=False expects \[0, 1\]"):
        pixels(backend(), image.astype(np.float32), do_rescale=False)
    if backend is ClusTRImageProcessor:  # resizes the floats as they are (no uint8 rounding or clamping)
        to_pixels = v2.Compose([v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(224),
                                v2.Normalize(MEAN, STD)])
        expected, tolerance = to_pixels(torch.from_numpy(unit).permute(2, 0, 1))[None], 1e-5
    else:  # converts to uint8 for PIL's resize
        expected, tolerance = pixels(backend(), image), GREY_LEVEL + 1e-6
    torch.testing.assert_close(pixels(backend(), unit, do_rescale=False), expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bad_input, error, message",
    [
        (None, TypeError, "Unsupported image type NoneType"),
        (3, TypeError, "Unsupported image type int"),
        ([raw("coffee"), "not an image either", 7], TypeError, "Unsupported image type int"),
        ([], ValueError, "No images given"),
        (np.zeros((32, 32, 2), np.uint8), ValueError, "no axis of 1 .greyscale., 3 .RGB. or 4"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "Empty image"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), ValueError, "2 .greyscale. or 3 dimensions"),
        (np.zeros((8, 8, 3), bool), ValueError, "dtype bool"),
    ],
)
def test_bad_inputs_get_a_clear_error(backend, bad_input, error, message):
    with pytest.raises(error, match=message):
        pixels(backend(), bad_input)


@pytest.mark.parametrize("backend", BACKENDS)
def test_size_must_be_a_shortest_edge_and_crop_pct_a_fraction(backend):
    with pytest.raises(ValueError, match="shortest_edge"):
        pixels(backend(), raw("coffee"), size={"height": 224, "width": 224})
    with pytest.raises(ValueError, match=r"crop_pct=1.5 must lie in \(0, 1\]"):
        pixels(backend(), raw("coffee"), crop_pct=1.5)


def test_save_pretrained_writes_both_backends_and_autoimageprocessor_loads_them(tmp_path):
    ClusTRImageProcessor(size=160, crop_pct=0.8).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "ClusTRImageProcessor"
    assert saved["auto_map"]["AutoImageProcessor"] == {
        "torchvision": "image_processing_clustr.ClusTRImageProcessor",
        "pil": "image_processing_clustr.ClusTRImageProcessorPil",
    }
    assert (tmp_path / "image_processing_clustr.py").is_file()
    image = raw("rocket")
    expected = reference_transform(160, 0.8)(PIL.Image.fromarray(image))
    for backend, expected_class in (("torchvision", ClusTRImageProcessor), ("pil", ClusTRImageProcessorPil)):
        loaded = AutoImageProcessor.from_pretrained(tmp_path, backend=backend)
        assert type(loaded) is expected_class
        torch.testing.assert_close(pixels(loaded, image)[0], expected, atol=2 * GREY_LEVEL + 1e-6, rtol=0)


def deep_versions(image: np.ndarray) -> dict:
    """The 8-bit photo `image` as 16-bit and float images of the same picture (16-bit: v * 257 maps 255 to 65535)."""
    grey = image if image.ndim == 2 else image[..., 0]
    wide = image.astype(np.uint16) * 257
    return {
        "uint16 array": wide,
        "uint16 tensor": torch.from_numpy(wide.astype(np.int32)).to(torch.uint16),
        "int64 array in [0, 255]": image.astype(np.int64),
        "float [0, 255] array": image.astype(np.float32),
        "float [0, 255] tensor with fractions": torch.from_numpy(np.clip(image.astype(np.float32) + 0.25, 0, 255)),
        "I;16 PIL image": PIL.Image.fromarray(grey.astype(np.uint16) * 257),
        "F PIL image": PIL.Image.fromarray(grey.astype(np.float32)),
    }


@pytest.mark.parametrize("kind", list(deep_versions(raw("camera"))))
def test_16_bit_and_float_images_give_the_8_bit_pixels_in_both_backends(kind):
    """Both backends used to clip I;16 and F PIL images to white or black; the torchvision one normalised uint16
    arrays to values of 1000+ where the PIL one raised, and the PIL one raised on fractional [0, 255] floats."""
    photo = raw("camera")
    image = deep_versions(photo)[kind]
    for backend in BACKENDS:
        expected = pixels(backend(), photo)
        torch.testing.assert_close(pixels(backend(), image), expected, atol=GREY_LEVEL + 1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_all_dark_float_image_in_0_255_is_read_as_such(backend):
    dark = (raw("camera") > 128).astype(np.float32)  # pixels 0 and 1 of [0, 255]: nearly black
    torch.testing.assert_close(pixels(backend(), dark), pixels(backend(), dark.astype(np.uint8)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_input, message", [
    (np.full((8, 8), 300, np.int32), r"Integer pixels of dtype int32 range from 300 to 300, outside \[0, 255\]; give "
                                     r"8-bit images as uint8 and 16-bit ones as uint16"),
    (PIL.Image.fromarray(np.full((8, 8), 70000, np.int32)), "Integer pixels of dtype int32 range from 70000"),
    (np.full((8, 8, 3), 256.0, np.float32), r"Float pixels range from 256 to 256, outside the \[0, 255\]"),
    (np.full((8, 8, 3), -1.0, np.float32), "Float pixels range from -1 to -1"),
])
def test_out_of_range_pixels_get_the_same_error_in_both_backends(backend, bad_input, message):
    with pytest.raises(ValueError, match=message):
        pixels(backend(), bad_input)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pathlib_path_is_a_path(backend, tmp_path):
    path = tmp_path / "rocket.png"
    PIL.Image.fromarray(raw("rocket")).save(path)
    expected = pixels(backend(), raw("rocket"))
    for same_image in (path, str(path)):
        torch.testing.assert_close(pixels(backend(), same_image), expected, atol=1e-6, rtol=0)
