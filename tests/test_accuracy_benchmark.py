"""benchmarks/accuracy.py on a tiny Fashion-MNIST stand-in with tiny models: results, resume, report, evaluation."""

import collections
import gzip
import importlib.util
import json
import shutil
import statistics
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import PvtV2Config, PvtV2ForImageClassification


REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("accuracy_benchmark", REPO / "benchmarks" / "accuracy.py")
accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(accuracy)

TINY = "depths=[1,1,1,1]:hidden_sizes=[8,16,24,32]:num_attention_heads=[1,1,1,2]"
MODELS = ["--model", f"tiny_clustr=clustr:b0:{TINY}", "--model", f"tiny_pvt=pvt_v2:b0:{TINY}:sr_ratios=[4,2,1,1]"]
# 2 epochs of 4 steps of 5 images, the loss logged every 2 steps
SETTINGS = ["--seeds", "3", "--epochs", "2", "--train-samples", "20", "--test-samples", "10", "--image-size", "32",
            "--batch-size", "5", "--eval-batch-size", "4", "--logging-steps", "2"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def benchmark(tmp_path, monkeypatch):
    """Flags for a run on 60 + 30 random 28x28 'Fashion-MNIST' images (6 and 3 per class), in tmp folders."""
    rng = np.random.default_rng(0)
    data = tmp_path / "fashion"
    data.mkdir()
    for prefix, count in (("train", 60), ("t10k", 30)):
        _write_idx(data / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(data))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\n{accuracy.REPORT_BEGIN}\nold table\n{accuracy.REPORT_END}\n\nafter\n")
    folders = ["--output-dir", str(tmp_path / "outputs"), "--results-dir", str(tmp_path / "results")]
    return {"flags": [*MODELS, *SETTINGS, *folders], "folders": folders, "readme": readme,
            "outputs": tmp_path / "outputs", "results": tmp_path / "results"}


def _results(folder: Path) -> dict:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def _without_timing(results: dict) -> dict:
    timing = {"train_seconds", "train_cpu_seconds", "images_per_second"}
    kept = {key: value for key, value in results.items()
            if key not in ("seconds_per_epoch", "cpu_seconds_per_epoch", "images_per_second")}
    kept["epochs"] = [{key: value for key, value in epoch.items() if key not in timing} for epoch in results["epochs"]]
    return kept


def test_runs_resume_report_and_evaluate(benchmark, monkeypatch):
    accuracy.main(benchmark["flags"])
    results = _results(benchmark["results"])
    assert sorted(results) == ["tiny_clustr-seed3", "tiny_pvt-seed3"]

    pvt = results["tiny_pvt-seed3"]
    pvt_config = PvtV2Config(depths=[1] * 4, hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 2],
                             sr_ratios=[4, 2, 1, 1], drop_path_rate=0.1, num_labels=10)
    assert pvt["parameters"] == sum(p.numel() for p in PvtV2ForImageClassification(pvt_config).parameters())
    assert pvt["model"]["overrides"]["sr_ratios"] == [4, 2, 1, 1]
    for name, run in results.items():
        assert run["seed"] == 3 and run["test_images"] == 10 and run["evaluations"] == {}
        assert [epoch["epoch"] for epoch in run["epochs"]] == [1, 2]
        assert [epoch["step"] for epoch in run["epochs"]] == [4, 8]
        assert [entry["step"] for entry in run["loss_curve"]] == [2, 4, 6, 8]
        log = accuracy.read_log(benchmark["outputs"] / name)
        assert [epoch["test_top1"] for epoch in run["epochs"]] == [e["eval_accuracy"] for e in log if "eval_loss" in e]
        assert run["test_top1"] == run["epochs"][-1]["test_top1"]
        for epoch, losses in zip(run["epochs"], ([0, 1], [2, 3])):
            assert epoch["train_loss"] == pytest.approx(statistics.mean(run["loss_curve"][i]["loss"] for i in losses))
            assert round(10 * epoch["test_top1"], 6) in range(11) and epoch["train_images"] == 20
            assert epoch["images_per_second"] == pytest.approx(20 / epoch["train_seconds"])
        assert run["seconds_per_epoch"] == pytest.approx(statistics.median(e["train_seconds"] for e in run["epochs"]))
    # the same data order and schedule for both models: identical learning rates at every logged step
    assert [e["learning_rate"] for e in pvt["loss_curve"]] == [
        e["learning_rate"] for e in results["tiny_clustr-seed3"]["loss_curve"]]

    data = datasets.load_from_disk(str(benchmark["outputs"] / "data" / "fashion_mnist-train20-test10-subset0"))
    assert collections.Counter(data["train"]["label"]) == {label: 2 for label in range(10)}
    assert collections.Counter(data["test"]["label"]) == {label: 1 for label in range(10)}

    # finished runs are skipped
    monkeypatch.setattr(accuracy, "train_main", lambda argv: pytest.fail("a finished run was trained again"))
    accuracy.main(benchmark["flags"])
    assert _results(benchmark["results"]) == results
    with pytest.raises(ValueError, match="other settings"):
        accuracy.main([*benchmark["flags"], "--epochs", "3"])
    monkeypatch.undo()

    # a run killed during its second epoch continues from its first epoch's checkpoint to the same figures
    run_dir = benchmark["outputs"] / "tiny_clustr-seed3"
    (benchmark["results"] / "tiny_clustr-seed3.json").unlink()
    (run_dir / "model.safetensors").unlink()
    shutil.rmtree(run_dir / "checkpoints" / "step_8")
    accuracy.main(benchmark["flags"])
    resumed = _results(benchmark["results"])["tiny_clustr-seed3"]
    assert _without_timing(resumed) == _without_timing(results["tiny_clustr-seed3"])

    # trained models evaluated with settings that leave predictions unchanged give the trained figures
    accuracy.main([*benchmark["folders"], "--evaluate-with", "tiny_clustr", "cluster_chunk_size=3",
                   "--evaluate-with", "tiny_pvt"])
    results = _results(benchmark["results"])
    assert results["tiny_clustr-seed3"]["evaluations"]["cluster_chunk_size=3"]["test_top1"] == resumed["test_top1"]
    assert results["tiny_pvt-seed3"]["evaluations"]["as saved"]["test_top1"] == pvt["test_top1"]

    # random images teach nothing (top-1 10%): give the runs distinct final figures for the report to show
    for name, top1 in (("tiny_clustr-seed3", 0.8123), ("tiny_pvt-seed3", 0.7988)):
        results[name]["test_top1"] = results[name]["epochs"][-1]["test_top1"] = top1
        accuracy.write_json(benchmark["results"] / f"{name}.json", results[name])
    accuracy.main([*benchmark["folders"], "--report", "--readme", str(benchmark["readme"])])
    markdown = (benchmark["results"] / "report.md").read_text()
    rows = {cells[0]: cells for cells in (
        [cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()
        if line.startswith("| tiny_") and line.count("|") == 8)}
    for name in ("tiny_clustr", "tiny_pvt"):
        run = results[f"{name}-seed3"]
        table = rows[name]
        assert int(table[1].replace(",", "")) == run["parameters"]
        assert table[2] == f"{100 * run['test_top1']:.2f} (seed 3)"
        assert float(table[3]) == round(100 * run["test_top1"], 2)
        assert float(table[4]) == round(run["seconds_per_epoch"], 1)
        assert float(table[5]) == round(run["cpu_seconds_per_epoch"], 1)
        assert float(table[6]) == round(run["images_per_second"], 1)
    assert rows["tiny_clustr"][2:4] == ["81.23 (seed 3)", "81.23"]
    assert rows["tiny_pvt"][2:4] == ["79.88 (seed 3)", "79.88"]
    assert "tiny_clustr beats tiny_pvt: +1.35 points of mean test top-1, higher on 1 of 1 seeds." in markdown
    assert "| tiny_clustr | cluster_chunk_size=3 | 81.23 |" in markdown
    assert (benchmark["results"] / "accuracy_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = benchmark["readme"].read_text()
    assert "old table" not in readme and markdown in readme and readme.endswith("\n\nafter\n")

    # A run still going (a log with one evaluated epoch, no results JSON) is listed apart, never in the table.
    log = (benchmark["outputs"] / "tiny_pvt-seed3" / "train_log.jsonl").read_text().splitlines()
    first_evaluation = next(index for index, line in enumerate(log) if "eval_accuracy" in line)
    (benchmark["outputs"] / "tiny_pvt-seed4").mkdir()
    (benchmark["outputs"] / "tiny_pvt-seed4" / "train_log.jsonl").write_text("\n".join(log[: first_evaluation + 1]))
    accuracy.main([*benchmark["folders"], "--report", "--readme", str(benchmark["readme"]), "--epochs", "2"])
    markdown = (benchmark["results"] / "report.md").read_text()
    epoch_one = 100 * json.loads(log[first_evaluation])["eval_accuracy"]
    assert f"| tiny_pvt seed 4 (in progress) | 1/2 | {epoch_one:.2f} |" in markdown
    assert "tiny_clustr beats tiny_pvt: +1.35 points of mean test top-1, higher on 1 of 1 seeds." in markdown


def test_model_specs():
    spec = accuracy.ModelSpec.parse("pooled=clustr:b0:cluster_scales=[1]:hidden_act=relu:qkv_bias=false")
    assert (spec.name, spec.family, spec.variant) == ("pooled", "clustr", "b0")
    assert spec.overrides == {"cluster_scales": [1], "hidden_act": "relu", "qkv_bias": False}
    config = spec.config(drop_path_rate=0.2)
    assert config.cluster_scales == [1] and config.drop_path_rate == 0.2 and config.num_labels == 10
    assert accuracy.ModelSpec.parse("p=pvt_v2:b0:drop_path_rate=0").config(0.1).drop_path_rate == 0
    for text in ("clustr:b0", "x=vit:b0", "x=clustr", "x=clustr:b0:depths"):
        with pytest.raises(ValueError):
            accuracy.ModelSpec.parse(text)
    with pytest.raises(ValueError, match="Unknown PVTv2 variant"):
        accuracy.ModelSpec.parse("x=pvt_v2:b9").config(0.1)
