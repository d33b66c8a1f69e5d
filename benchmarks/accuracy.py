#!/usr/bin/env python
"""ClusTR against PVTv2 on Fashion-MNIST, trained the same way: test top-1, time per epoch and throughput.

Every run (a named model and a seed) is one run of `examples/run_image_classification_no_trainer.py` with the same
recipe, data subset, data order, image size, epochs and batch size; only the model configuration differs. Runs are
resumable (restarted, a run continues from its last epoch checkpoint; finished runs are skipped) and each writes a
results JSON, from which `--report` writes the table and learning curves.

    python benchmarks/accuracy.py --seeds 0 1                     # train every model with every seed
    python benchmarks/accuracy.py --model clustr_b0_fast=clustr:b0:cluster_chunk_size=64 --seeds 0
    python benchmarks/accuracy.py --evaluate-with clustr_b0 cluster_chunk_size=64   # trained model, new settings
    python benchmarks/accuracy.py --report                        # table, curves and the README section
"""

import argparse
import json
import os
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))  # passive_openmp, the training scripts and their training_utils
import passive_openmp  # noqa: E402, F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoModelForImageClassification, PvtV2Config

from clustr_hf import ClusTRConfig
from clustr_hf.atomic import atomic_folder
from run_image_classification_no_trainer import evaluate_model, main as train_main  # noqa: E402
from training_utils import (  # noqa: E402
    FASHION_MNIST_LABELS,
    ImageCollator,
    TransformedImageDataset,
    build_eval_transform,
    list_checkpoints,
    load_fashion_mnist_dataset,
    load_top_k_accuracy,
)


DEFAULT_MODELS = (
    "clustr_b0=clustr:b0",
    # PvtV2Config's defaults are PVTv2-b0; stage 1's spatial reduction 4 instead of 8 brings its 3.41M parameters to
    # 3.31M, within 10% of ClusTR-b0's 3.07M (ClusTR has no spatial-reduction convolutions)
    "pvt_v2_b0_sr4=pvt_v2:b0:sr_ratios=[4,4,2,1]",
)
PVT_V2_VARIANTS = {"b0": {}}
"""PVTv2 variants by name: the configuration fields that differ from PvtV2Config's defaults."""
RECIPE = {
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "lr_scheduler_type": "cosine_warmup_with_min_lr",
    "warmup_epochs": 1,
    "warmup_start_learning_rate": 1e-6,
    "min_learning_rate": 1e-5,
    "label_smoothing": 0.1,
    "crop_scale_min": 0.7,
    "horizontal_flip_prob": 0.5,
    "mixed_precision": "no",
}
"""The training recipe of every run: flags of the no-trainer script (a light version of docs/algorithm.md section 6)."""
REPORT_BEGIN, REPORT_END = "<!-- accuracy-report:begin -->", "<!-- accuracy-report:end -->"


@dataclass(frozen=True)
class ModelSpec:
    """A named model: `NAME=FAMILY:VARIANT[:key=value...]`, FAMILY `clustr` or `pvt_v2`, values JSON or strings."""

    name: str
    family: str
    variant: str
    overrides: dict

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        name, _, description = text.partition("=")
        family, _, rest = description.partition(":")
        variant, *assignments = rest.split(":")
        if not re.fullmatch(r"[\w.-]+", name) or family not in ("clustr", "pvt_v2") or not variant:
            raise ValueError(f"--model {text!r} must look like NAME=clustr:b0 or NAME=pvt_v2:b0:key=value:...")
        return cls(name, family, variant, parse_overrides(assignments))

    def config(self, drop_path_rate: float):
        """The model's configuration for Fashion-MNIST's classes, with the run's drop path unless overridden."""
        overrides = {"drop_path_rate": drop_path_rate, **self.overrides}
        if self.family == "clustr":
            config = ClusTRConfig.from_variant(self.variant, **overrides)
        elif self.variant in PVT_V2_VARIANTS:
            config = PvtV2Config(**{**PVT_V2_VARIANTS[self.variant], **overrides})
        else:
            raise ValueError(f"Unknown PVTv2 variant {self.variant!r}; known: {', '.join(PVT_V2_VARIANTS)}.")
        config.id2label = dict(enumerate(FASHION_MNIST_LABELS))
        config.label2id = {label: index for index, label in config.id2label.items()}
        return config


def parse_overrides(assignments) -> dict:
    """`key=value` strings as a dict; a value is read as JSON when it parses (numbers, lists, booleans), else text."""
    overrides = {}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator or not key:
            raise ValueError(f"{assignment!r} is not a key=value override.")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    return overrides


