"""Image processors for ClusTR: the evaluation transform of docs/algorithm.md section 6, in both transformers backends.

Shorter side to `int(crop / crop_pct)` (bicubic), centre crop `crop x crop`, rescale by 1/255, ImageNet mean and
std; the defaults (`size={"shortest_edge": 224}`, `crop_pct=0.875`) give the reference's resize-256-crop-224.
This is ConvNeXt's `crop_pct` transform with two changes that make it the reference's at every size: it crops at
every crop size (ConvNeXt warps instead from 384 up), and it places the crop like torchvision's `CenterCrop`
(offsets rounded, where transformers' own crop rounds down, one pixel off for some aspect ratios).

The PIL backend gives exactly the reference's torchvision pipeline on PIL images; the torchvision backend gives exactly
the same pipeline in `torchvision.transforms.v2` on uint8 tensors. The two differ only in how the uint8 bicubic
resizes round: on skimage's photos by at most 2 grey levels per pixel (2 / (255 * 0.224) = 0.035 after
normalisation) and by less than 3e-4 on average (tests/test_image_processor.py).
"""

import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling, SizeDict, torch_pil_interpolation_mapping,
)
from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil
from transformers.processing_utils import ImagesKwargs


try:  # the torchvision backend; the PIL backend works without torchvision
    from transformers.models.convnext.image_processing_convnext import ConvNextImageProcessor
except ImportError:
    ConvNextImageProcessor = None


_MODULE = __name__.split(".")[-1]
_ACCEPTED = "PIL images, numpy arrays or torch tensors (channels first or last), paths or URLs"
_DEEP_PIL_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""PIL modes of more than 8 bits per pixel, which PIL's convert("RGB") would clip to black or white."""


RESAMPLING_FILTERS = (*PILImageResampling, *torch_pil_interpolation_mapping)
"""The `resample` values both backends take: PIL's filters (or their numbers) and torchvision's interpolation modes."""


class ClusTRImageProcessorKwargs(ImagesKwargs, total=False):
    """crop_pct (`float`): the crop's share of the resized shorter side (0.875: resize to 256, crop 224)."""

    crop_pct: float


def dtype_kind(image) -> str:
    """numpy's kind letter of an array's or tensor's dtype: 'b' bool, 'u'/'i' integer, 'f' float, 'c' complex."""
    if isinstance(image, np.ndarray):
        return image.dtype.kind
    if image.dtype == torch.bool:
        return "b"
    return "c" if image.dtype.is_complex else "f" if image.dtype.is_floating_point else "i"


def as_uint8(image, values: torch.Tensor):
    """`values` rounded to uint8, as a numpy array or a tensor like `image`."""
    pixels = values.round().to(torch.uint8)
    return pixels.numpy() if isinstance(image, np.ndarray) else pixels


