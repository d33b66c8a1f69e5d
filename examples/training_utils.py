"""What the two training scripts share: offline data, transforms, the training recipe, loss, metric and checkpoints.

Used by `examples/run_image_classification.py` (Trainer) and `examples/run_image_classification_no_trainer.py`
(accelerate). Works for any `AutoModelForImageClassification`, not only ClusTR.
"""

import errno
import functools
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser
from transformers.trainer_pt_utils import get_parameter_names
from transformers.utils import logging

from clustr_hf import VARIANTS, ClusTRConfig, ClusTRForImageClassification, ClusTRImageProcessor
from clustr_hf.atomic import atomic_folder


logger = logging.get_logger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
TOP_K_ACCURACY_METRIC = str(Path(__file__).with_name("top_k_accuracy.py"))
"""Path of the top-1/top-5 accuracy metric module; `evaluate.load(TOP_K_ACCURACY_METRIC)` works offline."""


# ----------------------------------------------------------------------------------------------------------------------
# Arguments shared by both scripts


@dataclass
class DataArguments:
    """Where the images come from. With neither `--dataset_name` nor `--train_dir`, the built-in `digits` is used."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "'digits' (scikit-learn's 8x8 digits, bundled), 'fashion_mnist' (Debian's "
                          "dataset-fashion-mnist), a folder written by datasets' save_to_disk, or a Hub dataset id."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder of training images (class/xx.png)."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder of validation images."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of the training split held out when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on this many samples only."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on this many samples only."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})
    skip_bad_images: bool = field(
        default=False, metadata={"help": "Leave out, with a warning listing them, the images that do not decode "
                                         "(truncated, corrupt, or above PIL's MAX_IMAGE_PIXELS) instead of stopping."}
    )


@dataclass
class ModelArguments:
    """Which model to train, and at which image size."""

    model_name_or_path: str = field(
        default="b0",
        metadata={"help": "A model folder or Hub id to fine-tune, or a ClusTR variant name (b0, b1, b2, b3) to "
                          "train from scratch."},
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "A folder holding the config.json of any image classifier (e.g. a saved PvtV2Config) to "
                          "train from scratch, instead of --model_name_or_path."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Folder or Hub id of the image processor, if not the model's."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Training and evaluation resolution; default: the image processor's (224 "
                                        "from scratch)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models are stored."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    token: str | None = field(default=None, metadata={"help": "Hub token, if not the one of `hf auth login`."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code from the Hub."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Replace a pretrained classifier whose number of classes differs."}
    )


@dataclass
class RecipeArguments:
    """The training recipe of docs/algorithm.md section 6, piece by piece; `--recipe imagenet` sets all of it."""

    recipe: str | None = field(
        default=None, metadata={"help": "A bundled recipe ('imagenet'); explicit flags still override its values."}
    )
    lr_base_batch_size: int | None = field(
        default=None, metadata={"help": "Scale the learning rate by total batch size / this (recipe: 512)."}
    )
    min_learning_rate: float | None = field(
        default=None, metadata={"help": "Final learning rate of the cosine_*with_min_lr schedules (recipe: 1e-5)."}
    )
    warmup_start_learning_rate: float | None = field(
        default=None, metadata={"help": "First learning rate of cosine_warmup_with_min_lr (recipe: 1e-6)."}
    )
    warmup_epochs: float | None = field(
        default=None, metadata={"help": "Warm-up length in epochs, instead of in steps (recipe: 5)."}
    )
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "Stochastic depth rate; default: the model configuration's."}
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the loss (recipe: 0.1)."})
    crop_scale_min: float = field(
        default=0.08, metadata={"help": "Smallest area fraction of RandomResizedCrop (1 keeps whole images)."}
    )
    horizontal_flip_prob: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    rand_augment_magnitude: int = field(default=0, metadata={"help": "RandAugment magnitude; 0 = off (recipe: 9)."})
    rand_augment_num_ops: int = field(default=2, metadata={"help": "RandAugment operations per image."})
    color_jitter: float = field(default=0.0, metadata={"help": "Brightness/contrast/saturation jitter; 0 = off."})
    random_erasing_prob: float = field(default=0.0, metadata={"help": "Random erasing probability (recipe: 0.25)."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup alpha; 0 = off (recipe: 0.8)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix alpha; 0 = off (recipe: 1.0)."})
    mixup_switch_prob: float = field(
        default=0.5, metadata={"help": "With both on, the probability of CutMix instead of Mixup for a batch."}
    )
    repeated_augmentations: int = field(
        default=1, metadata={"help": "Repeated augmentation: each sampled image appears this many times per epoch, "
                                     "differently augmented, keeping the epoch length (recipe: 3)."}
    )


def preferred_mixed_precision() -> str:
    """'bf16' where the accelerator computes in bf16, 'fp16' on older GPUs, 'no' on CPU (on a CPU without AMX, bf16
    autocast made b0's training steps 7x slower than float32, measured)."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "bf16"
    return "no"


def recipe_defaults(name: str, model_name_or_path: str | None = None) -> dict:
    """The flag values of a bundled recipe. docs/algorithm.md section 6 ('imagenet'): 300 epochs of AdamW at 5e-4 per
    512 images, weight decay 0.05 (not on biases and norms), cosine schedule from a 5-epoch warm-up starting at 1e-6
    down to 1e-5, label smoothing 0.1, RandAugment m9, random erasing 0.25, Mixup 0.8 / CutMix 1.0, repeated
    augmentation x3, gradient clipping 1.0 for b3 only, bf16 where supported.

    Colour jitter stays off: the reference trains with timm, which skips colour jitter whenever RandAugment is on.
    torchvision's RandAugment has no magnitude noise (the reference's 'mstd0.5').
    """
    if name != "imagenet":
        raise ValueError(f"Unknown recipe {name!r}; the bundled recipe is 'imagenet'.")
    mixed_precision = preferred_mixed_precision()
    return {
        "num_train_epochs": 300,
        "learning_rate": 5e-4,
        "lr_base_batch_size": 512,
        "weight_decay": 0.05,
        "adam_epsilon": 1e-8,
        "lr_scheduler_type": "cosine_warmup_with_min_lr",
        "min_learning_rate": 1e-5,
        "warmup_start_learning_rate": 1e-6,
        "warmup_epochs": 5,
        "max_grad_norm": 1.0 if model_name_or_path == "b3" else 0.0,
        "mixed_precision": mixed_precision,
        "bf16": mixed_precision == "bf16",
        "fp16": mixed_precision == "fp16",
        "image_size": 224,
        "label_smoothing": 0.1,
        "crop_scale_min": 0.08,
        "horizontal_flip_prob": 0.5,
        "rand_augment_magnitude": 9,
        "rand_augment_num_ops": 2,
        "color_jitter": 0.0,
        "random_erasing_prob": 0.25,
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "mixup_switch_prob": 0.5,
        "repeated_augmentations": 3,
    }


def parse_arguments(dataclass_types, argv=None):
    """Parse command-line flags into the dataclasses; `--recipe NAME` first sets that recipe's values as defaults,
    so that flags given explicitly still win. Returns one instance per dataclass type."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(dataclass_types)
    pre_parser = HfArgumentParser([RecipeArguments, ModelArguments], add_help=False)  # --help is the full parser's
    early, _ = pre_parser.parse_known_args(argv)
    if early.recipe is not None:
        destinations = {action.dest for action in parser._actions}
        defaults = recipe_defaults(early.recipe, early.model_name_or_path)
        parser.set_defaults(**{key: value for key, value in defaults.items() if key in destinations})
    return parser.parse_args_into_dataclasses(args=argv)


def explicit_flags(dataclass_types, argv=None) -> set[str]:
    """The fields that flags given on the command line set (not a default, nor a recipe's value)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(dataclass_types)
    not_given = object()
    parser.set_defaults(**{action.dest: not_given for action in parser._actions if action.dest != "help"})
    parsed, _ = parser.parse_known_args(argv)
    return {name for name, value in vars(parsed).items() if value is not not_given}


def check_at_least_one(**flags) -> None:
    """Raise naming the flag when a count given on the command line (`None`: not given) is below 1."""
    for name, value in flags.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name} {value} must be at least 1.")


def check_arguments(model_args: ModelArguments, data_args: DataArguments, recipe_args: RecipeArguments) -> None:
    """Fail early, naming the flag, on the shared flags' values that would otherwise fail deep inside a run."""
    check_at_least_one(image_size=model_args.image_size, max_train_samples=data_args.max_train_samples,
                       max_eval_samples=data_args.max_eval_samples,
                       repeated_augmentations=recipe_args.repeated_augmentations)
    if not 0 < recipe_args.crop_scale_min <= 1:
        raise ValueError(f"--crop_scale_min {recipe_args.crop_scale_min} must be in (0, 1] (1 keeps whole images).")


# ----------------------------------------------------------------------------------------------------------------------
# Data


def load_digits_dataset() -> datasets.DatasetDict:
    """scikit-learn's bundled handwritten digits (1797 greyscale 8x8 images, 10 classes) as train/validation splits
    of 80%/20%, stratified by class and always the same."""
    train, validation = _digits_splits()
    return datasets.DatasetDict({"train": train, "validation": validation})


@functools.cache
def _digits_splits() -> tuple[datasets.Dataset, datasets.Dataset]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("The digits dataset comes with scikit-learn: pip install scikit-learn") from error

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    dataset = datasets.Dataset.from_dict({"image": list(images), "label": digits.target.tolist()}, features=features)
    split = dataset.train_test_split(test_size=0.2, seed=0, stratify_by_column="label")
    return split["train"], split["test"]


def read_idx(path: Path) -> np.ndarray:
    """An array from a gzipped IDX file (the MNIST format): magic (0, 0, dtype 0x08, ndim), big-endian sizes, data."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not a gzipped IDX file of unsigned bytes.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{path} is truncated: {array.size} values for shape {shape}.")
    return array.reshape(shape)


def _fashion_mnist_examples(images_path: str, labels_path: str):
    images, labels = read_idx(Path(images_path)), read_idx(Path(labels_path))
    for image, label in zip(images, labels):
        yield {"image": image, "label": int(label)}


def load_fashion_mnist_dataset(directory: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Fashion-MNIST (60k train / 10k test greyscale 28x28 images, 10 classes) from the idx files of Debian's
    `dataset-fashion-mnist` package (or `directory`, or $FASHION_MNIST_DIR). Cached by datasets after the first call."""
    directory = Path(directory or os.environ.get("FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    missing = [name for pair in files.values() for name in pair if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed: {', '.join(missing)} missing in {directory}. Install it with "
            f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four idx .gz files in a folder "
            f"and set FASHION_MNIST_DIR to it."
        )
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_LABELS))}
    )
    return datasets.DatasetDict({
        split: datasets.Dataset.from_generator(
            _fashion_mnist_examples, features=features,
            gen_kwargs={"images_path": str(directory / images), "labels_path": str(directory / labels)},
        )
        for split, (images, labels) in files.items()
    })