def overrides_label(overrides: dict) -> str:
    """`key=value ...` in key order, or 'as saved' for no overrides."""
    return " ".join(f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                    for key, value in sorted(overrides.items())) or "as saved"


@dataclass(frozen=True)
class Settings:
    """What every run shares: the data, its size and the training length (the recipe is `RECIPE`)."""

    epochs: int
    train_samples: int
    test_samples: int | None
    subset_seed: int
    image_size: int
    batch_size: int
    eval_batch_size: int
    drop_path_rate: float
    logging_steps: int

    def data_name(self) -> str:
        test = "all" if self.test_samples is None else self.test_samples
        return f"fashion_mnist-train{self.train_samples}-test{test}-subset{self.subset_seed}"


def class_balanced_indices(labels, count: int, seed: int) -> list[int]:
    """`count` indices with the same number of each class, drawn with `seed`, in increasing order."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if count % len(classes):
        raise ValueError(f"{count} samples cannot be split evenly over {len(classes)} classes.")
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == label))[: count // len(classes)] for label in classes]
    if any(len(indices) < count // len(classes) for indices in chosen):
        raise ValueError(f"Some class has fewer than {count // len(classes)} samples.")
    return sorted(np.concatenate(chosen).tolist())


def prepare_data(settings: Settings, output_dir: Path) -> Path:
    """The fixed data of every run, saved once with save_to_disk: a class-balanced training subset of Fashion-MNIST
    and its test split (whole, or a class-balanced subset), both drawn with the subset seed."""
    folder = output_dir / "data" / settings.data_name()
    if (folder / "dataset_dict.json").is_file():
        return folder
    full = load_fashion_mnist_dataset()
    splits = {"train": (full["train"], settings.train_samples), "test": (full["test"], settings.test_samples)}
    subset = datasets.DatasetDict({
        name: split if count is None else split.select(class_balanced_indices(split["label"], count,
                                                                                settings.subset_seed))
        for name, (split, count) in splits.items()
    })
    try:
        with atomic_folder(folder) as partial:
            subset.save_to_disk(str(partial))
    except OSError:  # another process saved the same data first
        if not (folder / "dataset_dict.json").is_file():
            raise
    return folder


def parameter_count(config) -> int:
    return sum(parameter.numel() for parameter in AutoModelForImageClassification.from_config(config).parameters())


def training_flags(settings: Settings, data_dir: Path, config_dir: Path, run_dir: Path, seed: int) -> list[str]:
    """The no-trainer script's flags for one run: everything but the model configuration is the same for all."""
    flags = {
        "config_name": config_dir, "dataset_name": data_dir, "output_dir": run_dir, "seed": seed,
        "image_size": settings.image_size, "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.batch_size, "per_device_eval_batch_size": settings.eval_batch_size,
        "checkpointing_steps": "epoch", "logging_steps": settings.logging_steps, **RECIPE,
    }
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def summarize(log: list[dict]) -> dict:
    """Per-epoch figures and the loss curve from a run's train_log.jsonl. An epoch's training loss is the mean over
    its steps of the logged losses (each the mean over the steps since the previous log line)."""
    losses = [entry for entry in log if "loss" in entry]
    epochs = []
    for entry in (entry for entry in log if "eval_accuracy" in entry):
        previous_steps = [0] + [loss["step"] for loss in losses]
        weighted = [(loss["loss"], loss["step"] - before) for loss, before in zip(losses, previous_steps)
                    if loss["epoch"] == entry["epoch"]]
        epochs.append({
            "epoch": entry["epoch"] + 1,
            "step": entry["step"],
            "test_top1": entry["eval_accuracy"],
            "test_top5": entry["eval_top5_accuracy"],
            "test_loss": entry["eval_loss"],
            "train_loss": sum(value * steps for value, steps in weighted) / sum(steps for _, steps in weighted),
            "train_seconds": entry["train_runtime"],
            "train_cpu_seconds": entry["train_cpu_time"],
            "train_images": entry["train_samples"],
            "images_per_second": entry["train_samples"] / entry["train_runtime"],
        })
    return {
        "epochs": epochs,
        "loss_curve": [{key: entry[key] for key in ("step", "epoch", "loss", "learning_rate")} for entry in losses],
        "test_top1": epochs[-1]["test_top1"],
        "seconds_per_epoch": statistics.median(epoch["train_seconds"] for epoch in epochs),
        "cpu_seconds_per_epoch": statistics.median(epoch["train_cpu_seconds"] for epoch in epochs),
        "images_per_second": statistics.median(epoch["images_per_second"] for epoch in epochs),
    }


