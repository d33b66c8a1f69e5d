"""Training: offline data, recipe flags, augmentation seeding, loss, metric, both example scripts, and checkpoints
that resume exactly, refuse to be overwritten and fail clearly when corrupt or incompatible."""

import gzip
import hashlib
import json
import math
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from training_helpers import (
    DIGIT_LABELS,
    REPO,
    finish,
    one_thread,  # noqa: F401 (a fixture)
    run_no_trainer,
    save_tiny_classifier,
    start_no_trainer,
    tiny_model_dir,  # noqa: F401 (a fixture)
    tiny_run_flags,
)

from clustr_hf import ClusTRForImageClassification
from training_utils import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    CheckpointError,
    DataArguments,
    EpochShuffledDataset,
    ImageCollator,
    ModelArguments,
    RecipeArguments,
    TransformedImageDataset,
    build_train_transform,
    class_names,
    classification_loss,
    default_image_processor,
    list_checkpoints,
    load_digits_dataset,
    load_fashion_mnist_dataset,
    load_image_dataset,
    load_top_k_accuracy,
    optimizer_parameter_groups,
    parse_arguments,
    read_idx,
    scheduler_kwargs,
)



# ----------------------------------------------------------------------------------------------------------------------
# Data


def test_digits_are_a_fixed_stratified_split_of_real_images():
    first, second = load_digits_dataset(), load_digits_dataset()
    assert (len(first["train"]), len(first["validation"])) == (1437, 360)
    assert first["validation"]["label"] == second["validation"]["label"]
    counts = np.bincount(first["validation"]["label"], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 36 +- 1 of each digit
    image = first["train"][0]["image"]
    assert image.size == (8, 8) and np.asarray(image).max() > 200  # real strokes, rescaled from 0..16 to 0..255
    assert class_names(first, "label") == DIGIT_LABELS


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_loads_from_idx_files(tmp_path):
    source = Path(FASHION_MNIST_DIR)
    for split, count in (("train", 30), ("t10k", 12)):
        images = read_idx(source / f"{split}-images-idx3-ubyte.gz")[:count]
        labels = read_idx(source / f"{split}-labels-idx1-ubyte.gz")[:count]
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    dataset = load_fashion_mnist_dataset(tmp_path)
    assert (len(dataset["train"]), len(dataset["test"])) == (30, 12)
    assert dataset["train"].features["label"].names == list(FASHION_MNIST_LABELS)
    np.testing.assert_array_equal(np.asarray(dataset["test"][5]["image"]), images[5])
    assert dataset["test"][5]["label"] == labels[5]
    # the script's view: the test split becomes the validation split
    saved = load_image_dataset(DataArguments(dataset_name=str(_saved(dataset, tmp_path / "saved"))))
    assert len(saved["validation"]) == 12


def _saved(dataset, folder: Path) -> Path:
    dataset.save_to_disk(folder)
    return folder


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist_dataset(tmp_path)


def test_imagefolder_and_saved_datasets(tmp_path, capfd, caplog):
    digits = load_digits_dataset()
    for split, source in (("train", digits["train"]), ("validation", digits["validation"])):
        for index in range(16):  # datasets shows its download bars from 16 files on
            example = source[index]
            folder = tmp_path / split / f"digit_{example['label']}"
            folder.mkdir(parents=True, exist_ok=True)
            example["image"].save(folder / f"{index}.png")
    capfd.readouterr()
    dataset = load_image_dataset(DataArguments(train_dir=str(tmp_path / "train"),
                                               validation_dir=str(tmp_path / "validation")))
    assert (len(dataset["train"]), len(dataset["validation"])) == (16, 16)
    assert "Downloading data" not in capfd.readouterr().err  # local files: nothing to download, no download bars
    names = class_names(dataset, "label")
    assert all(name.startswith("digit_") for name in names)
    assert set(names) == {f"digit_{label}" for split in ("train", "validation")
                          for label in digits[split][:16]["label"]}
    assert dataset["train"][0]["image"].size == (8, 8)

    saved = load_image_dataset(DataArguments(dataset_name=str(_saved(digits, tmp_path / "digits_saved")),
                                             max_train_samples=20))
    assert len(saved["train"]) == 20 and len(saved["validation"]) == 360
    everything = load_image_dataset(DataArguments(max_train_samples=5000))
    assert len(everything["train"]) == 1437 and "--max_train_samples 5000 is more than the 1437 images" in caplog.text

    with pytest.raises(ValueError, match="--label_column_name"):
        load_image_dataset(DataArguments(label_column_name="digit"))
    with pytest.raises(ValueError, match="--train_dir"):
        load_image_dataset(DataArguments(dataset_name=str(tmp_path / "train")))


@pytest.mark.parametrize("script", ["run_image_classification", "run_image_classification_no_trainer"])
def test_help_lists_every_flag(script, capsys):
    import dataclasses
    import importlib

    from transformers import TrainingArguments

    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_status:
        module.main(["--help"])
    assert exit_status.value.code == 0
    listed = capsys.readouterr().out
    script_flags = TrainingArguments if script == "run_image_classification" else module.LoopArguments
    for arguments in (ModelArguments, DataArguments, RecipeArguments, script_flags):
        missing = [field.name for field in dataclasses.fields(arguments)
                   if field.init and f"--{field.name} " not in listed and f"--{field.name}\n" not in listed]
        assert not missing, f"--help does not list {missing}"


@pytest.mark.parametrize("script, flags, message", [
    ("run_image_classification_no_trainer", ["--gradient_accumulation_steps", "0"],
     "--gradient_accumulation_steps 0 must be at least 1"),
    ("run_image_classification", ["--gradient_accumulation_steps", "0"],
     "--gradient_accumulation_steps 0 must be at least 1"),
    ("run_image_classification_no_trainer", ["--image_size", "0"], "--image_size 0 must be at least 1"),
    ("run_image_classification", ["--max_steps", "0"], "--max_steps 0 would train nothing"),
    ("run_image_classification_no_trainer", ["--model_name_or_path", "b9"],
     "'b9' is not a variant \\(b0, b1, b2, b3\\), folder or cached Hub id"),
])
def test_bad_flags_are_named(script, flags, message, tmp_path):
    import importlib

    main = importlib.import_module(script).main
    with pytest.raises((ValueError, OSError), match=message):
        main(["--output_dir", str(tmp_path / "out"), "--max_train_samples", "8", "--do_train", *flags]
             if script == "run_image_classification" else ["--output_dir", str(tmp_path / "out"), *flags])


TORCH_IMPORT_PROBE = """
import importlib.abc, os, runpy, sys
class TorchImported(BaseException):  # not an Exception: nothing on the way may swallow it
    pass
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise TorchImported(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Probe())
sys.path.insert(0, os.path.dirname(sys.argv[1]))
try:
    runpy.run_path(sys.argv[1], run_name="probed")
except TorchImported as stop:
    print(stop.args[0])
"""
"""Imports a script up to its first import of torch and prints OMP_WAIT_POLICY as it is then."""


@pytest.mark.parametrize("script", ["examples/demo.py", "examples/run_image_classification.py",
                                    "examples/run_image_classification_no_trainer.py",
                                    "examples/semantic_segmentation.py", "benchmarks/accuracy.py"])
def test_scripts_let_idle_openmp_threads_sleep_unless_told_otherwise(script):
    import os
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        policy = {} if given is None else {"OMP_WAIT_POLICY": given}
        completed = subprocess.run([sys.executable, "-c", TORCH_IMPORT_PROBE, str(REPO / script)],
                                   env={**environment, **policy}, capture_output=True, text=True, timeout=120)
        assert completed.stdout.splitlines() == [expected], completed.stderr


# ----------------------------------------------------------------------------------------------------------------------
# Recipe, transforms, sampling, loss, metric


def test_recipe_sets_defaults_that_explicit_flags_override():
    from run_image_classification_no_trainer import LoopArguments

    model, _, recipe, loop = parse_arguments(
        [ModelArguments, DataArguments, RecipeArguments, LoopArguments],
        ["--recipe", "imagenet", "--output_dir", "out", "--label_smoothing", "0.2"],
    )
    assert (loop.learning_rate, recipe.lr_base_batch_size, loop.weight_decay) == (5e-4, 512, 0.05)
    assert (loop.lr_scheduler_type, recipe.min_learning_rate, recipe.warmup_start_learning_rate,
            recipe.warmup_epochs, loop.num_train_epochs) == ("cosine_warmup_with_min_lr", 1e-5, 1e-6, 5, 300)
    assert (recipe.rand_augment_magnitude, recipe.random_erasing_prob, recipe.mixup_alpha, recipe.cutmix_alpha,
            recipe.repeated_augmentations, model.image_size) == (9, 0.25, 0.8, 1.0, 3, 224)
    assert recipe.label_smoothing == 0.2  # the explicit flag wins
    assert loop.max_grad_norm == 0.0  # clipping is for b3 only
    *_, b3_loop = parse_arguments([ModelArguments, DataArguments, RecipeArguments, LoopArguments],
                                  ["--recipe", "imagenet", "--model_name_or_path", "b3", "--output_dir", "out"])
    assert b3_loop.max_grad_norm == 1.0

    from transformers import TrainingArguments

    *_, training = parse_arguments([ModelArguments, DataArguments, RecipeArguments, TrainingArguments],
                                   ["--recipe", "imagenet", "--output_dir", "out"])
    assert (training.learning_rate, training.weight_decay, training.num_train_epochs) == (5e-4, 0.05, 300)
    with pytest.raises(ValueError, match="Unknown recipe"):
        parse_arguments([RecipeArguments], ["--recipe", "cifar"])


def test_trainer_script_keeps_the_flags_given_and_refuses_those_it_cannot_follow(tmp_path):
    from run_image_classification import fill_in_settings, main
    from transformers import TrainingArguments

    from training_utils import explicit_flags

    types = [ModelArguments, DataArguments, RecipeArguments, TrainingArguments]

    def settings(*flags):  # the TrainingArguments main trains with, for 64 training images
        argv = ["--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "8", *flags]
        _, _, recipe, training = parse_arguments(types, argv)
        fill_in_settings(training, recipe, explicit_flags(types, argv), 64)
        return training

    recipe = settings("--recipe", "imagenet")  # 5 warm-up epochs of 8 steps
    assert (recipe.warmup_steps, recipe.lr_scheduler_kwargs) == (40, {"min_lr": 1e-5, "warmup_lr_rate": 1e-6 / 5e-4})
    assert (recipe.train_sampling_strategy, recipe.remove_unused_columns, recipe.dataloader_pin_memory) == (
        "sequential", False, torch.accelerator.is_available())  # no memory to pin for without an accelerator
    given = settings("--recipe", "imagenet", "--warmup_steps", "7", "--lr_scheduler_kwargs", '{"min_lr": 1e-4}',
                     "--dataloader_pin_memory", "True", "--train_sampling_strategy", "sequential")
    assert (given.warmup_steps, given.lr_scheduler_kwargs["min_lr"], given.dataloader_pin_memory) == (7, 1e-4, True)
    assert settings("--warmup_steps", "7", "--warmup_epochs", "0").warmup_steps == 7  # 0 is the flag's only default

    for flags, message in [
        (["--remove_unused_columns", "True"], "--remove_unused_columns True does not work .*image column"),
        (["--train_sampling_strategy", "random"], "--train_sampling_strategy random does not work .*shuffles itself"),
        (["--warmup_epochs", "2", "--warmup_steps", "7"], "--warmup_steps and --warmup_epochs both"),
        (["--min_learning_rate", "1e-5", "--lr_scheduler_kwargs", '{"min_lr": 1e-4}'],
         "--lr_scheduler_kwargs sets min_lr and --min_learning_rate sets it too"),
    ]:
        with pytest.raises(ValueError, match=message):  # before any data or model is loaded
            main(["--output_dir", str(tmp_path / "refused"), "--do_train", "--dataset_name", "nowhere", *flags])
    assert not (tmp_path / "refused").exists()


def test_warmup_from_start_rate_then_cosine_to_min_rate():
    from transformers import get_scheduler

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=4e-4)
    recipe = RecipeArguments(min_learning_rate=1e-5, warmup_start_learning_rate=1e-6)
    scheduler = get_scheduler("cosine_warmup_with_min_lr", optimizer, num_warmup_steps=10, num_training_steps=110,
                              scheduler_specific_kwargs=scheduler_kwargs("cosine_warmup_with_min_lr", 4e-4, recipe))
    rates = []
    for _ in range(110):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-6)
    assert rates[9] == pytest.approx(4e-4)  # the warm-up reaches the peak on its last step
    assert rates[-1] == pytest.approx(1e-5, rel=0.01)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    with pytest.raises(ValueError, match="--min_learning_rate"):
        scheduler_kwargs("cosine_with_min_lr", 4e-4, RecipeArguments())