BUILT_IN_DATASETS = {None: load_digits_dataset, "digits": load_digits_dataset,
                     "fashion_mnist": load_fashion_mnist_dataset}
"""The offline data sets by --dataset_name (none given: digits)."""
BUILT_IN_DATA_DESCRIPTIONS = {
    "digits": ("scikit-learn digits", "bundled with scikit-learn: 1797 8x8 greyscale images of handwritten digits in "
                                      "10 classes, split 80/20 into `train` and `validation`, stratified by class with "
                                      "a fixed seed"),
    "fashion_mnist": ("Fashion-MNIST", "the idx files of Debian's dataset-fashion-mnist package: 28x28 greyscale "
                                       "images of clothing in 10 classes, 60,000 in `train` and 10,000 in `test`"),
}
"""What model cards call the offline data sets, and where they come from: (name, about)."""


def load_image_dataset(args: DataArguments, seed: int = 0) -> datasets.DatasetDict:
    """The training and validation splits (keys 'train' and 'validation') described by `args`, offline where the
    data is local. A dataset without a validation or test split gets `train_val_split` of its training split held out
    (with `seed`). The result's `evaluation_split` names the split 'validation' is (None: held out), for the run
    record. The images of local or Hub data are checked to decode (see `drop_bad_images`)."""
    for flag, folder in (("train_dir", args.train_dir), ("validation_dir", args.validation_dir)):
        if folder is not None and not os.path.isdir(folder):
            raise FileNotFoundError(f"--{flag} {folder} does not exist or is not a folder; give a folder of class "
                                    f"sub-folders of images (class/xx.png).")
        if folder is not None and not any(path.is_file() for path in Path(folder).rglob("*")):
            raise FileNotFoundError(f"--{flag} {folder} holds no files; give a folder of class sub-folders of images "
                                    f"(class/xx.png).")
    if args.train_dir is not None:
        data_files = {"train": os.path.join(args.train_dir, "**")}
        if args.validation_dir is not None:
            data_files["validation"] = os.path.join(args.validation_dir, "**")
        dataset = load_imagefolder(data_files)
    elif args.dataset_name in BUILT_IN_DATASETS:
        dataset = BUILT_IN_DATASETS[args.dataset_name]()
    elif os.path.isdir(args.dataset_name):
        try:
            dataset = datasets.load_from_disk(args.dataset_name)
        except FileNotFoundError as error:
            raise ValueError(
                f"{args.dataset_name} is a folder but not a dataset written by save_to_disk ({error}); for a folder "
                f"of class sub-folders of images use --train_dir instead."
            ) from error
    else:
        dataset = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({"train": dataset})
    if "train" not in dataset:
        raise ValueError(f"The dataset has no 'train' split, only {list(dataset)}.")

    validation = next((name for name in ("validation", "test") if name in dataset), None)
    if validation is None:
        split = dataset["train"].train_test_split(test_size=args.train_val_split, seed=seed)
        dataset = datasets.DatasetDict({"train": split["train"], "validation": split["test"]})
    else:
        dataset = datasets.DatasetDict({"train": dataset["train"], "validation": dataset[validation]})
    dataset.evaluation_split = validation

    for name, split in dataset.items():
        for column, flag in ((args.image_column_name, "image"), (args.label_column_name, "label")):
            if column not in split.column_names:
                raise ValueError(
                    f"The {name} split has no column {column!r} (columns: {', '.join(split.column_names)}); "
                    f"name the {flag} column with --{flag}_column_name."
                )
    for name, limit, flag in (("train", args.max_train_samples, "max_train_samples"),
                              ("validation", args.max_eval_samples, "max_eval_samples")):
        if limit is None:
            continue
        if limit > len(dataset[name]):
            logger.warning(f"--{flag} {limit} is more than the {len(dataset[name])} images of the {name} split; "
                           f"using all of them.")
        dataset[name] = dataset[name].shuffle(seed=seed).select(range(min(limit, len(dataset[name]))))
    if args.train_dir is not None or args.dataset_name not in BUILT_IN_DATASETS:  # built-in images always decode
        for name in dataset:
            dataset[name] = drop_bad_images(dataset[name], name, args.image_column_name, args.skip_bad_images)
    return dataset