def write_json(path: Path, value: dict) -> None:
    """Write `value` to `path` atomically."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


def run_id(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


def train(spec: ModelSpec, seed: int, settings: Settings, output_dir: Path, results_dir: Path) -> dict:
    """Train one run to the end, resuming from its last checkpoint, unless its results JSON exists; returns them."""
    results_path = results_dir / f"{run_id(spec.name, seed)}.json"
    description = {"model": asdict(spec), "seed": seed, "settings": asdict(settings), "recipe": RECIPE}
    if results_path.is_file():
        results = json.loads(results_path.read_text())
        if {key: results[key] for key in description} != json.loads(json.dumps(description)):
            raise ValueError(f"{results_path} holds a run with other settings; move it away or use another "
                             f"--results-dir.")
        print(f"{run_id(spec.name, seed)}: finished, skipped", flush=True)
        return results

    run_dir = output_dir / run_id(spec.name, seed)
    description_path = run_dir / "benchmark_run.json"
    if description_path.is_file() and json.loads(description_path.read_text()) != json.loads(json.dumps(description)):
        raise ValueError(f"{run_dir} holds a run with other settings; delete it or use another --output-dir.")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(description_path, description)
    config = spec.config(settings.drop_path_rate)
    config.save_pretrained(run_dir / "model_config")
    data_dir = prepare_data(settings, output_dir)
    flags = training_flags(settings, data_dir, run_dir / "model_config", run_dir, seed)
    resuming = bool(list_checkpoints(run_dir / "checkpoints"))
    print(f"{run_id(spec.name, seed)}: {'resuming' if resuming else 'starting'}", flush=True)
    train_main([*flags, "--resume_from_checkpoint", "latest"] if resuming else flags)

    results = {
        **description,
        "parameters": parameter_count(config),
        "test_images": len(datasets.load_from_disk(str(data_dir))["test"]),
        "torch_threads": torch.get_num_threads(),
        **summarize(read_log(run_dir)),
        "evaluations": {},
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_path, results)
    return results


def evaluate_with(name: str, overrides: dict, output_dir: Path, results_dir: Path) -> list[dict]:
    """Evaluate every finished seed of run `name` on its test set with configuration `overrides` applied to the
    trained model (inference only); the figures go into its results JSON under `evaluations`."""
    paths = sorted(results_dir.glob(f"{name}-seed*.json"))
    if not paths:
        raise FileNotFoundError(f"No finished run {name!r} in {results_dir}; train it first.")
    label, evaluations = overrides_label(overrides), []
    for path in paths:
        results = json.loads(path.read_text())
        if label not in results["evaluations"]:
            run_dir = output_dir / run_id(name, results["seed"])
            data_dir = prepare_data(Settings(**results["settings"]), output_dir)
            model = AutoModelForImageClassification.from_pretrained(run_dir, **overrides)
            test = TransformedImageDataset(datasets.load_from_disk(str(data_dir))["test"],
                                           build_eval_transform(AutoImageProcessor.from_pretrained(run_dir)))
            loader = DataLoader(test, batch_size=results["settings"]["eval_batch_size"],
                                collate_fn=ImageCollator(model.config.num_labels))
            accelerator = Accelerator(cpu=True)
            model, loader = accelerator.prepare(model, loader)
            figures = evaluate_model(accelerator, model, loader, load_top_k_accuracy())
            results["evaluations"][label] = {"test_top1": figures["eval_accuracy"],
                                             "test_top5": figures["eval_top5_accuracy"],
                                             "test_loss": figures["eval_loss"]}
            write_json(path, results)
        figures = results["evaluations"][label]
        print(f"{path.stem} with {label}: test top-1 {100 * figures['test_top1']:.2f}% "
              f"(as trained: {100 * results['test_top1']:.2f}%)", flush=True)
        evaluations.append(results)
    return evaluations


# ----------------------------------------------------------------------------------------------------------------------
# Report


def load_results(results_dir: Path) -> dict[str, list[dict]]:
    """The results JSONs of `results_dir`, by model name (in name order), each model's sorted by seed."""
    runs = {}
    for path in sorted(results_dir.glob("*-seed*.json")):
        results = json.loads(path.read_text())
        runs.setdefault(results["model"]["name"], []).append(results)
    return {name: sorted(runs[name], key=lambda run: run["seed"]) for name in sorted(runs)}