def test_no_weight_decay_on_biases_and_norms():
    from conftest import tiny_config

    model = ClusTRForImageClassification(tiny_config())
    decay, no_decay = optimizer_parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {
        name for name, p in model.named_parameters() if name.endswith("bias") or "layer_norm" in name
    }
    assert all(p.dim() >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


class EchoKeys:
    """A stand-in training set of `size` images whose item is the key it is read with."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        return key


def test_training_set_orders_each_epoch_and_repeats():
    epochs = EpochShuffledDataset(EchoKeys(10), seed=1)
    first = epochs.epoch_keys()
    assert [epochs[position] for position in range(10)] == first
    assert EpochShuffledDataset(EchoKeys(10), seed=1).epoch_keys() == first
    assert sorted(index for index, _ in first) == list(range(10))
    epochs.set_epoch(1)
    assert [index for index, _ in epochs.epoch_keys()] != [index for index, _ in first]

    repeated = EpochShuffledDataset(EchoKeys(12), seed=1, repeats=3).epoch_keys()
    assert len(repeated) == 12
    for position in range(0, 12, 3):
        triple = repeated[position : position + 3]
        assert len({index for index, _ in triple}) == 1 and len({seed for _, seed in triple}) == 3
    assert len({index for index, _ in repeated}) == 4


def test_augmentation_depends_only_on_the_sample_seed():
    processor = default_image_processor(32)
    recipe = RecipeArguments(rand_augment_magnitude=9, random_erasing_prob=0.5, color_jitter=0.4)
    dataset = TransformedImageDataset(load_digits_dataset()["train"], build_train_transform(recipe, processor))
    state = torch.get_rng_state()
    a, b, c = dataset[(3, 1234)], dataset[(3, 1234)], dataset[(3, 99)]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert a["pixel_values"].shape == (3, 32, 32) and a["labels"] == dataset.dataset[3]["label"]
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert not torch.equal(a["pixel_values"], c["pixel_values"])

    collate = ImageCollator(10, mixup_alpha=0.8, cutmix_alpha=1.0)
    batch = collate([dataset[(index, 7 + index)] for index in range(6)])
    again = collate([dataset[(index, 7 + index)] for index in range(6)])
    assert batch["labels"].shape == (6, 10)
    torch.testing.assert_close(batch["labels"].sum(1), torch.ones(6))
    assert torch.equal(batch["pixel_values"], again["pixel_values"]) and torch.equal(batch["labels"], again["labels"])
    plain = ImageCollator(10)([dataset[3], dataset[4]])
    assert plain["labels"].tolist() == [dataset.dataset[3]["label"], dataset.dataset[4]["label"]]


def test_classification_loss_on_indices_and_soft_targets():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    expected = -torch.log_softmax(logits, -1)[[0, 1], [0, 2]]
    torch.testing.assert_close(classification_loss(logits, labels), expected.mean())
    torch.testing.assert_close(classification_loss(logits, labels, num_samples=4), expected.sum() / 4)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(classification_loss(logits, one_hot, 0.1), classification_loss(logits, labels, 0.1))
    smoothed = -(torch.log_softmax(logits, -1) * (one_hot * 0.9 + 0.1 / 3)).sum(-1).mean()
    torch.testing.assert_close(classification_loss(logits, labels, 0.1), smoothed)


def test_top_k_accuracy_metric_loads_offline():
    metric = load_top_k_accuracy()
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.3, 0.2, 0.5, 0.4], [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.0],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    ranked = logits.topk(5).indices
    results = metric.compute(predictions=ranked.numpy(), references=[1, 5, 0])
    assert results == {"accuracy": pytest.approx(1 / 3), "top5_accuracy": pytest.approx(2 / 3)}


# ----------------------------------------------------------------------------------------------------------------------
# The scripts


def _state_dict(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def test_no_trainer_script_trains_and_saves_a_pipeline_ready_folder(tmp_path, tiny_model_dir):
    from run_image_classification_no_trainer import main
    from transformers import pipeline

    output = tmp_path / "run"
    results = main(tiny_run_flags(tiny_model_dir, output, "--recipe", "imagenet", "--image_size", "32",
                                  "--max_train_steps", "6", "--per_device_train_batch_size", "8",
                                  "--gradient_accumulation_steps", "2", "--with_tracking"))
    assert results["train_steps"] == 6 and results["total_train_batch_size"] == 16
    assert results["learning_rate"] == pytest.approx(3e-3 * 16 / 512)  # the recipe's linear scaling rule
    assert 0 <= results["eval_accuracy"] <= results["eval_top5_accuracy"] <= 1 and math.isfinite(results["eval_loss"])
    assert json.loads((output / "all_results.json").read_text()) == results
    # what a model card needs: the data (the bundled digits, named with their source), the base model, the sample
    # counts and the settings that matter
    assert (results["train_samples"], results["eval_samples"]) == (40, 16)
    assert (results["data"]["kind"], results["data"]["name"], results["data"]["evaluation_split"]) == (
        "bundled", "scikit-learn digits", "validation")
    assert (results["from_scratch"], results["base_model"], results["base_model_is_local"]) == (
        False, str(tiny_model_dir), True)
    assert results["hyperparameters"] == {
        "learning_rate": pytest.approx(3e-3 * 16 / 512), "lr_scheduler_type": "cosine",
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "total_train_batch_size": 16,
        "num_train_epochs": 2, "max_steps": 6, "weight_decay": 0.05, "warmup_steps": 15, "max_grad_norm": 0.0,
        "seed": 3, "label_smoothing": 0.1, "drop_path_rate": 0.0, "crop_scale_min": 0.08, "horizontal_flip_prob": 0.5,
        "rand_augment_magnitude": 9, "rand_augment_num_ops": 2, "color_jitter": 0.0, "random_erasing_prob": 0.25,
        "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mixup_switch_prob": 0.5, "repeated_augmentations": 3,
        "image_size": 32,
    }
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    epochs = [entry for entry in log if "eval_accuracy" in entry]
    assert [entry["train_samples"] for entry in epochs] == [40, 40]  # 6 steps: 2 epochs of 5 batches of 8
    assert all(entry["train_runtime"] > 0 and entry["train_cpu_time"] > 0 for entry in epochs)
    before, after = _state_dict(tiny_model_dir), _state_dict(output)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert list((output / "tensorboard").rglob("events.out.tfevents.*"))
    assert json.loads((output / "preprocessor_config.json").read_text())["size"] == {"shortest_edge": 32}

    classifier = pipeline("image-classification", model=str(output))
    image = load_digits_dataset()["validation"][0]["image"].convert("RGB")
    predictions = classifier(image, top_k=3)
    assert len(predictions) == 3 and {p["label"] for p in predictions} <= set(DIGIT_LABELS)
    assert sum(p["score"] for p in predictions) <= 1 + 1e-6


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_trainer_script_trains_with_the_recipe_pieces_and_resumes_exactly(tmp_path, tiny_model_dir, recwarn):
    from run_image_classification import main

    output = tmp_path / "trainer"
    flags = [
        "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(output), "--do_train", "--do_eval",
        "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "4", "--per_device_train_batch_size",
        "4", "--gradient_accumulation_steps", "2", "--learning_rate", "2e-3", "--lr_base_batch_size", "4",
        "--lr_scheduler_type", "cosine_warmup_with_min_lr", "--min_learning_rate", "1e-5",
        "--warmup_start_learning_rate", "1e-6", "--warmup_epochs", "0.5", "--mixup_alpha", "0.8", "--cutmix_alpha",
        "1.0", "--label_smoothing", "0.1", "--rand_augment_magnitude", "9", "--repeated_augmentations", "2",
        "--drop_path_rate", "0.2", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
        "--report_to", "none", "--use_cpu",
    ]
    metrics = main(flags)
    assert 0 <= metrics["eval_accuracy"] <= metrics["eval_top5_accuracy"] <= 1
    assert not [warning for warning in recwarn if "pin_memory" in str(warning.message)]  # no pinning on a CPU
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    # soft Mixup/CutMix targets are averaged per sample, not per label entry: the loss starts near ln(10)
    assert len(losses) == 4 and 1.5 < losses[0] < 3.5
    # 4 optimizer steps per epoch, so 2 warm-up steps from 1e-6 up to 2e-3 x total batch 8 / base 4
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    assert rates[:2] == [pytest.approx(1e-6), pytest.approx(4e-3)]
    assert (output / "model.safetensors").is_file() and (output / "preprocessor_config.json").is_file()
    results = json.loads((output / "all_results.json").read_text())
    assert results == metrics and (results["train_samples"], results["eval_samples"]) == (32, 16)
    assert results["base_model"] == str(tiny_model_dir) and results["hyperparameters"]["max_steps"] == 4
    assert results["hyperparameters"]["learning_rate"] == pytest.approx(4e-3)
    card = ModelCard.load(output / "README.md")  # clustr_hf's card: a local base model is no Hub link
    assert card.data.base_model is None and str(tiny_model_dir) not in card.content
    uninterrupted = _digest(output / "model.safetensors")

    with pytest.raises(CheckpointError, match="checkpoint-2, .*checkpoint-4.* would overwrite"):
        main(flags)
    # stopped while writing its final model or results: the last checkpoint is all that is left to resume from
    stopped = tmp_path / "stopped"
    shutil.copytree(output / "checkpoint-4", stopped / "checkpoint-4")
    stopped_flags = [*flags, "--output_dir", str(stopped), "--resume_from_checkpoint", "latest"]
    main(stopped_flags)
    assert json.loads((stopped / "trainer_state.json").read_text())["global_step"] == 4
    assert _digest(stopped / "model.safetensors") == uninterrupted
    (stopped / "checkpoint-4" / "rng_state.pth").unlink()
    with pytest.raises(CheckpointError, match="checkpoint-4 lacks rng_state.pth"):
        main(stopped_flags)

    # a checkpoint without trainer_state.json (Trainer writes it last) is a partial write: 'latest' skips it
    (output / "checkpoint-4" / "trainer_state.json").unlink()
    main([*flags, "--resume_from_checkpoint", "latest"])
    resumed = json.loads((output / "trainer_state.json").read_text())
    assert resumed["global_step"] == 4
    assert [entry["step"] for entry in resumed["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert _digest(output / "model.safetensors") == uninterrupted  # byte for byte
    (output / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2,')
    with pytest.raises(CheckpointError, match="(?s)checkpoint-2/trainer_state.json is corrupt.*checkpoint-4"):
        main([*flags, "--resume_from_checkpoint", str(output / "checkpoint-2")])


def _log_without_timing(folder: Path) -> list[dict]:
    """The training log but for the timing of each epoch, which covers the images trained since the process started
    it (a resumed one differs)."""
    timing = {"train_runtime", "train_cpu_time", "train_samples"}
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{key: value for key, value in entry.items() if key not in timing} for entry in log]


def _same_run(first: Path, second: Path) -> bool:
    """Whether two runs end with the same weights (byte for byte), results and log (nothing lost, nothing twice)."""
    return ((first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
            and json.loads((first / "all_results.json").read_text()) == json.loads(
                (second / "all_results.json").read_text())
            and _log_without_timing(first) == _log_without_timing(second))


def _checkpoint_run_flags(model_dir, output, *extra):
    return tiny_run_flags(model_dir, output, "--max_train_steps", "24", "--checkpointing_steps", "3",
                          "--per_device_train_batch_size", "4", "--drop_path_rate", "0.2", *extra)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    model_dir = save_tiny_classifier(tmp_path / "model")
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    reference = start_no_trainer(_checkpoint_run_flags(model_dir, uninterrupted))
    process = start_no_trainer(_checkpoint_run_flags(model_dir, interrupted))
    try:
        deadline = time.monotonic() + 300
        while not list_checkpoints(interrupted / "checkpoints") and time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.communicate()
        _, log = finish(reference)
    assert not (interrupted / "model.safetensors").exists(), "the run finished before it was killed"
    steps = [step for step, _ in list_checkpoints(interrupted / "checkpoints")]
    assert steps and max(steps) < 24

    run_no_trainer(_checkpoint_run_flags(model_dir, interrupted, "--resume_from_checkpoint", "latest"))
    assert _same_run(uninterrupted, interrupted)
    # the evaluation lines start lines of their own, above the progress bar (whose redraws start with a carriage
    # return), rather than being glued to the bar's line
    evaluations = [line for line in re.split(r"[\r\n]", log) if "epoch 0: eval_accuracy" in line]
    assert evaluations and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO ", line) for line in evaluations)


def _digests(folder: Path) -> dict:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _resume_after_the_last_checkpoint(finished: Path, stopped: Path, flags: list[str]) -> dict:
    """Resume a copy of a finished run's checkpoints and log, as a run stopped after its last checkpoint (during the
    final evaluation or save) leaves them; returns the resumed run's results."""
    from run_image_classification_no_trainer import main

    shutil.copytree(finished / "checkpoints", stopped / "checkpoints")
    shutil.copy(finished / "train_log.jsonl", stopped)
    return main([*flags, "--output_dir", str(stopped), "--resume_from_checkpoint", "latest"])


