"""ClusTRBackbone inside transformers' dense-prediction models (UperNet, DETR) on real photos at a non-square size,
and the UperNet fine-tuning example."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_batch, tiny_config
from skimage import color, data, measure
from transformers import (
    DetrConfig,
    DetrForObjectDetection,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from clustr_hf import ClusTRBackbone


EXAMPLE = Path(__file__).parents[1] / "examples" / "semantic_segmentation.py"
spec = importlib.util.spec_from_file_location("semantic_segmentation", EXAMPLE)
semantic_segmentation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(semantic_segmentation)

HEIGHT, WIDTH = 384, 512
PHOTOS = ("astronaut", "coffee")
ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def resized_labels(name: str) -> torch.Tensor:
    """The example's brightness label map (dark, mid, bright) of a photo, resized to (HEIGHT, WIDTH)."""
    labels = torch.from_numpy(semantic_segmentation.brightness_labels(getattr(data, name)()))
    return torch.nn.functional.interpolate(labels[None, None].float(), size=(HEIGHT, WIDTH), mode="nearest")[0, 0].long()


def bright_region_boxes(name: str, count: int = 3) -> dict:
    """DETR targets from a photo: the `count` largest connected bright regions, as normalised (cx, cy, w, h)."""
    regions = sorted(measure.regionprops(measure.label(resized_labels(name).numpy() == 2)), key=lambda r: -r.area)
    boxes = [
        [(left + right) / 2 / WIDTH, (top + bottom) / 2 / HEIGHT, (right - left) / WIDTH, (bottom - top) / HEIGHT]
        for top, left, bottom, right in (region.bbox for region in regions[:count])
    ]
    return {"class_labels": torch.arange(len(boxes)) % 2, "boxes": torch.tensor(boxes, dtype=torch.float32)}


def assert_backbone_gradients(backbone: ClusTRBackbone):
    """Every backbone gradient is finite; the first patch embedding and a clustered block's score layer (reached only
    through the cluster merge) get non-zero gradients."""
    for name, parameter in backbone.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    stage = backbone.clustr.encoder.stages[0]
    assert stage.patch_embeddings.proj.weight.grad.abs().sum() > 0
    assert stage.blocks[0].attention.score.weight.grad.abs().sum() > 0


def capture_feature_maps(backbone: ClusTRBackbone) -> list:
    shapes = []
    backbone.register_forward_hook(lambda module, inputs, output: shapes.extend(m.shape for m in output.feature_maps))
    return shapes


def test_upernet_with_clustr_backbone_trains_on_a_non_square_batch():
    torch.manual_seed(0)
    backbone_config = tiny_config(out_features=ALL_STAGES)
    model = UperNetForSemanticSegmentation(UperNetConfig(
        backbone_config=backbone_config, hidden_size=16, auxiliary_in_channels=backbone_config.hidden_sizes[2],
        auxiliary_channels=8, num_labels=3,
    ))
    assert type(model.backbone) is ClusTRBackbone
    feature_shapes = capture_feature_maps(model.backbone)
    labels = torch.stack([resized_labels(name) for name in PHOTOS])
    outputs = model(pixel_values=photo_batch((HEIGHT, WIDTH), PHOTOS), labels=labels)
    assert feature_shapes == [
        (2, width, HEIGHT // stride, WIDTH // stride)
        for width, stride in zip(backbone_config.hidden_sizes, (4, 8, 16, 32))
    ]
    assert outputs.logits.shape == (2, 3, HEIGHT, WIDTH)
    # Near chance at initialisation: main + 0.4 * auxiliary cross-entropy over 3 classes.
    assert math.isfinite(outputs.loss.item()) and 0.5 * 1.4 * math.log(3) < outputs.loss.item() < 2 * 1.4 * math.log(3)
    outputs.loss.backward()
    assert_backbone_gradients(model.backbone)


def test_detr_with_clustr_backbone_trains_on_a_non_square_batch():
    """DETR built from an AutoBackbone config (use_timm_backbone=False), boxes of real bright regions as targets."""
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(
        use_timm_backbone=False, backbone_config=tiny_config(out_features=["stage4"]), num_labels=2, num_queries=8,
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64,
    ))
    backbone = model.model.backbone.model
    assert type(backbone) is ClusTRBackbone
    feature_shapes = capture_feature_maps(backbone)
    targets = [bright_region_boxes(name) for name in PHOTOS]
    assert all(len(target["boxes"]) == 3 for target in targets)
    outputs = model(pixel_values=photo_batch((HEIGHT, WIDTH), PHOTOS), labels=targets)
    assert feature_shapes == [(2, 32, HEIGHT // 32, WIDTH // 32)]
    assert outputs.logits.shape == (2, 8, 3) and outputs.pred_boxes.shape == (2, 8, 4)
    assert ((outputs.pred_boxes >= 0) & (outputs.pred_boxes <= 1)).all()
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(outputs.loss_dict)
    assert math.isfinite(outputs.loss.item()) and outputs.loss.item() > 0
    outputs.loss.backward()
    assert_backbone_gradients(backbone)


def test_brightness_labels_split_a_photo_into_three_ordered_grey_bands():
    image = data.coffee()
    labels = semantic_segmentation.brightness_labels(image)
    grey = color.rgb2gray(image)
    assert labels.shape == image.shape[:2]
    shares = np.bincount(labels.ravel()) / labels.size  # a label above 2 would lengthen this
    assert len(shares) == 3 and (shares > 0.05).all()
    assert grey[labels == 0].max() < grey[labels == 1].min() and grey[labels == 1].max() < grey[labels == 2].min()


def test_semantic_segmentation_example_trains_saves_and_reloads(tmp_path):
    tiny_backbone = {"hidden_sizes": [8, 16, 24, 32], "num_attention_heads": [1, 2, 3, 4], "depths": [1, 1, 1, 1],
                     "mlp_ratios": [2, 2, 2, 2]}
    metrics = semantic_segmentation.main([
        "--output_dir", str(tmp_path), "--backbone_overrides", json.dumps(tiny_backbone), "--decoder_size", "16",
        "--image_size", "48", "64", "--samples_per_photo", "2", "--max_steps", "3", "--batch_size", "2",
    ])
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert 0 <= metrics["eval_pixel_accuracy"] <= 1 and 0 <= metrics["eval_mean_iou"] <= 1
    # the run records its data as the classification scripts do: bundled photos, 6 photos x 2 crops, 2 whole photos
    assert (metrics["train_samples"], metrics["eval_samples"], metrics["from_scratch"]) == (12, 2, True)
    assert (metrics["data"]["kind"], metrics["data"]["name"]) == ("bundled", "scikit-image sample photos")
    assert all(photo in metrics["data"]["about"] for photo in ("astronaut", "coins", "chelsea", "camera"))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in tmp_path.iterdir()}

    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(reloaded.backbone) is ClusTRBackbone and reloaded.config.backbone_config.depths == [1, 1, 1, 1]
    processor = semantic_segmentation.ClusTRImageProcessor.from_pretrained(tmp_path)
    validation = semantic_segmentation.PhotoSegmentationSet(semantic_segmentation.VALIDATION_PHOTOS, (48, 64), processor)
    batch = {key: torch.stack([sample[key] for sample in validation]) for key in ("pixel_values", "labels")}
    with torch.no_grad():
        loss = reloaded(**batch).loss.item()
    assert loss == pytest.approx(metrics["eval_loss"], rel=1e-4)
