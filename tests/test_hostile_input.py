"""Inputs that pass the type checks but would give NaN, a silent wrong answer or a deep error: half-precision models
whose scores overflow the cluster merge, non-finite pixels, configurations and processor settings out of range, and
damaged checkpoints. Each gets the right answer or an error naming the field or the file."""

import copy
import io
import json
import re

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import photo_batch, tiny_config
from skimage import data
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import pipeline

from clustr_hf import ClusTRConfig, ClusTRForImageClassification, ClusTRImageProcessor, ClusTRImageProcessorPil
from clustr_hf.handler import EndpointHandler
from clustr_hf.modeling_clustr import ClusTRAttention


BACKENDS = [ClusTRImageProcessor, ClusTRImageProcessorPil]
CONFIG_ERRORS = (ValueError, StrictDataclassClassValidationError)  # the validators' errors come wrapped in the latter


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return ClusTRForImageClassification(tiny_config()).eval()


@pytest.fixture(scope="module")
def pixel_values():
    return photo_batch((64, 64))


def with_shifted_scores(model, shift: float):
    """A copy of `model` whose score layers give every token `shift` more: the cluster means, and so the outputs, are
    the same (each is a weighted mean), but exp(score) grows by exp(shift)."""
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for module in shifted.modules():
            if isinstance(module, ClusTRAttention) and module.reduction_ratio > 1:
                module.score.bias += shift
    return shifted


def logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values).logits


@pytest.mark.parametrize("shift", [3.0, 6.0, 100.0])  # exp(100) overflows float32 itself
def test_float32_logits_and_gradients_do_not_depend_on_a_shift_of_the_scores(classifier, pixel_values, shift):
    labels = torch.tensor([0, 1, 2, 0])
    gradients = []
    for model in (classifier, with_shifted_scores(classifier, shift)):
        model.zero_grad()
        outputs = model(pixel_values, labels=labels)
        outputs.loss.backward()
        gradients.append((outputs.logits.detach(), [parameter.grad.clone() for parameter in model.parameters()]))
    (reference, reference_gradients), (shifted, shifted_gradients) = gradients
    torch.testing.assert_close(shifted, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shifted_gradients, reference_gradients, rtol=1e-4, atol=1e-6)
    classifier.zero_grad()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shift", [0.0, 3.0, 6.0])
@pytest.mark.parametrize("size", [64, 224])
def test_half_precision_models_give_the_float32_logits_whatever_the_scores(classifier, dtype, shift, size):
    pixel_values = photo_batch((size, size), batch_size=2)
    reference = logits(classifier, pixel_values)
    half = logits(with_shifted_scores(classifier, shift).to(dtype), pixel_values.to(dtype)).float()
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    # Each of the few dozen roundings to `dtype` (unit roundoff eps / 2) between the pixels and the logits adds an
    # error of that order relative to the activations, the errors partly cancelling: 8 eps of the largest logit.
    tolerance = 8 * torch.finfo(dtype).eps * reference.abs().max()
    assert (half - reference).abs().max() <= tolerance


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_non_finite_or_huge_pixels_are_refused_by_the_model(classifier, pixel_values, value):
    corrupt = pixel_values.clone()
    corrupt[1, 2, 30, 40] = value
    with pytest.raises(ValueError, match="pixel_values hold NaN, infinite or huge values"):
        classifier(corrupt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("do_rescale, scale", [(True, 255.0), (False, 1.0)])
def test_nan_pixels_are_refused_by_the_image_processor(backend, do_rescale, scale):
    """With do_rescale=True NaN used to become black (0), with do_rescale=False NaN logits."""
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float() / 255 * scale
    processor = backend(size=32, do_rescale=do_rescale)
    assert torch.isfinite(processor(image, return_tensors="pt").pixel_values).all()
    image[0, 10, 10] = float("nan")
    with pytest.raises(ValueError, match="1 NaN and 0 infinite values"):
        processor(image, return_tensors="pt")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"image_std": [0.229, 0.0, 0.225]}, "image_std="),
        ({"image_std": [0.229, float("nan"), 0.225]}, "image_std="),
        ({"image_mean": [0.485, float("inf"), 0.406]}, "image_mean="),
        ({"image_mean": [0.5]}, r"image_mean=\(0.5,\) gives 1 value\(s\) for the 3 RGB channels"),
        ({"image_std": 0.5}, r"image_std=0.5 gives 1 value\(s\) for the 3 RGB channels"),
        ({"resample": 99}, "resample=99 is not a resampling filter"),
    ],
)
def test_processor_settings_that_would_give_nan_or_a_silent_broadcast_are_refused(backend, settings, message):
    image = data.chelsea()
    with pytest.raises(ValueError, match=message):
        backend(size=32, **settings)(image, return_tensors="pt")
    with pytest.raises(ValueError, match=message):
        backend(size=32)(image, return_tensors="pt", **settings)