def image_name(value: dict, index: int) -> str:
    """How a message names an undecoded datasets image (`{"path", "bytes"}`): its file, else its row."""
    return value["path"] or f"row {index}"


def image_problem(value: dict, max_pixels: int | None) -> str | None:
    """Why an undecoded datasets image (`{"path", "bytes"}`) would fail to decode in training, or None: it does not
    open, has more than `max_pixels` pixels, or its data does not decode to the end (JPEG at 1/8 scale, which still
    reads every byte)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(value["path"] if value["bytes"] is None else io.BytesIO(value["bytes"])) as image:
                if max_pixels is not None and image.width * image.height > max_pixels:
                    return f"{image.width}x{image.height} pixels, more than PIL.Image.MAX_IMAGE_PIXELS ({max_pixels})"
                image.draft(image.mode, (1, 1))
                image.load()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _image_problems(values: list[dict], indices: list[int], max_pixels: int | None) -> dict:
    problems = [image_problem(value, max_pixels) for value in values]
    return {"problem": [problem and f"{image_name(value, index)} ({problem})"
                        for value, index, problem in zip(values, indices, problems)]}


BAD_IMAGES_LISTED = 100
"""How many of the images that do not decode an error or warning lists (then it counts the rest)."""


def drop_bad_images(split: datasets.Dataset, split_name: str, column: str, skip: bool) -> datasets.Dataset:
    """`split` after checking that each image of its `column` decodes (a truncated file or a decompression bomb
    would otherwise stop training when a batch reaches it). Raises listing the bad files, or with `skip` leaves them
    out with a warning listing them. datasets caches the check of a cached split."""
    if not isinstance(split.features.get(column), datasets.Image):
        return split
    problems = split.cast_column(column, datasets.Image(decode=False)).map(
        _image_problems, batched=True, with_indices=True, input_columns=[column], remove_columns=split.column_names,
        fn_kwargs={"max_pixels": Image.MAX_IMAGE_PIXELS}, desc=f"Checking the {split_name} images",
    )["problem"]
    bad = [problem for problem in problems if problem]
    if not bad:
        return split
    listing = "".join(f"\n  {problem}" for problem in bad[:BAD_IMAGES_LISTED])
    if len(bad) > BAD_IMAGES_LISTED:
        listing += f"\n  ... and {len(bad) - BAD_IMAGES_LISTED} more"
    if not skip:
        raise ValueError(f"{len(bad)} of the {len(split)} images of the {split_name} split do not decode:{listing}\n"
                         f"Replace or remove them, or pass --skip_bad_images to leave them out.")
    logger.warning(f"Leaving out {len(bad)} of the {len(split)} images of the {split_name} split, which do not "
                   f"decode (--skip_bad_images):{listing}")
    return split.select([index for index, problem in enumerate(problems) if not problem])


def load_imagefolder(data_files: dict) -> datasets.DatasetDict:
    """datasets' imagefolder loader on local files, without its progress bars: for local files they are a
    'Downloading data' bar per batch of files, although nothing is downloaded."""
    logger.info(f"Reading the images of {', '.join(data_files.values())}")
    bars_were_enabled = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        return datasets.load_dataset("imagefolder", data_files=data_files)
    finally:
        if bars_were_enabled:
            datasets.utils.enable_progress_bars()


def class_names(dataset: datasets.DatasetDict, label_column: str) -> list[str]:
    """The class names of the label column: a ClassLabel's names, or the sorted distinct integer labels."""
    feature = dataset["train"].features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted(set(dataset["train"][label_column]))
    if values != list(range(len(values))):
        raise ValueError(
            f"Column {label_column!r} holds {values[:10]}...; labels must be a ClassLabel or the integers "
            f"0..num_classes-1. Convert it with dataset.class_encode_column({label_column!r})."
        )
    return [str(value) for value in values]