def eight_bit_pixels(image, do_rescale: bool):
    """The array or tensor `image` as both backends read it alike: 8-bit pixels as uint8 (16-bit ones scaled by
    255 / 65535, floats in [0, 255] rounded when `do_rescale`); a clear error for values out of range."""
    kind = dtype_kind(image)
    if kind not in "uif":
        raise ValueError(f"Images of dtype {image.dtype} are not supported; give uint8 pixels in [0, 255].")
    if image.dtype in (np.uint8, torch.uint8):
        return image
    values = torch.as_tensor(image).to(torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError(f"The pixels include {int(values.isnan().sum())} NaN and {int(values.isinf().sum())} infinite "
                         f"values; give finite pixels (uint8 in [0, 255], or floats in [0, 255] or [0, 1]).")
    low, high = values.min().item(), values.max().item()
    if image.dtype in (np.uint16, torch.uint16):
        return as_uint8(image, values / 257)
    if kind in "ui":
        if low < 0 or high > 255:
            raise ValueError(f"Integer pixels of dtype {image.dtype} range from {low:g} to {high:g}, outside [0, 255]; "
                             f"give 8-bit images as uint8 and 16-bit ones as uint16 (scaled to 8 bits).")
        return as_uint8(image, values)
    if not do_rescale:
        if low < 0 or high > 1:
            raise ValueError(f"Float pixels range from {low:g} to {high:g}, but do_rescale=False expects [0, 1]; "
                             f"pass do_rescale=True for [0, 255] pixels.")
        return image
    if low < 0 or high > 255:
        raise ValueError(f"Float pixels range from {low:g} to {high:g}, outside the [0, 255] that do_rescale=True "
                         f"expects; rescale them to [0, 255] (or to [0, 1] and pass do_rescale=False).")
    if high <= 1 and not torch.equal(values, values.round()):
        raise ValueError("These float pixels are fractions between 0 and 1: [0, 1] data, which do_rescale=True "
                         "would read as [0, 255] (nearly black); pass do_rescale=False, or give uint8 pixels.")
    return as_uint8(image, values)


def checked_image(image, do_rescale: bool):
    """One image as both backends read it alike (2-D arrays get a channel axis, paths are opened, deep pixels
    brought to 8 bits); a clear error for what they would reject obscurely or misread silently."""
    if isinstance(image, os.PathLike) or isinstance(image, str) and os.path.isfile(image):
        image = PIL.ImageOps.exif_transpose(PIL.Image.open(image))
    if isinstance(image, str):  # a URL or base64, which the backends load
        return image
    if isinstance(image, PIL.Image.Image):
        if image.mode not in _DEEP_PIL_MODES:
            return image
        image = np.array(image)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TypeError(f"Unsupported image type {type(image).__name__}; ClusTR's image processors take {_ACCEPTED}.")
    shape = tuple(image.shape)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"An image must have 2 (greyscale) or 3 dimensions, got shape {shape}; "
                         f"give a batch as a list of images or as one 4-D array.")
    if 0 in shape:
        raise ValueError(f"Empty image of shape {shape}; every image needs at least one pixel.")
    if image.shape[0] not in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"An image of shape {shape} has no axis of 1 (greyscale), 3 (RGB) or 4 (RGBA) channels "
                         f"first or last; convert it to one of those.")
    return eight_bit_pixels(image, do_rescale)


