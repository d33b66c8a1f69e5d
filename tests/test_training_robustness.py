"""Training on hostile input: images that do not decode, a missing data folder, a full disk, a model folder that does
not exist, both spellings of --output_dir, and a resumed run that logs the losses of an uninterrupted one."""

import argparse
import errno
import importlib
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import datasets
import pytest
import torch
from training_helpers import EXAMPLES, one_thread, tiny_model_dir, tiny_run_flags  # noqa: F401 (fixtures)

from training_utils import (
    DataArguments,
    TransformedImageDataset,
    load_digits_dataset,
    load_image_dataset,
    save_checkpoint,
)



def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _decompression_bomb_png(path: Path, side: int = 20000) -> None:
    """A small valid PNG file claiming side x side greyscale pixels (PIL refuses it on opening)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1))) + _png_chunk(b"IEND", b""))


def _image_folder(root: Path, count: int = 12) -> list[Path]:
    """`count` digits saved as class/index.png (PNG) and class/index.jpg (every third one) under root."""
    digits = load_digits_dataset()["train"]
    files = []
    for index in range(count):
        example = digits[index]
        folder = root / f"digit_{example['label']}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.{'jpg' if index % 3 == 0 else 'png'}"
        example["image"].resize((32, 32)).save(path)
        files.append(path)
    return files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bad_image_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """An image folder of 13 good images and 3 bad ones (a truncated PNG, a truncated JPEG, a 20000x20000 PNG);
    returns (good, bad)."""
    files = _image_folder(root, 15)
    bad = [files[1], files[3], files[0].with_name("bomb.png")]
    _truncate(bad[0])
    _truncate(bad[1])
    _decompression_bomb_png(bad[2])
    files.remove(bad[0])
    files.remove(bad[1])
    return files, bad


# ----------------------------------------------------------------------------------------------------------------------
# Images that do not decode


def test_images_that_do_not_decode_are_refused_by_name_or_left_out(tmp_path, caplog):
    good, bad = _bad_image_folder(tmp_path / "train")
    arguments = {"train_dir": str(tmp_path / "train"), "validation_dir": str(tmp_path / "train")}
    with pytest.raises(ValueError) as refusal:
        load_image_dataset(DataArguments(**arguments))
    assert "3 of the 16 images of the train split" in str(refusal.value)
    assert all(str(path) in str(refusal.value) for path in bad)
    assert not any(str(path) in str(refusal.value) for path in good)

    dataset = load_image_dataset(DataArguments(**arguments, skip_bad_images=True))
    assert len(dataset["train"]) == len(dataset["validation"]) == len(good) == 13
    assert all(str(path) in caplog.text for path in bad)
    assert all(example["image"].size == (32, 32) for example in dataset["train"])  # every image left decodes


def test_an_image_that_stops_decoding_later_is_named(tmp_path):
    files = _image_folder(tmp_path / "train", 4)
    split = load_image_dataset(DataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "train")))
    dataset = TransformedImageDataset(split["train"], lambda image: torch.zeros(1))
    paths = split["train"].cast_column("image", datasets.Image(decode=False))["image"]
    index = next(position for position, value in enumerate(paths) if value["path"] == str(files[2]))
    _truncate(files[2])  # replaced on disk after it was checked
    with pytest.raises(OSError, match=re.escape(str(files[2]))):
        dataset[index]


@pytest.mark.parametrize("script", ["run_image_classification_no_trainer", "run_image_classification"])
def test_training_counts_only_the_images_that_decode(script, tmp_path, tiny_model_dir):
    good, _ = _bad_image_folder(tmp_path / "train")
    _image_folder(tmp_path / "validation", 4)
    main = importlib.import_module(script).main
    flags = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "run"), "--train_dir",
             str(tmp_path / "train"), "--validation_dir", str(tmp_path / "validation"), "--skip_bad_images",
             "--per_device_train_batch_size", "13", "--per_device_eval_batch_size", "4", "--seed", "3",
             "--ignore_mismatched_sizes"]
    if script == "run_image_classification":
        flags += ["--do_train", "--max_steps", "1", "--report_to", "none", "--use_cpu", "--save_strategy", "no"]
    else:
        flags += ["--max_train_steps", "1"]
    results = main(flags)
    assert (results["train_samples"], results["eval_samples"]) == (len(good), 4)


# ----------------------------------------------------------------------------------------------------------------------
# Missing folders


@pytest.mark.parametrize("flag", ["train_dir", "validation_dir"])
def test_a_missing_or_empty_data_folder_is_named(flag, tmp_path):
    _image_folder(tmp_path / "images", 2)
    folders = {"train_dir": str(tmp_path / "images"), flag: str(tmp_path / "nope")}
    with pytest.raises(FileNotFoundError, match=f"--{flag} {re.escape(str(tmp_path / 'nope'))} does not exist"):
        load_image_dataset(DataArguments(**folders))
    (tmp_path / "empty" / "class").mkdir(parents=True)
    folders[flag] = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=f"--{flag} {re.escape(str(tmp_path / 'empty'))} holds no files"):
        load_image_dataset(DataArguments(**folders))


def test_export_names_a_model_folder_that_does_not_exist(tmp_path, monkeypatch, capsys):
    import export_onnx

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for missing in ("outputs/nope", "./nope", str(tmp_path / "nope"), "a/b/c"):
        with pytest.raises(SystemExit) as exit_status:
            export_onnx.parse_args(["--model_name_or_path", missing, "--output_dir", "out"])
        assert exit_status.value.code == 2
        assert f"--model_name_or_path {missing}: no such folder" in capsys.readouterr().err
    # what may be a Hub id, and a folder that exists, are left to from_pretrained
    assert export_onnx.parse_args(["--model_name_or_path", "someone/clustr-b0", "--output_dir", "out"])
    assert export_onnx.parse_args(["--model_name_or_path", "outputs", "--output_dir", "out"])


# ----------------------------------------------------------------------------------------------------------------------
# A full disk


class WritingAccelerator:
    """A one-process stand-in for accelerate's Accelerator whose `save_state` writes a file, then fails with
    `error`."""

    is_main_process = True

    def __init__(self, error: Exception):
        self.error = error

    def wait_for_everyone(self):
        pass

    def save_state(self, folder: str):
        Path(folder, "model.safetensors").write_bytes(b"\0" * 1000)
        raise self.error


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0; basic_ios::clear: iostream "
                 "error"),
])
def test_a_full_disk_during_a_checkpoint_is_named(error, tmp_path, monkeypatch):
    free = {"bytes": 0}
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=free["bytes"]))
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(OSError) as failure:
        save_checkpoint(WritingAccelerator(error), checkpoints, 3, {})
    assert failure.value.errno == errno.ENOSPC and failure.value.__cause__ is error
    assert f"The disk holding {checkpoints} is full" in str(failure.value) and "step_3" in str(failure.value)
    assert list(checkpoints.iterdir()) == []  # the partial checkpoint is removed, giving its space back

    free["bytes"] = 10 * 2**30  # with space left, a RuntimeError is not put down to the disk
    if isinstance(error, RuntimeError):
        with pytest.raises(RuntimeError) as failure:
            save_checkpoint(WritingAccelerator(error), checkpoints, 3, {})
        assert failure.value is error


def test_a_full_disk_during_a_trainer_checkpoint_is_named(tmp_path, tiny_model_dir, monkeypatch):
    from run_image_classification import main

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0; basic_ios::clear: "
                           "iostream error")

    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=4096))
    monkeypatch.setattr(torch, "save", full_disk)
    output = tmp_path / "trainer"
    with pytest.raises(OSError, match=f"The disk holding {re.escape(str(output))} is full") as failure:
        main(["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(output), "--do_train",
              "--max_train_samples", "8", "--max_steps", "1", "--per_device_train_batch_size", "8", "--save_strategy",
              "steps", "--save_steps", "1", "--report_to", "none", "--use_cpu"])
    assert failure.value.errno == errno.ENOSPC


# ----------------------------------------------------------------------------------------------------------------------
# Both spellings of --output_dir


SCRIPT_REQUIRED_FLAGS = {
    "demo": [],
    "export_onnx": ["--model_name_or_path", "someone/model"],
    "push_to_hub": ["source", "--repo-id", "someone/model"],
    "run_image_classification": [],
    "run_image_classification_no_trainer": [],
    "semantic_segmentation": [],
}
"""Every script of examples/ that takes --output_dir, with the other flags its parser requires."""


class Parsed(Exception):
    """Stops a script once its parser has read the flags."""


@pytest.mark.parametrize("spelling", ["--output_dir", "--output-dir"])
def test_every_script_that_takes_an_output_dir_takes_both_spellings(spelling, monkeypatch):
    scripts = {path.stem for path in EXAMPLES.glob("*.py")
               if re.search(r"--output[-_]dir", path.read_text()) and '__name__ == "__main__"' in path.read_text()}
    assert scripts == set(SCRIPT_REQUIRED_FLAGS)
    parse_known_args = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(parser, args=None, namespace=None):
        parsed, extra = parse_known_args(parser, args, namespace)
        if hasattr(parsed, "output_dir"):  # not the training scripts' early parse of --recipe
            raise Parsed(parsed.output_dir)
        return parsed, extra

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    for script, required in SCRIPT_REQUIRED_FLAGS.items():
        with pytest.raises(Parsed) as parsed:
            importlib.import_module(script).main([*required, spelling, "out"])
        assert str(parsed.value.args[0]) == "out", script


# ----------------------------------------------------------------------------------------------------------------------
# The logged losses of a resumed run


def _log_without_timing(folder: Path) -> list[dict]:
    timing = {"train_runtime", "train_cpu_time", "train_samples"}
    return [{key: value for key, value in json.loads(line).items() if key not in timing}
            for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_a_run_resumed_between_logged_losses_logs_the_same_losses(tmp_path, tiny_model_dir):
    from run_image_classification_no_trainer import main

    # losses are logged every 4 steps; the checkpoint of step 3 holds the running sum of steps 1-3
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    flags = tiny_run_flags(tiny_model_dir, uninterrupted, "--max_train_steps", "8", "--checkpointing_steps", "3",
                           "--per_device_train_batch_size", "8", "--logging_steps", "4")
    main(flags)
    shutil.copytree(uninterrupted / "checkpoints" / "step_3", resumed / "checkpoints" / "step_3")
    shutil.copy(uninterrupted / "train_log.jsonl", resumed)
    main([*flags, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    losses = [entry["loss"] for entry in _log_without_timing(uninterrupted) if "loss" in entry]
    assert len(losses) == 2
    assert [entry["loss"] for entry in _log_without_timing(resumed) if "loss" in entry] == losses
    assert _log_without_timing(resumed) == _log_without_timing(uninterrupted)
    assert (resumed / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()
