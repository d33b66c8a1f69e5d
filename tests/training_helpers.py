"""Helpers for the training tests: a tiny ClusTR classifier folder and running the example scripts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

DIGIT_LABELS = [str(digit) for digit in range(10)]


def save_tiny_classifier(folder: Path, image_size: int = 32, **overrides) -> Path:
    """A randomly initialised tiny ClusTR digit classifier with its image processor, saved as a model folder."""
    from clustr_hf import ClusTRForImageClassification
    from training_utils import default_image_processor

    config = tiny_config(
        num_labels=10, id2label=dict(enumerate(DIGIT_LABELS)), label2id={d: i for i, d in enumerate(DIGIT_LABELS)},
        **overrides,
    )
    ClusTRForImageClassification(config).save_pretrained(folder)
    default_image_processor(image_size).save_pretrained(folder)
    return folder


def tiny_run_flags(model_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    """Flags of a short no-trainer run of the tiny classifier on a slice of the digits, with the recipe's
    augmentations switched on (so that data order and augmentation seeds matter)."""
    return [
        "--model_name_or_path", str(model_dir), "--dataset_name", "digits", "--output_dir", str(output_dir),
        "--max_train_samples", "40", "--max_eval_samples", "16", "--per_device_eval_batch_size", "8",
        "--learning_rate", "3e-3", "--weight_decay", "0.05", "--lr_scheduler_type", "cosine",
        "--rand_augment_magnitude", "9", "--random_erasing_prob", "0.25", "--mixup_alpha", "0.8",
        "--cutmix_alpha", "1.0", "--label_smoothing", "0.1", "--logging_steps", "1", "--seed", "3", *extra,
    ]


def subprocess_env() -> dict:
    """The environment of a script run in a child process: this checkout first, offline, one thread."""
    return {
        **os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    }


def start_no_trainer(flags: list[str], launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start the accelerate script in a child process, optionally under a launcher such as torchrun."""
    command = [*launcher] if launcher else [sys.executable]
    command += [str(EXAMPLES / "run_image_classification_no_trainer.py"), *flags]
    return subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """Wait for a script started by `start_no_trainer`; fail with its output if it failed, else return its standard
    output and error."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{' '.join(process.args)} failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return stdout, stderr


def run_no_trainer(flags: list[str], launcher: tuple[str, ...] = ()) -> None:
    """Run the accelerate script in a child process to the end."""
    finish(start_no_trainer(flags, launcher))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny classifier folder (save_tiny_classifier) shared by a module's tests."""
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much to it when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