# ----------------------------------------------------------------------------------------------------------------------
# Model and image processor


def default_image_processor(image_size: int) -> ClusTRImageProcessor:
    """The evaluation transform of docs/algorithm.md section 6 at `image_size`: shorter side to image_size / 0.875
    (bicubic), centre crop, rescale, ImageNet mean and std."""
    return ClusTRImageProcessor(size={"shortest_edge": image_size})


def image_size_of(image_processor) -> tuple[int, int]:
    """The (height, width) of the images an image processor produces."""
    crop_size = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop_size:
        return crop_size["height"], crop_size["width"]
    size = image_processor.size
    if "shortest_edge" in size:
        return size["shortest_edge"], size["shortest_edge"]
    return size["height"], size["width"]


def resize_image_processor(image_processor, image_size: int):
    """Make the image processor produce `image_size` x `image_size` images, keeping its kind of size."""
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None):
        image_processor.crop_size = {"height": image_size, "width": image_size}
    elif "shortest_edge" in image_processor.size:
        image_processor.size = {"shortest_edge": image_size}
    else:
        image_processor.size = {"height": image_size, "width": image_size}
    return image_processor


def trains_from_scratch(args: ModelArguments) -> bool:
    """Whether the model starts from random weights: a configuration (`config_name`), or a ClusTR variant name that is
    not also a folder."""
    return args.config_name is not None or (
        args.model_name_or_path in VARIANTS and not os.path.isdir(args.model_name_or_path))


def load_model_and_image_processor(args: ModelArguments, labels: list[str], drop_path_rate: float | None = None):
    """The classifier for `labels` and its image processor: a new model from `config_name`'s configuration, or a
    ClusTR variant from scratch when `model_name_or_path` names one (and is not a folder), otherwise a pretrained model
    from a folder or the Hub. New models get the default image processor."""
    id2label = dict(enumerate(labels))
    label2id = {label: index for index, label in id2label.items()}
    overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    if args.config_name is not None:
        config = AutoConfig.from_pretrained(args.config_name, id2label=id2label, label2id=label2id, **overrides)
        model = AutoModelForImageClassification.from_config(config)
        image_processor = default_image_processor(args.image_size or 224)
    elif trains_from_scratch(args):
        config = ClusTRConfig.from_variant(args.model_name_or_path, id2label=id2label, label2id=label2id, **overrides)
        model = ClusTRForImageClassification(config)
        image_processor = default_image_processor(args.image_size or 224)
    else:
        hub_kwargs = dict(
            cache_dir=args.cache_dir, revision=args.model_revision, token=args.token,
            trust_remote_code=args.trust_remote_code,
        )
        try:
            config = AutoConfig.from_pretrained(
                args.model_name_or_path, id2label=id2label, label2id=label2id, finetuning_task="image-classification",
                **overrides, **hub_kwargs,
            )
        except OSError as error:
            if os.path.isdir(args.model_name_or_path):
                raise
            raise OSError(
                f"--model_name_or_path {args.model_name_or_path!r} is not a variant ({', '.join(VARIANTS)}), folder "
                f"or cached Hub id ({error}). Give a variant to train from scratch, a folder written by "
                f"save_pretrained, or a Hub id (downloaded once while online)."
            ) from error
        model = AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, config=config, ignore_mismatched_sizes=args.ignore_mismatched_sizes, **hub_kwargs
        )
        processor_source = args.image_processor_name or args.model_name_or_path
        try:
            image_processor = AutoImageProcessor.from_pretrained(processor_source, **hub_kwargs)
        except OSError as error:
            raise OSError(
                f"No image processor found in {processor_source} ({error}); pass --image_processor_name with a "
                f"folder holding a preprocessor_config.json."
            ) from error
    if args.image_size is not None:
        resize_image_processor(image_processor, args.image_size)
    return model, image_processor