def load_in_progress(output_dir: Path, finished: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Runs of `output_dir` with at least one evaluated epoch and no results JSON yet, by model name: each the
    `summarize` of its log plus its `seed`."""
    done = {(name, run["seed"]) for name, seeds in finished.items() for run in seeds}
    runs = {}
    for log_path in sorted(output_dir.glob("*-seed*/train_log.jsonl")):
        name, _, seed = log_path.parent.name.rpartition("-seed")
        log = read_log(log_path.parent)
        if (name, int(seed)) not in done and any("eval_accuracy" in entry for entry in log):
            runs.setdefault(name, []).append({**summarize(log), "seed": int(seed)})
    return runs


def in_progress_markdown(runs: dict[str, list[dict]], finished: dict[str, list[dict]], epochs: int) -> str:
    """Test top-1 after each epoch of the unfinished runs, beside the finished runs of the same seeds."""
    in_progress_seeds = {run["seed"] for seeds in runs.values() for run in seeds}
    rows = [(f"{name} seed {run['seed']} (in progress)", run) for name, seeds in runs.items() for run in seeds]
    rows += [(f"{name} seed {run['seed']}", run) for name, seeds in finished.items() for run in seeds
             if run["seed"] in in_progress_seeds]
    lines = ["", "Runs still in progress: test top-1 after each epoch, with the finished runs of the same seeds.", "",
             "| Run | Epochs done | Test top-1 after epoch 1, 2, ... (%) |", "|---|---:|---|"]
    lines += [f"| {label} | {len(run['epochs'])}/{epochs} | "
              f"{', '.join(percent(epoch['test_top1']) for epoch in run['epochs'])} |" for label, run in rows]
    return "\n".join(lines) + "\n"


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def report_markdown(runs: dict[str, list[dict]]) -> str:
    """The results table (final-epoch test top-1 per seed and their mean, parameters, time per epoch, throughput),
    a statement for each ClusTR model against the PVTv2 models, and any inference-time evaluations."""
    lines = [
        "| Model | Parameters | Test top-1 per seed (%) | Mean test top-1 (%) | Time per epoch (s) | "
        "CPU time per epoch (s) | Throughput (images/s) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    means = {}
    for name, seeds in runs.items():
        means[name] = statistics.mean(run["test_top1"] for run in seeds)
        per_seed = ", ".join(f"{percent(run['test_top1'])} (seed {run['seed']})" for run in seeds)
        lines.append(
            f"| {name} | {seeds[0]['parameters']:,} | {per_seed} | {percent(means[name])} | "
            f"{statistics.median(run['seconds_per_epoch'] for run in seeds):.1f} | "
            f"{statistics.median(run['cpu_seconds_per_epoch'] for run in seeds):.1f} | "
            f"{statistics.median(run['images_per_second'] for run in seeds):.1f} |"
        )
    families = {name: seeds[0]["model"]["family"] for name, seeds in runs.items()}
    statements = []
    for clustr in (name for name, family in families.items() if family == "clustr"):
        for pvt in (name for name, family in families.items() if family == "pvt_v2"):
            by_seed = {run["seed"]: run["test_top1"] for run in runs[pvt]}
            shared = [run for run in runs[clustr] if run["seed"] in by_seed]
            wins = sum(run["test_top1"] > by_seed[run["seed"]] for run in shared)
            difference = 100 * (means[clustr] - means[pvt])
            verdict = "beats" if difference > 0 else "does not beat"
            statements.append(
                f"{clustr} {verdict} {pvt}: {difference:+.2f} points of mean test top-1, higher on {wins} of "
                f"{len(shared)} seeds."
            )
    evaluations = [
        f"| {name} | {label} | {percent(statistics.mean(run['test_top1'] for run in seeds))} | "
        f"{percent(statistics.mean(run['evaluations'][label]['test_top1'] for run in seeds))} | {len(seeds)} |"
        for name, seeds in runs.items()
        for label in sorted(set.intersection(*(set(run["evaluations"]) for run in seeds)))
    ]
    if evaluations:
        statements += ["", "Trained models evaluated with other settings (inference only):", "",
                       "| Model | Settings | Mean test top-1 as trained (%) | Mean test top-1 with the settings (%) | "
                       "Seeds |", "|---|---|---:|---:|---:|", *evaluations]
    return "\n".join(lines + [""] + statements) + "\n"


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Test top-1 and training loss against epoch, one colour per model, one line style per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = ["-", "--", ":", "-."]
    for colour, (name, seeds) in enumerate(runs.items()):
        for index, run in enumerate(seeds):
            epochs = [epoch["epoch"] for epoch in run["epochs"]]
            style = dict(color=f"C{colour}", linestyle=styles[index % len(styles)], marker=".",
                         label=f"{name} seed {run['seed']}")
            accuracy_axis.plot(epochs, [100 * epoch["test_top1"] for epoch in run["epochs"]], **style)
            loss_axis.plot(epochs, [epoch["train_loss"] for epoch in run["epochs"]], **style)
    accuracy_axis.set(xlabel="epoch", ylabel="test top-1 (%)", title="Fashion-MNIST test top-1")
    loss_axis.set(xlabel="epoch", ylabel="training loss (label smoothing 0.1)", title="Training loss")
    for axis in (accuracy_axis, loss_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(results_dir: Path, readme: Path | None, output_dir: Path | None = None, epochs: int = 10) -> str:
    """Write report.md and accuracy_curves.png into `results_dir` and the table between the report markers of
    `readme` (when it has them); returns the markdown. Runs of `output_dir` still in progress are listed apart and
    drawn in the curves, never counted in the table or the verdicts."""
    runs = load_results(results_dir)
    in_progress = load_in_progress(output_dir, runs) if output_dir is not None else {}
    if not runs and not in_progress:
        raise FileNotFoundError(f"No results JSON in {results_dir} and no run in progress; train first.")
    markdown = report_markdown(runs) if runs else "No run has finished yet.\n"
    if in_progress:
        markdown += in_progress_markdown(in_progress, runs, epochs)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "report.md").write_text(markdown)
    curves = {**runs, **{f"{name} (in progress)": seeds for name, seeds in in_progress.items()}}
    plot_curves(curves, results_dir / "accuracy_curves.png")
    if readme is not None and readme.is_file():
        text = readme.read_text()
        pattern = re.compile(rf"{re.escape(REPORT_BEGIN)}.*?{re.escape(REPORT_END)}", re.DOTALL)
        if pattern.search(text):
            readme.write_text(pattern.sub(lambda _: f"{REPORT_BEGIN}\n{markdown}{REPORT_END}", text))
    return markdown


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", type=ModelSpec.parse,
                        help=f"A model to train, NAME=FAMILY:VARIANT[:key=value...] (repeatable); default: "
                             f"{' and '.join(DEFAULT_MODELS)}.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Seeds of weights, order, augmentation.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-samples", type=int, default=10240, help="Class-balanced training subset size.")
    parser.add_argument("--test-samples", type=int, default=None, help="Class-balanced test subset; default all.")
    parser.add_argument("--subset-seed", type=int, default=0, help="Seed of the subsets, the same for every run.")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=250)
    parser.add_argument("--drop-path-rate", type=float, default=0.1)
    parser.add_argument("--logging-steps", type=int, default=20, help="Training loss logged every N steps.")
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "accuracy",
                        help="Data subsets, checkpoints and trained models.")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results" / "accuracy")
    parser.add_argument("--evaluate-with", nargs="+", action="append", metavar=("RUN", "KEY=VALUE"),
                        help="Evaluate the trained seeds of model RUN with configuration overrides (repeatable).")
    parser.add_argument("--report", action="store_true", help="Write the table and curves from the results JSONs.")
    parser.add_argument("--readme", type=Path, default=REPO / "benchmarks" / "README.md",
                        help="README whose report markers get the table (with --report).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report:
        print(report(args.results_dir, args.readme, args.output_dir, args.epochs), end="")
        return
    if args.evaluate_with:
        for name, *assignments in args.evaluate_with:
            evaluate_with(name, parse_overrides(assignments), args.output_dir, args.results_dir)
        return
    settings = Settings(args.epochs, args.train_samples, args.test_samples, args.subset_seed, args.image_size,
                        args.batch_size, args.eval_batch_size, args.drop_path_rate, args.logging_steps)
    models = args.model or [ModelSpec.parse(text) for text in DEFAULT_MODELS]
    for seed in args.seeds:
        for spec in models:
            results = train(spec, seed, settings, args.output_dir, args.results_dir)
            print(f"{run_id(spec.name, seed)}: test top-1 {percent(results['test_top1'])}%, "
                  f"{results['seconds_per_epoch']:.1f} s per epoch, {results['images_per_second']:.1f} images/s",
                  flush=True)


if __name__ == "__main__":
    main()
