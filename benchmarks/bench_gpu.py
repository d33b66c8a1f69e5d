"""ClusTR-b2 on a GPU, side by side with the reference formulation of its clustering and with PVTv2-b2: training
throughput, inference latency and peak memory, and whether the clustering on the GPU equals the CPU's.

One run, one table (and --out JSON). Every model has random weights and sees real photos; models of a row are timed in
turn, run by run (median of --repeats after warm-ups), with CUDA events on a GPU:
  training   images/s of one step: forward and backward under bfloat16 autocast and an AdamW step, batch 64 and 128
             at 224x224, eager and `torch.compile`d (the compile time is printed beside the table);
  inference  latency of an eval forward under bfloat16 autocast at batch 1 and 32 at 224x224, and batch 1 at 448, 640
             and 1024, with the peak memory the allocator saw;
for ClusTR-b2 (exact clustering), ClusTR-b2 with `clustering_mode="pooled"` (the same weights), ClusTR-b2 with the
reference formulation of the exact clustering (full N x N matrices per image, `reference_clustering.py`; not
compiled: a Python loop over images) and transformers' PvtV2-b2. The correctness line compares `density_peaks` on
the device with the CPU's on b2's stage-1 tokens of four photos at 224 and 448, also with TF32 matmuls allowed.
Measurements left when --budget seconds have passed are skipped, so that the run ends in time.

    python benchmarks/bench_gpu.py                        # about 8 minutes on one H100 / H200
    python benchmarks/bench_gpu.py --quick                # tiny sizes, any device: proves the script (tests run it)
    python benchmarks/bench_gpu.py --device cpu --model b0 --models exact pooled pvt_v2 --train-batches 8 \
        --inference 224x1 --budget 3600                   # compiled training on a CPU
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_speed import PVT_V2_CONFIGS, clustering  # noqa: E402
from clustr_hf import ClusTRConfig, ClusTRForImageClassification  # noqa: E402
from clustr_hf.clustering import cluster_counts, density_peaks  # noqa: E402
from clustr_hf.testing_utils import PHOTOS, clustered_tokens, photo_batch  # noqa: E402
from reference_clustering import reference_density_peaks  # noqa: E402
from transformers import PvtV2Config, PvtV2ForImageClassification  # noqa: E402


FULL = dict(variant="b2", models=("exact", "pooled", "reference", "pvt_v2"), train_size=224, train_batches=(64, 128),
            inference=((224, 1), (224, 32), (448, 1), (640, 1), (1024, 1)), check_sizes=(224, 448), num_labels=1000)
QUICK = dict(variant="tiny", models=FULL["models"], train_size=136, train_batches=(2,), inference=((64, 2), (136, 1)),
             check_sizes=(136,), num_labels=10)
TINY = dict(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4], depths=[1, 1, 1, 1], mlp_ratios=[2] * 4)
TITLES = {"exact": "ClusTR exact", "pooled": "ClusTR pooled", "reference": "reference formulation",
          "pvt_v2": "PvtV2"}


class Deadline:
    """The --budget: measurements asked for after it has passed are skipped."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() > self.end


def seconds_of(call, device) -> float:
    """Wall time of one `call`, by CUDA events on a GPU."""
    if device.type != "cuda":
        start = time.perf_counter()
        call()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / 1000