def test_a_run_stopped_after_its_last_checkpoint_resumes_without_training_further(tmp_path, tiny_model_dir):
    from run_image_classification_no_trainer import main

    # 5 steps of 8 of the 40 images: the last checkpoint closes the only epoch, after its evaluation
    finished = tmp_path / "finished"
    flags = tiny_run_flags(tiny_model_dir, finished, "--max_train_steps", "5", "--checkpointing_steps", "5",
                           "--per_device_train_batch_size", "8")
    main(flags)
    resumed = _resume_after_the_last_checkpoint(finished, tmp_path / "stopped", flags)
    assert resumed["train_steps"] == 5 and "eval_accuracy" in resumed
    assert _same_run(finished, tmp_path / "stopped")


def test_bad_checkpoints_fail_clearly_and_nothing_is_overwritten(tmp_path, tiny_model_dir):
    from run_image_classification_no_trainer import main

    output = tmp_path / "run"
    flags = tiny_run_flags(tiny_model_dir, output, "--max_train_steps", "4", "--checkpointing_steps", "2",
                           "--per_device_train_batch_size", "8")
    main(flags)
    checkpoints = output / "checkpoints"
    assert [step for step, _ in list_checkpoints(checkpoints)] == [2, 4]
    # the last checkpoint is mid-epoch (step 4 of 5): resumed, only the final evaluation and save are left
    resumed = _resume_after_the_last_checkpoint(output, tmp_path / "stopped", flags)
    assert resumed["train_steps"] == 4 and _same_run(output, tmp_path / "stopped")

    with pytest.raises(CheckpointError, match="would overwrite"):
        main(flags)
    with pytest.raises(CheckpointError, match="per_device_train_batch_size is 8 in the checkpoint but 4 now"):
        main([*flags[:-2], "--per_device_train_batch_size", "4", "--resume_from_checkpoint", "latest"])
    with pytest.raises(ValueError, match="--max_train_steps 0 must be at least 1"):  # not: the whole schedule
        main([*flags, "--max_train_steps", "0"])

    (checkpoints / "step_4" / "model.safetensors").write_bytes(b"not a safetensors file")
    random_states = checkpoints / "step_2" / "random_states_0.pkl"
    random_states.write_bytes(random_states.read_bytes()[:-10])
    before = _digests(output)
    with pytest.raises(CheckpointError, match="(?s)step_4 is corrupt.*model.safetensors is not what was written"):
        main([*flags, "--resume_from_checkpoint", "latest"])
    with pytest.raises(CheckpointError, match="(?s)step_2 is corrupt.*random_states_0.pkl is not what was written"):
        main([*flags, "--resume_from_checkpoint", str(checkpoints / "step_2")])
    (checkpoints / "step_6.partial").mkdir()
    with pytest.raises(CheckpointError, match="step_6.partial is not a complete checkpoint.*step_2.*step_4"):
        main([*flags, "--resume_from_checkpoint", str(checkpoints / "step_6.partial")])
    assert _digests(output) == before  # the failed resumes wrote nothing

    random_states.unlink()
    with pytest.raises(CheckpointError, match="random_states_0.pkl is missing"):
        main([*flags, "--resume_from_checkpoint", str(checkpoints / "step_2")])
    (checkpoints / "step_4" / "training_state.json").unlink()
    with pytest.raises(CheckpointError, match="step_4 lack.* training_state.json.* Delete it"):
        main([*flags, "--resume_from_checkpoint", "latest"])
