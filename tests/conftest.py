"""Shared test fixtures: offline mode, tiny configurations and real photos from scikit-image."""

import os
import sys
from pathlib import Path

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # the oracle and helpers next to the tests
torch.set_num_threads(2)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def photo(name: str = "astronaut", size=(64, 64)) -> torch.Tensor:
    """A real RGB photo from skimage.data as a normalised (3, H, W) float tensor, resized to `size` (H, W)."""
    from skimage import data

    image = torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.interpolate(image[None, :3], size=size, mode="bilinear", antialias=True)[0]
    return (image - IMAGENET_MEAN) / IMAGENET_STD


def photo_batch(size=(64, 64), names=("astronaut", "coffee", "chelsea", "rocket")) -> torch.Tensor:
    """A (len(names), 3, H, W) batch of different real photos."""
    return torch.stack([photo(name, size) for name in names])


def tiny_config(**overrides):
    """A ClusTR configuration small enough for unit tests, with every stage clustered but the last."""
    from clustr_hf import ClusTRConfig

    settings = dict(
        hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4], depths=[1, 2, 1, 1], mlp_ratios=[2, 2, 2, 2],
        num_labels=3,
    )
    return ClusTRConfig(**{**settings, **overrides})


@pytest.fixture
def config():
    return tiny_config()