def test_processor_keeps_four_channel_statistics_for_four_channel_images():
    """Without the conversion to RGB, one value per channel of the image is what it takes."""
    image = np.dstack([data.chelsea(), data.chelsea()[..., 0]])
    pixels = ClusTRImageProcessor(size=32)(image, do_convert_rgb=False, image_mean=[0.0] * 4, image_std=[1.0] * 4,
                                           return_tensors="pt").pixel_values
    assert pixels.shape == (1, 4, 32, 32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"layer_norm_eps": 0.0}, "layer_norm_eps=0.0 must be positive"),
        ({"layer_norm_eps": float("nan")}, "layer_norm_eps=nan must be positive"),
        ({"patch_embed_layer_norm_eps": -1e-5}, "patch_embed_layer_norm_eps=-1e-05 must be positive"),
        ({"num_labels": 0}, "num_labels=0: ClusTR's classifier needs at least one class"),
        ({"num_labels": 1_000_001}, "num_labels has a value of 1,000,001, above ClusTR's limit of 1,000,000"),
        ({"depths": [2, 2, 2, 1_000_000]}, "depths has a value of 1,000,000, above ClusTR's limit of 100"),
        ({"hidden_sizes": [32, 64, 160, 10**6], "num_attention_heads": [1, 2, 5, 8]}, "hidden_sizes has a value of"),
        ({"mlp_ratios": [8, 8, 4, 400]}, "mlp_ratios has a value of 400"),
        ({"patch_sizes": [7000, 3, 3, 3]}, "patch_sizes has a value of 7,000"),
        ({"num_channels": 10**6}, "num_channels has a value of 1,000,000"),
    ],
)
def test_config_values_that_would_give_nan_or_never_load_are_refused(overrides, message):
    with pytest.raises(CONFIG_ERRORS, match=message):
        ClusTRConfig(**overrides)


def test_config_limits_admit_the_values_at_the_limit():
    config = ClusTRConfig(depths=[1, 1, 1, 100], hidden_sizes=[32, 64, 160, 8192], mlp_ratios=[16, 8, 4, 4],
                          patch_sizes=[64, 3, 3, 3], num_channels=1024, num_labels=1_000_000, layer_norm_eps=1e-12)
    assert config.num_labels == 1_000_000 and config.depths[-1] == 100


def test_num_labels_set_to_zero_after_construction_is_refused_when_the_model_is_built():
    config = tiny_config()
    config.num_labels = 0
    with pytest.raises(CONFIG_ERRORS, match="num_labels=0"):
        ClusTRForImageClassification(config)


@pytest.fixture
def saved_folder(classifier, tmp_path):
    """A classifier folder as training writes it, for the handler and from_pretrained."""
    folder = tmp_path / "classifier"
    classifier.save_pretrained(folder)
    ClusTRImageProcessor(size=64).save_pretrained(folder)
    return folder


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(data.chelsea()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"id2label": {}, "label2id": {}}, "num_labels=0"),
        ({"depths": [1, 2, 1, 1_000_000]}, "depths has a value of 1,000,000"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps=0.0 must be positive"),
    ],
)
def test_a_config_json_out_of_range_is_refused_by_every_loader(saved_folder, changes, message):
    edit_json(saved_folder / "config.json", **changes)
    for load in (lambda: ClusTRForImageClassification.from_pretrained(saved_folder),
                 lambda: EndpointHandler(str(saved_folder)),
                 lambda: pipeline("image-classification", model=str(saved_folder))):
        with pytest.raises(CONFIG_ERRORS, match=message):
            load()


@pytest.mark.parametrize("changes, message", [({"resample": 99}, "resample=99"), ({"image_std": [0.2, 0, 0.2]},
                                                                                      "image_std=")])
def test_the_handler_names_a_bad_processor_setting_of_the_folder(saved_folder, changes, message):
    edit_json(saved_folder / "preprocessor_config.json", **changes)
    with pytest.raises(ValueError, match=message):
        EndpointHandler(str(saved_folder))({"inputs": png_bytes()})


def test_the_handler_refuses_nan_weights_naming_them(classifier, tmp_path):
    folder = tmp_path / "nan"
    broken = copy.deepcopy(classifier)
    with torch.no_grad():
        broken.clustr.encoder.stages[1].blocks[0].mlp.dense1.weight[0, 0] = float("nan")
    broken.save_pretrained(folder)
    ClusTRImageProcessor(size=64).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"NaN or infinite values \(1 tensors: "
                                         r"clustr\.encoder\.stages\.1\.blocks\.0\.mlp\.dense1\.weight\)"):
        EndpointHandler(str(folder))


def test_the_handler_refuses_logits_that_overflow(classifier, tmp_path):
    """Finite weights so large that the logits overflow: no NaN score reaches the JSON answer."""
    folder = tmp_path / "huge"
    broken = copy.deepcopy(classifier)
    with torch.no_grad():
        broken.classifier.weight.fill_(3e38)
    broken.save_pretrained(folder)
    ClusTRImageProcessor(size=64).save_pretrained(folder)
    handler = EndpointHandler(str(folder))
    with pytest.raises(ValueError, match="logits for this image are not finite"):
        handler({"inputs": png_bytes()})


@pytest.mark.parametrize("kept", [0.5, 100, 4])
def test_a_truncated_weights_file_is_an_error_naming_it(saved_folder, kept):
    weights = saved_folder / "model.safetensors"
    complete = weights.read_bytes()
    length = int(len(complete) * kept) if isinstance(kept, float) else kept
    weights.write_bytes(complete[:length])
    for load in (lambda: ClusTRForImageClassification.from_pretrained(saved_folder),
                 lambda: EndpointHandler(str(saved_folder))):
        with pytest.raises(OSError, match=re.escape(f"{weights} ({length:,} bytes) could not be read")) as error:
            load()
        assert "truncated or corrupt" in str(error.value)