def peak_bytes(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def measure_in_turn(calls: dict, device, repeats: int, deadline: Deadline) -> dict:
    """{label: {"seconds": median, "first_seconds": the warm-up call, "peak_bytes": ...}} of each call, timed in
    turn run by run after one warm-up (which compiles a compiled model); a call that fails or comes after the deadline
    gets {"skipped": why}."""
    results, times = {}, {label: [] for label in calls}
    for label, call in calls.items():
        if deadline.passed():
            results[label] = {"skipped": "time budget"}
            continue
        try:
            results[label] = {"first_seconds": seconds_of(call, device)}
            seconds_of(call, device)
        except torch.OutOfMemoryError:
            results[label] = {"skipped": "out of memory"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    running = [label for label in calls if "skipped" not in results[label]]
    peaks = dict.fromkeys(running, 0)
    for _ in range(repeats):
        for label in running:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[label].append(seconds_of(calls[label], device))
            peaks[label] = max(peaks[label], peak_bytes(device) or 0)
    for label in running:
        results[label].update(seconds=statistics.median(times[label]), peak_bytes=peaks[label] or None)
    return results


def build_models(settings, device) -> dict:
    """The compared classifiers of `settings["models"]`, random weights; the ClusTR models share theirs."""
    torch.manual_seed(0)
    if settings["variant"] == "tiny":
        config = ClusTRConfig(**TINY, num_labels=settings["num_labels"])
        pvt_config = PvtV2Config(hidden_sizes=TINY["hidden_sizes"], depths=TINY["depths"],
                                 num_attention_heads=TINY["num_attention_heads"], num_labels=settings["num_labels"])
    else:
        config = ClusTRConfig.from_variant(settings["variant"], num_labels=settings["num_labels"])
        pvt_config = PvtV2Config(**PVT_V2_CONFIGS[settings["variant"]], num_labels=settings["num_labels"])
    exact = ClusTRForImageClassification(config).to(device)
    pooled = ClusTRForImageClassification(ClusTRConfig(**{**config.to_dict(), "clustering_mode": "pooled"})).to(device)
    pooled.load_state_dict(exact.state_dict())
    reference = ClusTRForImageClassification(config).to(device)
    reference.load_state_dict(exact.state_dict())
    models = {"exact": exact, "pooled": pooled, "reference": reference, "pvt_v2": PvtV2ForImageClassification(
        pvt_config).to(device)}
    return {name: models[name] for name in settings["models"]}


def forward(name, model):
    """`model`'s forward, with the reference formulation's clustering for "reference"."""
    def call(*args, **kwargs):
        if name != "reference":
            return model(*args, **kwargs)
        with clustering(reference_density_peaks):
            return model(*args, **kwargs)

    return call


def training_step(name, model, pixel_values, labels, compiled: bool, backend: str):
    """One forward/backward under bfloat16 autocast and an AdamW step of `model` (a fresh copy of its weights)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    run = forward(name, torch.compile(model, backend=backend) if compiled else model)
    device_type = pixel_values.device.type

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            loss = run(pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()

    return step


def inference_call(name, model, pixel_values):
    model.eval()
    run = forward(name, model)

    @torch.no_grad()
    def call():
        with torch.autocast(pixel_values.device.type, dtype=torch.bfloat16):
            run(pixel_values)

    return call


def device_matches_cpu(settings, device) -> dict:
    """Whether `density_peaks` on `device` gives the CPU's clusters of the four photos' stage-1 tokens, per size, with
    the default matmul precision and with TF32 (or the CPU's reduced float32 matmuls) allowed."""
    torch.manual_seed(0)
    model = build_models({**settings, "models": ("exact",)}, torch.device("cpu"))["exact"]
    checks = {}
    for size in settings["check_sizes"]:
        tokens = clustered_tokens(model, photo_batch((size, size), PHOTOS))
        counts = cluster_counts(tokens.shape[1], model.config.cluster_reduction_ratios[0], model.config.cluster_scales)
        expected = density_peaks(tokens, counts)
        for precision in ("highest", "high"):
            previous = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(precision)
            try:
                found = density_peaks(tokens.to(device), counts)
            finally:
                torch.set_float32_matmul_precision(previous)
            checks[f"{size}x{size}, float32 matmul precision {precision}"] = bool(
                torch.equal(found.assignments.cpu(), expected.assignments)
                and torch.equal(found.centres.cpu(), expected.centres))
    return checks


def settings_of(args) -> dict:
    """FULL or QUICK, with what the command line overrides."""
    settings = dict(QUICK if args.quick else FULL)
    if args.model:
        settings.update(variant=args.model)
    if args.models:
        settings.update(models=tuple(args.models))
    if args.train_batches:
        settings.update(train_batches=tuple(args.train_batches))
    if args.inference:
        settings.update(inference=tuple(tuple(int(number) for number in spec.split("x")) for spec in args.inference))
    return settings


def run(args) -> dict:
    settings = settings_of(args)
    device = torch.device(args.device)
    deadline = Deadline(args.budget)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "settings": settings, "rows": {}}
    report["matches_cpu"] = device_matches_cpu(settings, device)
    models = build_models(settings, device)
    for size, batch_size in settings["inference"]:
        pixel_values = photo_batch((size, size), PHOTOS, batch_size).to(device)
        calls = {name: inference_call(name, model, pixel_values) for name, model in models.items()}
        report["rows"][f"inference {size} batch {batch_size}"] = measure_in_turn(calls, device, args.repeats, deadline)
    for compiled in (False, True):
        for batch_size in settings["train_batches"]:
            size = settings["train_size"]
            pixel_values = photo_batch((size, size), PHOTOS, batch_size).to(device)
            labels = torch.arange(batch_size, device=device) % settings["num_labels"]
            calls = {name: training_step(name, model, pixel_values, labels, compiled, args.compile_backend)
                     for name, model in models.items() if not (compiled and name == "reference")}
            row = measure_in_turn(calls, device, args.repeats, deadline)
            if compiled and "reference" in models:
                row["reference"] = {"skipped": "not compiled: a Python loop over images"}
            for result in row.values():
                if "seconds" in result:
                    result["images_per_second"] = batch_size / result["seconds"]
            report["rows"][f"training batch {batch_size}{' compiled' if compiled else ''}"] = row
    return report


def cell(result) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    memory = f", {result['peak_bytes'] / 2**30:.2f} GiB" if result.get("peak_bytes") else ""
    if "images_per_second" in result:
        return f"{result['images_per_second']:.1f} img/s{memory}"
    return f"{result['seconds'] * 1000:.1f} ms{memory}"


def print_report(report):
    settings = report["settings"]
    print(f"{report['device']}, torch {report['torch']}; {settings['variant']} models, bfloat16 autocast")
    models = settings["models"]
    print("\n| | " + " | ".join(f"{TITLES[name]}-{settings['variant']}" for name in models) + " |")
    print("|---|" + "---|" * len(models))
    for label, row in report["rows"].items():
        print(f"| {label} | " + " | ".join(cell(row[name]) for name in models) + " |")
    compile_seconds = {f"{name}, batch {label.split()[2]}": result["first_seconds"]
                       for label, row in report["rows"].items() if label.endswith("compiled")
                       for name, result in row.items() if "first_seconds" in result}
    if compile_seconds:
        print("\nFirst compiled step (compilation included): " + ", ".join(
            f"{name} {seconds:.1f} s" for name, seconds in compile_seconds.items()))
    checks = report["matches_cpu"]
    print(f"\nClustering on {report['device']} equals the CPU's (b2 stage-1 tokens of {len(PHOTOS)} photos): " + ", ".join(
        f"{check}: {'yes' if equal else 'NO'}" for check, equal in checks.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes, to prove the script anywhere")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--budget", type=float, default=480, help="seconds after which measurements are skipped")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: no codegen)")
    parser.add_argument("--model", choices=sorted(PVT_V2_CONFIGS), help="another variant than b2 (tiny with --quick)")
    parser.add_argument("--models", nargs="+", choices=FULL["models"], help="the models compared (default: all four)")
    parser.add_argument("--train-batches", type=int, nargs="+", help="training batch sizes (default 64 128)")
    parser.add_argument("--inference", nargs="+", metavar="SIZExBATCH",
                        help="inference sizes and batches (default 224x1 224x32 448x1 640x1 1024x1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
