"""Real photos for the test suite and the benchmarks, as `transformers.testing_utils` serves transformers' tests:
scikit-image's sample photos as normalised model inputs, and as the tokens a ClusTR block clusters. Needs
scikit-image, a development dependency (`pip install -e ".[dev]"`)."""

import torch


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
"""Four different scikit-image photos: a portrait, a cup, a cat and a rocket."""
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def photo(name: str = "astronaut", size=(64, 64)) -> torch.Tensor:
    """A real RGB photo from skimage.data as a normalised (3, H, W) float tensor, resized to `size` (H, W)."""
    from skimage import data

    image = torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.interpolate(image[None, :3], size=size, mode="bilinear", antialias=True)[0]
    return (image - IMAGENET_MEAN) / IMAGENET_STD


def photo_batch(size=(64, 64), names=PHOTOS, batch_size: int | None = None) -> torch.Tensor:
    """A (batch_size, 3, H, W) batch of real photos, `names` in turn (by default one of each)."""
    batch_size = batch_size or len(names)
    return torch.stack([photo(names[image % len(names)], size) for image in range(batch_size)])


@torch.no_grad()
def clustered_tokens(model, pixel_values, stage: int = 0) -> torch.Tensor:
    """The (B, N, C) tokens the first block of `stage` of a ClusTR model (or classifier) clusters for `pixel_values`:
    the stage's patch embedding (of the model's earlier stages' output), then the block's first LayerNorm."""
    encoder = getattr(model, "clustr", model).encoder
    feature_map = pixel_values
    for earlier in encoder.stages[:stage]:
        feature_map = earlier(feature_map)
    embeddings, _, _ = encoder.stages[stage].patch_embeddings(feature_map)
    return encoder.stages[stage].blocks[0].layer_norm_1(embeddings)
