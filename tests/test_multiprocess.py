"""Two training processes on CPU (torchrun, gloo) against one process with the same effective batch."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import finish, save_tiny_classifier, start_no_trainer, tiny_run_flags


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


def _results(folder):
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return json.loads((folder / "all_results.json").read_text()), [entry["loss"] for entry in log if "loss" in entry]


def test_two_processes_match_one_process_with_accumulation(tmp_path):
    model_dir = save_tiny_classifier(tmp_path / "model")
    common = ["--max_train_samples", "48", "--max_train_steps", "4", "--per_device_train_batch_size", "4"]
    two = start_no_trainer(tiny_run_flags(model_dir, tmp_path / "two", *common), launcher=TORCHRUN)
    one = start_no_trainer(tiny_run_flags(model_dir, tmp_path / "one", *common, "--gradient_accumulation_steps", "2"))
    finish(two)
    finish(one)

    (two_results, two_losses), (one_results, one_losses) = _results(tmp_path / "two"), _results(tmp_path / "one")
    assert (two_results["num_processes"], one_results["num_processes"]) == (2, 1)
    assert two_results["total_train_batch_size"] == one_results["total_train_batch_size"] == 8
    assert two_results["train_steps"] == one_results["train_steps"] == 4
    # the same 8 augmented images make up each step, split over processes or over accumulation steps
    assert two_losses[0] == pytest.approx(one_losses[0], rel=1e-5)
    assert two_losses == pytest.approx(one_losses, rel=1e-4)
    assert two_results["eval_loss"] == pytest.approx(one_results["eval_loss"], rel=1e-4)
    two_weights = load_file(tmp_path / "two" / "model.safetensors")
    for name, weight in load_file(tmp_path / "one" / "model.safetensors").items():
        torch.testing.assert_close(two_weights[name], weight, rtol=1e-4, atol=1e-5)