def checked_images(images, do_rescale: bool) -> list:
    """The input as a list of checked images: one image, a 4-D array or tensor (a batch), or a list or tuple."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError(f"No images given; pass one image or a non-empty list of {_ACCEPTED}.")
    return [checked_image(image, do_rescale) for image in images]


class ClusTRImageProcessingMixin:
    """What both backends share: the defaults, the resize-then-crop, the crop placement and a two-backend auto_map."""

    valid_kwargs = ClusTRImageProcessorKwargs
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 224}
    crop_pct = 0.875
    do_convert_rgb = True

    def preprocess(self, images, *args, **kwargs):
        """Process one image (PIL, numpy array, tensor, path or URL), a 4-D batch, or a list of images of any sizes."""
        do_rescale = kwargs.get("do_rescale")
        images = checked_images(images, self.do_rescale if do_rescale is None else do_rescale)
        return super().preprocess(images, *args, **kwargs)

    def _validate_preprocess_kwargs(self, **kwargs):
        """As transformers validates, and also: `resample` is a resampling filter, `image_mean` and `image_std` give
        one finite value per RGB channel (a single value would apply to all three unnoticed), `image_std` no zero."""
        super()._validate_preprocess_kwargs(**kwargs)
        resample = kwargs.get("resample")
        if kwargs.get("do_resize") and resample is not None and resample not in RESAMPLING_FILTERS:
            names = ", ".join(f"{member.name} ({member.value})" for member in PILImageResampling)
            raise ValueError(f"resample={resample!r} is not a resampling filter; give one of PILImageResampling's: "
                             f"{names}, or a torchvision InterpolationMode. ClusTR was trained with BICUBIC (3).")
        if not kwargs.get("do_normalize"):
            return
        for name in ("image_mean", "image_std"):
            values = kwargs.get(name)
            count = len(values) if isinstance(values, (list, tuple)) else 1
            if kwargs.get("do_convert_rgb") and count != 3:
                raise ValueError(f"{name}={values!r} gives {count} value(s) for the 3 RGB channels; give one per "
                                 f"channel, e.g. {name}={list(getattr(type(self), name))} (ImageNet's).")
            numbers = np.asarray(values, dtype=np.float64)
            if not np.isfinite(numbers).all() or name == "image_std" and (numbers <= 0).any():
                raise ValueError(f"{name}={values!r} must be finite{' and positive' * (name == 'image_std')}, or "
                                 f"normalised pixels are infinite or NaN; ImageNet's is "
                                 f"{list(getattr(type(self), name))}.")

    def resize(self, image, size: SizeDict, resample, crop_pct: float = crop_pct, **kwargs):
        """Resize the shorter side to `int(crop / crop_pct)`, then centre-crop `crop x crop`, `crop` being
        `size["shortest_edge"]`."""
        if not size.shortest_edge:
            raise ValueError(
                f"ClusTR's image processors take size={{'shortest_edge': crop}} (the side of the square centre crop), "
                f"got {dict(size)}; pass e.g. size=224 or size={{'shortest_edge': 224}}."
            )
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct={crop_pct} must lie in (0, 1]: the crop's share of the resized shorter side.")
        crop = size.shortest_edge
        # Skip ConvNeXt's resize (which warps from 384 up) and use the backend's aspect-preserving one.
        backend_resize = super(self._convnext_class, self).resize
        image = backend_resize(image, SizeDict(shortest_edge=int(crop / crop_pct)), resample=resample)
        return self.center_crop(image, SizeDict(height=crop, width=crop))

    def center_crop(self, image, size: SizeDict, **kwargs):
        """The centre crop of a channels-first tensor or array, placed as torchvision's `CenterCrop` (the
        reference's) places it: offsets rounded half to even; the resized image is never smaller than the crop."""
        if size.height is None or size.width is None:
            raise ValueError(f"crop_size must have 'height' and 'width', got {dict(size)}.")
        height, width = image.shape[-2:]
        top, left = round((height - size.height) / 2), round((width - size.width) / 2)
        return image[..., top : top + size.height, left : left + size.width]

    def to_dict(self):
        """As saved in preprocessor_config.json; a saved auto_map names the class of each backend, so that
        `AutoImageProcessor.from_pretrained(folder, trust_remote_code=True, backend="pil")` finds the PIL one."""
        processor_dict = super().to_dict()
        if "AutoImageProcessor" in (processor_dict.get("auto_map") or {}):
            processor_dict["auto_map"]["AutoImageProcessor"] = {
                "torchvision": f"{_MODULE}.ClusTRImageProcessor",
                "pil": f"{_MODULE}.ClusTRImageProcessorPil",
            }
        return processor_dict


class ClusTRImageProcessorPil(ClusTRImageProcessingMixin, ConvNextImageProcessorPil):
    """ClusTR's evaluation transform with the PIL backend (PIL's bicubic resize, as the reference's pipeline).

    Same inputs and outputs as `ClusTRImageProcessor`; needs no torchvision.
    """

    _convnext_class = ConvNextImageProcessorPil


if ConvNextImageProcessor is not None:

    class ClusTRImageProcessor(ClusTRImageProcessingMixin, ConvNextImageProcessor):
        """ClusTR's evaluation transform with the torchvision backend (batched torch ops; the default).

        Takes PIL images (16-bit and float ones too), numpy arrays and tensors (channels first or last; uint8 in
        [0, 255], uint16 scaled to 8 bits, other integers in [0, 255], floats in [0, 255], or in [0, 1] with
        `do_rescale=False`; greyscale and RGBA become RGB), paths, one or a list of mixed sizes; returns
        `pixel_values` (B, 3, crop, crop).
        """

        _convnext_class = ConvNextImageProcessor


__all__ = ["ClusTRImageProcessor", "ClusTRImageProcessorPil"]
