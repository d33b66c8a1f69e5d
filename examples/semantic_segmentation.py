"""Fine-tune UperNet with a ClusTR backbone for semantic segmentation, offline, and save the result.

No segmentation data set is available offline, so this one is built from scikit-image's real photos: each photo's
label map puts every pixel into one of three brightness classes (dark, mid, bright) by multi-level Otsu thresholding
of its greyscale (`skimage.filters.threshold_multiotsu`). Training samples are random resized crops and flips of the
training photos (image and label map transformed together); validation uses other photos, resized whole. It shows the
wiring (ClusTR as an AutoBackbone inside UperNet, labels, loss, Trainer, save and reload), not a benchmark; no
pretrained ClusTR weights exist, so the backbone starts from random initialisation.

    python examples/semantic_segmentation.py --output_dir runs/upernet-clustr   # b0 backbone, 20 steps: 1 minute

The output folder holds the model (`UperNetForSemanticSegmentation.from_pretrained(folder)` after `import clustr_hf`),
the image processor that normalises inputs (`ClusTRImageProcessor` with `do_resize=False`), and metrics.json (the
metrics, and the record of the run's data and start in the shape the classification scripts write).
"""

import argparse
import json
from pathlib import Path

import passive_openmp  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)

import numpy as np
import torch
from skimage import color, data
from skimage.filters import threshold_multiotsu
from torchvision import tv_tensors
from torchvision.transforms import v2
from transformers import Trainer, TrainingArguments, UperNetConfig, UperNetForSemanticSegmentation

from clustr_hf import ClusTRConfig, ClusTRImageProcessor


CLASSES = ("dark", "mid", "bright")
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "coins")
VALIDATION_PHOTOS = ("chelsea", "camera")


def data_record() -> dict:
    """The run's data, as the classification scripts record theirs (examples/training_utils.py, data_record)."""
    return {
        "kind": "bundled", "name": "scikit-image sample photos", "config": None,
        "about": (f"bundled with scikit-image (skimage.data): {', '.join(TRAIN_PHOTOS)} for training, "
                  f"{', '.join(VALIDATION_PHOTOS)} for validation; each pixel labelled {', '.join(CLASSES)} by "
                  f"3-class Otsu thresholding of the photo's greyscale"),
        "validation_dir": None, "evaluation_split": "validation", "held_out_fraction": None,
    }


def brightness_labels(image: np.ndarray) -> np.ndarray:
    """The (H, W) label map of a uint8 photo: 0, 1, 2 for its dark, mid and bright pixels (3-class Otsu on grey)."""
    grey = color.rgb2gray(image[..., :3]) if image.ndim == 3 else image / 255.0
    return np.digitize(grey, threshold_multiotsu(grey, classes=len(CLASSES))).astype(np.int64)


def rgb_photo(name: str) -> np.ndarray:
    """A skimage photo as (H, W, 3) uint8; greyscale photos are repeated over the channels."""
    image = getattr(data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


class PhotoSegmentationSet(torch.utils.data.Dataset):
    """`{"pixel_values", "labels"}` samples of (height, width) from photos and their brightness label maps.

    With `samples_per_photo` > 0 each sample is a fresh random resized crop and flip (from torch's global generator,
    which Trainer seeds); with 0, each photo appears once, resized whole.
    """

    def __init__(self, names, size, processor: ClusTRImageProcessor, samples_per_photo: int = 0):
        self.photos = [self.image_and_labels(rgb_photo(name)) for name in names]
        self.processor, self.samples_per_photo = processor, samples_per_photo
        height, width = size
        if samples_per_photo:
            aspect = width / height
            self.transform = v2.Compose([
                v2.RandomResizedCrop(size, scale=(0.25, 1.0), ratio=(0.75 * aspect, 1.33 * aspect), antialias=True),
                v2.RandomHorizontalFlip(),
            ])
        else:
            self.transform = v2.Resize(size, antialias=True)

    @staticmethod
    def image_and_labels(photo: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """A (H, W, 3) uint8 photo as a torchvision image and its label map as a mask, to transform together."""
        return (tv_tensors.Image(torch.from_numpy(photo).permute(2, 0, 1)),
                tv_tensors.Mask(torch.from_numpy(brightness_labels(photo))))

    def __len__(self):
        return len(self.photos) * max(self.samples_per_photo, 1)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of a set of {len(self)}")
        image, labels = self.photos[index % len(self.photos)]
        image, labels = self.transform(image, labels)
        pixel_values = self.processor(image, do_resize=False, return_tensors="pt").pixel_values[0]
        return {"pixel_values": pixel_values, "labels": labels.as_subclass(torch.Tensor)}


def build_model(variant: str, backbone_overrides: dict, decoder_size: int) -> UperNetForSemanticSegmentation:
    """UperNet on all four ClusTR stages, with the auxiliary FCN head on stage 3."""
    backbone_config = ClusTRConfig.from_variant(
        variant, out_features=["stage1", "stage2", "stage3", "stage4"], **backbone_overrides
    )
    config = UperNetConfig(
        backbone_config=backbone_config,
        hidden_size=decoder_size,
        auxiliary_in_channels=backbone_config.hidden_sizes[2],
        auxiliary_channels=decoder_size // 2,
        id2label=dict(enumerate(CLASSES)),
        label2id={name: index for index, name in enumerate(CLASSES)},
    )
    return UperNetForSemanticSegmentation(config)


def segmentation_metrics(prediction) -> dict:
    """Pixel accuracy and mean intersection-over-union from Trainer's (logits, labels)."""
    logits, labels = prediction.predictions, prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    predicted = logits.argmax(1)
    confusion = np.bincount(labels.ravel() * len(CLASSES) + predicted.ravel(), minlength=len(CLASSES) ** 2)
    confusion = confusion.reshape(len(CLASSES), len(CLASSES))
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    present = union > 0
    return {
        "pixel_accuracy": float(np.diag(confusion).sum() / confusion.sum()),
        "mean_iou": float((np.diag(confusion)[present] / union[present]).mean()),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", "--output-dir", required=True,
                        help="where the fine-tuned model, processor and metrics go")
    parser.add_argument("--variant", default="b0", help="ClusTR variant of the backbone: b0 (default), b1, b2, b3")
    parser.add_argument("--backbone_overrides", type=json.loads, default={},
                        help='JSON of ClusTRConfig fields to override, e.g. \'{"depths": [1, 1, 1, 1]}\'')
    parser.add_argument("--decoder_size", type=int, default=64, help="UperNet's hidden size")
    parser.add_argument("--image_size", type=int, nargs=2, default=(128, 160), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--samples_per_photo", type=int, default=8, help="random crops of each training photo")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    processor = ClusTRImageProcessor(do_resize=False)
    size = tuple(args.image_size)
    train_set = PhotoSegmentationSet(TRAIN_PHOTOS, size, processor, args.samples_per_photo)
    validation_set = PhotoSegmentationSet(VALIDATION_PHOTOS, size, processor)
    model = build_model(args.variant, args.backbone_overrides, args.decoder_size)
    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.learning_rate, weight_decay=0.01,
        warmup_steps=0.1, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=args.seed,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=validation_set,
                      compute_metrics=segmentation_metrics, processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = {"first_train_loss": losses[0], "last_train_loss": losses[-1], **trainer.evaluate(),
               "train_samples": len(train_set), "eval_samples": len(validation_set), "data": data_record(),
               "from_scratch": True, "base_model": None, "base_model_is_local": False, "base_model_data": None}
    trainer.save_model(args.output_dir)
    Path(args.output_dir, "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