# ----------------------------------------------------------------------------------------------------------------------
# Transforms, sampling and batching


def build_train_transform(args: RecipeArguments, image_processor) -> v2.Compose:
    """Training augmentation for RGB PIL images, in the reference's order: random resized crop (bicubic), flip,
    RandAugment, colour jitter, to float, normalise, random erasing. Size, mean and std follow the image processor."""
    steps = [
        v2.RandomResizedCrop(
            image_size_of(image_processor), scale=(args.crop_scale_min, 1.0),
            interpolation=InterpolationMode.BICUBIC, antialias=True,
        )
    ]
    if args.horizontal_flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(args.horizontal_flip_prob))
    if args.rand_augment_magnitude > 0:
        steps.append(v2.RandAugment(num_ops=args.rand_augment_num_ops, magnitude=args.rand_augment_magnitude,
                                    interpolation=InterpolationMode.BICUBIC))
    if args.color_jitter > 0:
        steps.append(v2.ColorJitter(args.color_jitter, args.color_jitter, args.color_jitter))
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(image_processor.image_mean, image_processor.image_std),
    ]
    if args.random_erasing_prob > 0:
        steps.append(v2.RandomErasing(args.random_erasing_prob, value="random"))
    return v2.Compose(steps)


def build_eval_transform(image_processor):
    """The image processor itself, so evaluation sees exactly what the saved model gets in a pipeline."""

    def transform(image):
        return image_processor(image, return_tensors="pt")["pixel_values"][0]

    return transform


