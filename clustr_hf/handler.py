"""Custom handler for Hugging Face Inference Endpoints, shipped as handler.py in the Hub folder of a ClusTR classifier.

The Hub's hosted widget does not run custom code; an Inference Endpoint imports this file from the repository and
calls `EndpointHandler(path)(data)`. It needs only torch, torchvision and transformers (no clustr_hf): the model and
image processor load from the repository as remote code.
"""

import base64
import binascii
import io

import PIL.Image
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification


PROCESSOR_MODES = ("RGB", "RGBA", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""PIL modes the image processor reads itself: RGBA composited onto white, 16-bit and float pixels scaled to 8 bits
(PIL's convert("RGB") would drop the alpha and clip deep pixels to white or black). Others are converted to RGB."""

_ACCEPTED = (
    'send the image file itself as the request body (Content-Type image/jpeg, image/png, ...), or JSON '
    '{"inputs": "<base64 of the image file>"}'
)


def decode_image(inputs) -> PIL.Image.Image:
    """The image in `inputs` (see `for_processor`): a PIL image, the bytes of an image file, or those bytes
    base64-encoded (optionally as a `data:image/...;base64,` URL; line breaks, as MIME base64 has them, are ignored)."""
    if isinstance(inputs, PIL.Image.Image):
        return for_processor(inputs)
    if isinstance(inputs, str):
        encoded = inputs
        if inputs.startswith("data:"):
            _, comma, encoded = inputs.partition(",")
            if not comma:
                raise ValueError(f"'inputs' is a data URL without the comma that ends its header "
                                 f"('data:image/png;base64,<data>'); {_ACCEPTED}.")
        encoded = "".join(encoded.split())
        if not encoded:
            raise ValueError(f"'inputs' is an empty string; {_ACCEPTED}.")
        try:
            inputs = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"'inputs' is a string but not base64 ({error}); {_ACCEPTED}.") from error
    if not isinstance(inputs, (bytes, bytearray)):
        raise ValueError(f"'inputs' is a {type(inputs).__name__}, not an image; {_ACCEPTED}.")
    if not inputs:
        raise ValueError(f"'inputs' is empty (0 bytes); {_ACCEPTED}.")
    try:
        with PIL.Image.open(io.BytesIO(inputs)) as image:
            limit = PIL.Image.MAX_IMAGE_PIXELS
            if limit is not None and image.width * image.height > limit:  # PIL itself only warns up to twice that
                raise PIL.Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            image.load()
            return for_processor(image)
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(
            f"'inputs' is an image too large to decode safely, above PIL's limit of {PIL.Image.MAX_IMAGE_PIXELS:,} "
            f"pixels ({error}); send it resized (the model sees a few hundred pixels a side)."
        ) from error
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"'inputs' ({len(inputs)} bytes, starting {bytes(inputs[:8])!r}) is not an image file PIL can read "
            f"({error}); {_ACCEPTED}."
        ) from error


def for_processor(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` as the image processor should get it: as it is in one of the `PROCESSOR_MODES`, else in RGB."""
    return image if image.mode in PROCESSOR_MODES else image.convert("RGB")


class EndpointHandler:
    """Image classification with the repository's ClusTR model: `[{"label", "score"}]`, best first, softmax scores."""

    def __init__(self, path: str = ""):
        self.image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)
        self.model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
        non_finite = [name for name, weights in self.model.named_parameters() if not weights.isfinite().all()]
        if non_finite:
            raise ValueError(
                f"The model's weights in {path or 'this repository'} hold NaN or infinite values ({len(non_finite)} "
                f"tensors: {', '.join(non_finite[:3])}{', ...' * (len(non_finite) > 3)}), which give NaN scores; "
                f"upload weights from a training run that did not diverge."
            )

    def __call__(self, data: dict) -> list[dict]:
        """`data["inputs"]`: the image (see `decode_image`); optional `data["parameters"]["top_k"]` (default 5)."""
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError(f"The request has no 'inputs'; {_ACCEPTED}.")
        image = decode_image(data["inputs"])
        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError(f"'parameters' must be an object such as {{\"top_k\": 3}}, got {parameters!r}.")
        top_k = parameters.get("top_k", 5)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"parameters.top_k={top_k!r} must be a positive integer.")
        pixel_values = self.image_processor(image, return_tensors="pt").pixel_values
        with torch.no_grad():
            logits = self.model(pixel_values=pixel_values).logits[0]
        if not logits.isfinite().all():
            raise ValueError(
                f"The model's logits for this image are not finite ({logits.isnan().sum()} NaN, "
                f"{logits.isinf().sum()} infinite), so it has no scores to return: its activations overflow. Run the "
                f"model in float32 and check its weights for very large values."
            )
        scores = logits.softmax(-1)
        best = scores.topk(min(top_k, scores.numel()))
        id2label = self.model.config.id2label
        return [
            {"label": id2label[index], "score": score}
            for score, index in zip(best.values.tolist(), best.indices.tolist())
        ]