def _run_seeded(seed: int, function, *args):
    """`function(*args)` with the CPU random generator seeded by `seed`, leaving the global random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return function(*args)


class EpochShuffledDataset(Dataset):
    """A training set read in order (a sequential sampler) that shuffles itself anew each epoch from (seed, epoch)
    alone and gives every position its own augmentation seed.

    Position p of an epoch is the `(index, sample_seed)` key of `TransformedImageDataset`, so an image's augmentation
    depends only on the run's seed, the epoch and its position: resuming mid-epoch, or splitting batches over several
    processes, sees the same augmented images. Trainer and accelerate's data loaders call `set_epoch` at the start of
    every epoch. With `repeats > 1` (repeated augmentation) each epoch draws len/repeats images and yields each
    `repeats` times in a row with different seeds, keeping the epoch length.
    """

    def __init__(self, dataset: "TransformedImageDataset", seed: int, repeats: int = 1):
        if repeats < 1:
            raise ValueError(f"repeated_augmentations={repeats} must be >= 1.")
        self.dataset, self.seed, self.repeats = dataset, seed, repeats
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._keys = None

    def epoch_keys(self) -> list[tuple[int, int]]:
        """The `(index, sample_seed)` keys of this epoch, in order."""
        if self._keys is None:
            num_samples = len(self.dataset)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(num_samples, generator=generator)
            if self.repeats > 1:
                order = order[: math.ceil(num_samples / self.repeats)].repeat_interleave(self.repeats)[:num_samples]
            seeds = torch.randint(2**62, (num_samples,), generator=generator)
            self._keys = list(zip(order.tolist(), seeds.tolist()))
        return self._keys

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> dict:
        return self.dataset[self.epoch_keys()[position]]


class TransformedImageDataset(Dataset):
    """A datasets split seen as `{"pixel_values", "labels"}` examples: the image (converted to RGB) goes through
    `transform`. Keys are indices, or `(index, seed)` (see `EpochShuffledDataset`) to run the transform under that
    seed."""

    def __init__(self, dataset: datasets.Dataset, transform, image_column: str = "image", label_column: str = "label"):
        self.dataset, self.transform = dataset, transform
        self.image_column, self.label_column = image_column, label_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        try:
            example = self.dataset[index]
            image = example[self.image_column].convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            value = self.dataset.cast_column(self.image_column, datasets.Image(decode=False))[index][self.image_column]
            raise OSError(f"The image {image_name(value, index)} does not decode ({type(error).__name__}: {error}); "
                          f"replace or remove it, or train with --skip_bad_images.") from error
        pixel_values = self.transform(image) if seed is None else _run_seeded(seed, self.transform, image)
        item = {"pixel_values": pixel_values, "labels": example[self.label_column]}
        if seed is not None:
            item["seed"] = seed
        return item


class ImageCollator:
    """Stacks examples into `{"pixel_values", "labels"}`; for training batches with Mixup and/or CutMix on, mixes the
    batch (seeded by its first example) into soft labels of shape (batch, num_labels)."""

    def __init__(self, num_labels: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, switch_prob: float = 0.5):
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_labels))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_labels))
        if len(mixers) == 2:
            self.mix = v2.RandomChoice(mixers, p=[1 - switch_prob, switch_prob])
        else:
            self.mix = mixers[0] if mixers else None

    @classmethod
    def for_training(cls, num_labels: int, args: RecipeArguments) -> "ImageCollator":
        return cls(num_labels, args.mixup_alpha, args.cutmix_alpha, args.mixup_switch_prob)

    def __call__(self, examples: list[dict]) -> dict:
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        labels = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
        if self.mix is not None and "seed" in examples[0]:
            pixel_values, labels = _run_seeded(examples[0]["seed"] ^ 0x5EED, self.mix, pixel_values, labels)
        return {"pixel_values": pixel_values, "labels": labels}


def build_datasets(dataset: datasets.DatasetDict, image_processor, data_args: DataArguments,
                   recipe_args: RecipeArguments, seed: int):
    """The training and evaluation datasets: augmented training images shuffled per epoch with `seed`,
    image-processor evaluation images."""
    train = EpochShuffledDataset(
        TransformedImageDataset(dataset["train"], build_train_transform(recipe_args, image_processor),
                                data_args.image_column_name, data_args.label_column_name),
        seed, recipe_args.repeated_augmentations,
    )
    evaluation = TransformedImageDataset(dataset["validation"], build_eval_transform(image_processor),
                                         data_args.image_column_name, data_args.label_column_name)
    return train, evaluation


AUGMENTATION_SETTINGS = (
    "crop_scale_min", "horizontal_flip_prob", "rand_augment_magnitude", "rand_augment_num_ops", "color_jitter",
    "random_erasing_prob", "mixup_alpha", "cutmix_alpha", "mixup_switch_prob", "repeated_augmentations",
)


def data_record(args: DataArguments, dataset: datasets.DatasetDict) -> dict:
    """What the data of a run was, for model cards: `kind` 'hub' (`name`: the dataset id, `config`: its
    configuration), 'bundled' (`name` and `about`: what it is and where it comes from) or 'local' (`name`: the data
    folder, `validation_dir`: a separate validation folder); `evaluation_split` is the split evaluated on, or None
    when `held_out_fraction` of the training split was held out (`dataset` from `load_image_dataset`)."""
    record = {"kind": "hub", "name": args.dataset_name, "config": args.dataset_config_name, "about": None,
              "validation_dir": None, "evaluation_split": dataset.evaluation_split,
              "held_out_fraction": None if dataset.evaluation_split else args.train_val_split}
    if args.train_dir is not None:
        record.update(kind="local", name=args.train_dir, config=None, validation_dir=args.validation_dir)
    elif args.dataset_name in BUILT_IN_DATASETS:
        name, about = BUILT_IN_DATA_DESCRIPTIONS[args.dataset_name or "digits"]
        record.update(kind="bundled", name=name, config=None, about=about)
    elif os.path.isdir(args.dataset_name):
        record.update(kind="local", config=None)
    return record


def start_record(args: ModelArguments) -> dict:
    """Where the weights started, for model cards: `from_scratch`, or the `base_model` fine-tuned (a Hub id, or a
    folder when `base_model_is_local`, then with `base_model_data`, the data record of the folder's own run if it has
    one)."""
    if trains_from_scratch(args):
        return {"from_scratch": True, "base_model": None, "base_model_is_local": False, "base_model_data": None}
    base = args.model_name_or_path
    local = os.path.isdir(base)
    base_data = None
    if local:
        from clustr_hf.publishing import read_measured_results

        _, base_results = read_measured_results(Path(base))
        base_data = (base_results or {}).get("data")
    return {"from_scratch": False, "base_model": base, "base_model_is_local": local, "base_model_data": base_data}


def run_record(model_args: ModelArguments, data_args: DataArguments, recipe_args: RecipeArguments,
               dataset: datasets.DatasetDict, model_config, image_processor, **training) -> dict:
    """What both scripts write into all_results.json beside the metrics, for model cards: the sample counts, the data
    (`data_record`), where the weights started (`start_record`) and the settings that matter (`hyperparameters`: the
    script's optimisation and length settings, the recipe's loss and augmentation settings, the stochastic depth rate
    the model trained with and the image size)."""
    height, width = image_size_of(image_processor)
    drop_path_rate = getattr(model_config, "drop_path_rate", None)
    hyperparameters = {
        **training,
        "label_smoothing": recipe_args.label_smoothing,
        **({} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}),
        **{setting: getattr(recipe_args, setting) for setting in AUGMENTATION_SETTINGS},
        "image_size": height if height == width else [height, width],
    }
    return {
        "train_samples": len(dataset["train"]),
        "eval_samples": len(dataset["validation"]),
        "data": data_record(data_args, dataset),
        **start_record(model_args),
        "hyperparameters": hyperparameters,
    }


EXAMPLE_IMAGES_DIR = "example_images"


def save_example_images(split: datasets.Dataset, output_dir: str | os.PathLike, labels: list[str],
                        image_column: str = "image", label_column: str = "label", count: int = 3) -> list[dict]:
    """Save the first image of each of the first `count` classes of `split` (the validation split) as PNG files in
    `output_dir/example_images`, the examples the model card shows; returns their records ({"file", "label"}, the
    file relative to `output_dir`)."""
    folder = Path(output_dir, EXAMPLE_IMAGES_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    examples, seen = [], set()
    for index, label in enumerate(split[label_column]):
        if label in seen:
            continue
        seen.add(label)
        image = split[index][image_column]
        name = f"{EXAMPLE_IMAGES_DIR}/validation-{index}.png"
        (image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGB")).save(Path(output_dir, name))
        examples.append({"file": name, "label": labels[label]})
        if len(examples) == count:
            break
    return examples


# ----------------------------------------------------------------------------------------------------------------------
# Loss, optimiser, schedule, metric


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                        num_samples=None) -> torch.Tensor:
    """Cross-entropy with label smoothing for class indices (B,) or soft targets (B, num_labels) from Mixup/CutMix:
    the mean over the batch, or the sum divided by `num_samples` (the samples of a whole accumulated batch)."""
    losses = torch.nn.functional.cross_entropy(
        logits.float(), targets, label_smoothing=label_smoothing, reduction="none"
    )
    return losses.mean() if num_samples is None else losses.sum() / num_samples


def optimizer_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weights, none on biases and normalisation parameters (the same rule
    as transformers' Trainer)."""
    decay_names = set(get_parameter_names(model, [torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d],
                                          [r"bias", r"norm"]))
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    return [
        {"params": [p for name, p in trainable if name in decay_names], "weight_decay": weight_decay},
        {"params": [p for name, p in trainable if name not in decay_names], "weight_decay": 0.0},
    ]


def scaled_learning_rate(learning_rate: float, total_batch_size: int, base_batch_size: int | None) -> float:
    """The linear scaling rule: learning_rate * total_batch_size / base_batch_size (unchanged without a base)."""
    return learning_rate if base_batch_size is None else learning_rate * total_batch_size / base_batch_size


SCHEDULER_KWARGS_FLAGS = {"min_lr": "min_learning_rate", "warmup_lr_rate": "warmup_start_learning_rate"}
"""The flag behind each keyword of `scheduler_kwargs`."""


def scheduler_kwargs(lr_scheduler_type: str, learning_rate: float, args: RecipeArguments) -> dict:
    """The `scheduler_specific_kwargs` of transformers' `get_scheduler` for the minimum and warm-up start rates
    (a rate the chosen schedule has no use for is left out with a warning, e.g. a recipe's under `--lr_scheduler_type
    cosine`)."""
    lr_scheduler_type = str(getattr(lr_scheduler_type, "value", lr_scheduler_type))
    kwargs = {}
    if lr_scheduler_type in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        if args.min_learning_rate is None:
            raise ValueError(f"--lr_scheduler_type {lr_scheduler_type} needs --min_learning_rate (e.g. 1e-5).")
        kwargs["min_lr"] = args.min_learning_rate
    elif args.min_learning_rate is not None:
        logger.warning(f"--min_learning_rate is ignored: --lr_scheduler_type {lr_scheduler_type} has no minimum rate.")
    if args.warmup_start_learning_rate is not None:
        if lr_scheduler_type == "cosine_warmup_with_min_lr":
            kwargs["warmup_lr_rate"] = args.warmup_start_learning_rate / learning_rate
        else:
            logger.warning(f"--warmup_start_learning_rate is ignored: only cosine_warmup_with_min_lr starts its warm-up "
                           f"above 0, not --lr_scheduler_type {lr_scheduler_type}.")
    return kwargs


def load_top_k_accuracy():
    """The repository's top-k accuracy metric through `evaluate` (offline, in memory so processes do not share
    cache files)."""
    import evaluate

    return evaluate.load(TOP_K_ACCURACY_METRIC, keep_in_memory=True)


def top_k_predictions(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """The k best classes of each row, best first (fewer when there are fewer classes): the metric's predictions."""
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints (accelerate)


CHECKPOINT_STATE_FILE = "training_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: missing, incomplete, corrupt or written by an incompatible run."""


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the model's parameter names and shapes: equal exactly when a checkpoint's weights fit."""
    description = ";".join(f"{name}:{tuple(tensor.shape)}" for name, tensor in model.state_dict().items())
    return hashlib.sha256(description.encode()).hexdigest()[:16]


def _checkpoint_folders(checkpoints_dir: str | os.PathLike, prefix: str) -> list[tuple[int, Path]]:
    directory = Path(checkpoints_dir)
    if not directory.is_dir():
        return []
    name = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    return sorted((int(match.group(1)), child) for child in directory.iterdir() if (match := name.match(child.name)))


def list_checkpoints(checkpoints_dir: str | os.PathLike, prefix: str = "step_",
                     marker: str = CHECKPOINT_STATE_FILE) -> list[tuple[int, Path]]:
    """The complete checkpoints `(step, folder)` in `checkpoints_dir`, oldest first: folders named `prefix` + step
    that hold `marker`, the file written last."""
    return [(step, path) for step, path in _checkpoint_folders(checkpoints_dir, prefix) if (path / marker).is_file()]


def incomplete_checkpoints(checkpoints_dir: str | os.PathLike, prefix: str = "step_",
                           marker: str = CHECKPOINT_STATE_FILE) -> list[Path]:
    """The folders named like checkpoints in `checkpoints_dir` that lack `marker`, oldest first."""
    return [path for _, path in _checkpoint_folders(checkpoints_dir, prefix) if not (path / marker).is_file()]


def refuse_incomplete(checkpoints_dir: str | os.PathLike) -> None:
    """Raise if `checkpoints_dir` holds a `step_N` folder without its state file. `save_checkpoint` renames a
    checkpoint into place only once it is complete, so such a folder was damaged or edited afterwards; resuming
    before it would later fail to write over it."""
    incomplete = incomplete_checkpoints(checkpoints_dir)
    if incomplete:
        complete = ", ".join(str(path) for _, path in list_checkpoints(checkpoints_dir)) or "none"
        raise CheckpointError(
            f"{', '.join(map(str, incomplete))} lack(s) {CHECKPOINT_STATE_FILE}: not a complete checkpoint (this "
            f"script renames checkpoints into place only when complete, so the folder was damaged or edited). Delete "
            f"it, then resume from a complete checkpoint ({complete}) or start again."
        )


def refuse_to_overwrite(checkpoints: list[tuple[int, Path]], start_step: int) -> None:
    """Raise if a run starting at `start_step` would later write over one of `checkpoints`."""
    later = [str(path) for step, path in checkpoints if step > start_step]
    if later:
        raise CheckpointError(
            f"The output folder already holds checkpoints after step {start_step} ({', '.join(later)}) that this run "
            f"would overwrite; resume from the latest with --resume_from_checkpoint latest, or use another "
            f"--output_dir."
        )


def _file_digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file in `folder` but the state file, by path relative to it."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != CHECKPOINT_STATE_FILE:
            with path.open("rb") as file:
                digests[str(path.relative_to(folder))] = hashlib.file_digest(file, "sha256").hexdigest()
    return digests


FULL_DISK_BYTES = 16 * 2**20
"""Free space below which a failed write is put down to a full disk (torch's writer reports one without errno)."""


def disk_full(error: BaseException, folder: str | os.PathLike) -> bool:
    """Whether `error`, raised while writing into `folder`, comes from a full disk: errno ENOSPC or EDQUOT, its text
    in safetensors' error, or almost no space left there (torch's bare `basic_ios::clear: iostream error`)."""
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error):
        return True
    existing = next(path for path in [Path(folder), *Path(folder).absolute().parents] if path.exists())
    return shutil.disk_usage(existing).free < FULL_DISK_BYTES


def disk_full_error(error: BaseException, folder: str | os.PathLike, what: str) -> OSError:
    """The ENOSPC error to raise from `error` when the disk was full writing `what` into `folder`: names the folder
    and the fix."""
    return OSError(
        errno.ENOSPC,
        f"The disk holding {folder} is full: {what} could not be written ({type(error).__name__}: {error}). Free "
        f"space there or use an --output_dir on a larger disk, then resume with --resume_from_checkpoint latest.",
    )


def save_checkpoint(accelerator, checkpoints_dir: str | os.PathLike, step: int, state: dict) -> Path:
    """Save model, optimiser, scheduler and every process's RNG states (accelerate's `save_state`) plus `state`
    (data position and run signature) and the digest of every file as `checkpoints_dir/step_{step}`, atomically:
    everything is written and synced into `step_{step}.partial` (see `atomic_folder`), which is then renamed. An
    existing checkpoint is never overwritten; on a full disk the partial folder is removed and the error names the
    folder."""
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"step_{step}"
    partial = final.with_name(f"{final.name}.partial")
    if accelerator.is_main_process and final.exists():
        raise CheckpointError(f"{final} already exists; refusing to overwrite it.")
    # the main process creates, syncs and renames the folder; every process writes its files into it
    writing = atomic_folder(final, sync=True, staging=partial) if accelerator.is_main_process else nullcontext(partial)
    try:
        with writing:
            accelerator.wait_for_everyone()
            accelerator.save_state(str(partial))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                state = {**state, "files": _file_digests(partial)}
                (partial / CHECKPOINT_STATE_FILE).write_text(json.dumps(state, indent=2))
    except Exception as error:
        if not disk_full(error, checkpoints_dir):
            raise
        raise disk_full_error(error, checkpoints_dir, f"checkpoint {final.name}") from error
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(name: str, checkpoints_dir: str | os.PathLike, prefix: str = "step_",
                       marker: str = CHECKPOINT_STATE_FILE) -> Path:
    """The checkpoint folder meant by `--resume_from_checkpoint`: a path, or 'latest' (the newest complete one in
    `checkpoints_dir`)."""
    if name == "latest":
        found = list_checkpoints(checkpoints_dir, prefix, marker)
        if not found:
            raise CheckpointError(f"No complete checkpoint in {checkpoints_dir} to resume from; start without "
                                  f"--resume_from_checkpoint, or give a checkpoint folder.")
        return found[-1][1]
    folder = Path(name)
    if not (folder / marker).is_file():
        others = ", ".join(str(path) for _, path in list_checkpoints(folder.parent, prefix, marker)) or "none"
        problem = "does not exist" if not folder.is_dir() else f"is not a complete checkpoint (no {marker})"
        raise CheckpointError(f"Checkpoint {folder} {problem}; complete checkpoints beside it: {others}.")
    return folder


def load_checkpoint(accelerator, folder: str | os.PathLike, signature: dict) -> dict:
    """Restore a complete checkpoint (see `resolve_checkpoint`) written by `save_checkpoint` into the prepared
    objects and RNGs; returns its state.

    Raises `CheckpointError` naming the problem and the fix when its state differs from `signature` (the run settings
    that must match for an exact resume), or a file is missing, differs from what was written, or does not load.
    """
    folder = Path(folder)
    others = ", ".join(str(path) for _, path in list_checkpoints(folder.parent) if path != folder) or "none"
    state_file = folder / CHECKPOINT_STATE_FILE
    try:
        state = json.loads(state_file.read_text())
        recorded, files = state["run"], dict(state["files"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{state_file} is corrupt or from an older version of this script ({type(error).__name__}: {error}); "
            f"resume from another checkpoint: {others}."
        ) from error
    mismatches = [
        f"{key} is {recorded.get(key)!r} in the checkpoint but {value!r} now"
        for key, value in signature.items()
        if recorded.get(key) != value
    ]
    if mismatches:
        raise CheckpointError(
            f"Checkpoint {folder} belongs to an incompatible run: {'; '.join(mismatches)}. Resume with the settings "
            f"it was written with, or start a new run with another --output_dir."
        )
    found = _file_digests(folder)
    damaged = [f"{name} is {'missing' if name not in found else 'not what was written'}"
               for name, digest in files.items() if found.get(name) != digest]
    if damaged:
        raise CheckpointError(
            f"Checkpoint {folder} is corrupt ({'; '.join(damaged)}); resume from an earlier checkpoint ({others}) or "
            f"delete this one."
        )
    try:
        accelerator.load_state(str(folder))
    except Exception as error:
        raise CheckpointError(
            f"Checkpoint {folder} is corrupt and could not be loaded ({type(error).__name__}: {error}); resume from "
            f"an earlier checkpoint ({others}) or delete this one."
        ) from error
    return state
