"""Speed and memory of ClusTR with its chunked exact clustering, against the reference formulation and PVTv2.

One run measures side by side, for ClusTR b2 and b0 (random weights, real photos, eval, fp32, batch 4):
  clustr   ClusTR as shipped, exact mode (`clustr_hf.clustering.density_peaks`);
  static   the same, with the clustering's static-shape path (the one torch.compile and export take) run eagerly;
  before   with --baseline REV: ClusTR with `clustr_hf/clustering.py` as it was at git revision REV;
  pooled   ClusTR in the scalable mode (`clustering_mode="pooled"`, the same weights), and with --baseline,
           pooled_before: that mode at REV;
  oracle   ClusTR with the reference's formulation of the same clustering (full N x N matrices,
           `reference_clustering.py`); skipped where a run would take longer than --oracle-limit seconds (except
           at --oracle-sizes, 224 and 448, which the targets need) or would not fit in memory;
  floor    ClusTR with the clustering replaced by a free assignment (consecutive tokens): the rest of the network;
  gemms    the distance GEMMs alone: one batched (B, N, C) x (B, C, N) product per clustered block of the model;
  pvtv2    transformers' PvtV2Model with the matching PVTv2 configuration (b2 against PVTv2-b2, b0 against PVTv2-b0);
forward latency at each --sizes (median of --repeats runs after a warm-up, the variants interleaved run by run so that
load changes hit them alike) with --batch-size photos, and again with each of --extra-batch-sizes (clustr, pooled,
oracle, floor, gemms and pvtv2 only), the extra peak memory of a forward, and a training step (forward, backward and
AdamW step of the image classifiers, --train-batch-size images) at the first size. Prints a table and the ratios
against `TARGETS`, writes results JSON and a PNG plot.

Peak memory on a GPU is the allocator's peak, read in the timed runs. On a CPU it is the resident set's high-water
mark above its level before the forward, read in a fresh process per model and size (`peak_memory_in_child`), where
glibc returns every freed buffer to the system at once: in a long-lived process glibc's adaptive threshold keeps
freed buffers on its heap, and the same forward's high-water mark then varies from run to run (b0 448, exact mode:
270 MiB in one run, 1.3-1.6 GB in the next).

    python benchmarks/bench_speed.py                       # everything (about an hour on 2 quiet cores)
    python benchmarks/bench_speed.py --sizes 224 --models b0 --repeats 3   # a quick look
    python benchmarks/bench_speed.py --sizes 224 448 --baseline a7b94a3   # against the clustering of a7b94a3
"""

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import clustr_hf.clustering as clustr_clustering  # noqa: E402
import clustr_hf.modeling_clustr as modeling_clustr  # noqa: E402
from clustr_hf import ClusTRConfig, ClusTRForImageClassification, ClusTRModel  # noqa: E402
from clustr_hf.clustering import DensityPeaks, density_peaks  # noqa: E402
from clustr_hf.testing_utils import photo_batch  # noqa: E402
from reference_clustering import reference_density_peaks  # noqa: E402
from transformers import PvtV2Config, PvtV2ForImageClassification, PvtV2Model  # noqa: E402


PVT_V2_CONFIGS = {  # the released PVTv2 configurations the ClusTR variants are compared with
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8]),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], num_attention_heads=[1, 2, 5, 8]),
}
TARGETS = {"speedup_224": 2.5, "speedup_448": 5.0, "memory_fraction_448": 1 / 3, "overhead_per_gemm": 1.3,
           "pooled_to_pvtv2_224": 1.4, "pooled_to_pvtv2_448": 1.0, "pooled_to_pvtv2_640": 1.0,
           "pooled_memory_to_pvtv2_640": 1.0, "clustr_to_pvtv2_224": 2.5}
"""The b2 ratios the project aimed for: forward speed-up over the reference formulation, memory against it, clustering
overhead per distance GEMM time, pooled mode against PVTv2-b2, and the exact mode's forward against PVTv2-b2's."""
VARIANTS = ("clustr", "static", "before", "pooled", "pooled_before", "oracle", "floor", "gemms", "pvtv2")
EXTRA_BATCH_VARIANTS = ("clustr", "pooled", "oracle", "floor", "gemms", "pvtv2")


def free_assignment(tokens: torch.Tensor, cluster_counts, k: int = 5, chunk_size: int = 256) -> DensityPeaks:
    """The floor: every scale's clusters are runs of consecutive tokens, chosen at no cost."""
    batch_size, num_tokens = tokens.shape[:2]
    index = torch.arange(num_tokens, device=tokens.device)
    assignments = torch.stack([index * count // num_tokens for count in cluster_counts]).expand(batch_size, -1, -1)
    centres = torch.arange(max(cluster_counts), device=tokens.device) * num_tokens // max(cluster_counts)
    return DensityPeaks(assignments, centres.expand(batch_size, -1))


def eager_cond(predicate, true_branch, false_branch):
    """`torch.cond` as plain Python: eager `torch.cond` traces its branches with Dynamo on every new shape, minutes
    of tracing that a compiled model pays once and that would swamp the timing."""
    return true_branch() if predicate else false_branch()


def static_density_peaks(*args, **kwargs) -> DensityPeaks:
    """`density_peaks` through its static-shape path (fixed redo shares, then every token where more are in doubt),
    run eagerly: the float64 work a compiled model does."""
    originals = clustr_clustering.is_static, torch.cond
    clustr_clustering.is_static, torch.cond = (lambda: True), eager_cond
    try:
        return density_peaks(*args, **kwargs)
    finally:
        clustr_clustering.is_static, torch.cond = originals


def clustering_at(revision: str) -> types.ModuleType:
    """`clustr_hf/clustering.py` as it was at git revision `revision`, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:clustr_hf/clustering.py"], cwd=HERE.parent, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"clustering_at_{revision}")
    exec(compile(source, f"clustr_hf/clustering.py@{revision}", "exec"), module.__dict__)
    return module


def baseline_clusterings(revision: str) -> tuple:
    """(density_peaks, pooled_density_peaks) of `revision`, called as the model calls today's (its chunk_size of
    None meant 256 then)."""
    module = clustering_at(revision)

    def exact(tokens, counts, k=5, chunk_size=None):
        return module.density_peaks(tokens, counts, k, chunk_size or 256)

    def pooled(tokens, grid, counts, k=5, tokens_per_cluster=4, chunk_size=None):
        return module.pooled_density_peaks(tokens, grid, counts, k, tokens_per_cluster, chunk_size or 256)

    return exact, pooled


@contextlib.contextmanager
def clustering(function, pooled_function=None):
    """Swap the clustering the ClusTR attention calls (and, if given, that of the pooled mode)."""
    originals = modeling_clustr.density_peaks, modeling_clustr.pooled_density_peaks
    modeling_clustr.density_peaks = function
    modeling_clustr.pooled_density_peaks = pooled_function or originals[1]
    try:
        yield
    finally:
        modeling_clustr.density_peaks, modeling_clustr.pooled_density_peaks = originals


def clustering_inputs(model, pixel_values):
    """The (tokens, cluster counts) of every clustered block of one forward, in order."""
    inputs = []

    def record(tokens, counts, *args):
        inputs.append((tokens.clone(), tuple(counts)))
        return free_assignment(tokens, counts)

    with clustering(record), torch.no_grad():
        model(pixel_values)
    return inputs


def clustered_shapes(model, pixel_values):
    """The (B, N, C) token shape of every clustered block of one forward."""
    return [tuple(tokens.shape) for tokens, _ in clustering_inputs(model, pixel_values)]


def median_seconds(call, repeats):
    """Median wall time of `repeats` calls (the caller warms up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def available_memory(device) -> int:
    """Bytes that can still be allocated on `device` (all of it where this cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 2**63


def distance_gemms(shapes, device):
    """A callable running the reference's distance products alone: one (B, N, N) batched GEMM per clustered block,
    image by image where the batch's product would take more than 40% of the free memory (the same arithmetic)."""
    tokens = [torch.randn(shape, device=device) for shape in shapes]
    limit = 0.4 * available_memory(device)

    def run():
        for x in tokens:
            if x.shape[0] * x.shape[1] ** 2 * x.element_size() > limit:
                for image in x:
                    torch.mm(image, image.T)
            else:
                torch.bmm(x, x.transpose(1, 2))

    return run


class Memory:
    """Extra peak memory of a call: allocator peak on GPUs; with `resident`, resident set high-water mark on Linux
    CPUs (trustworthy only where glibc returns freed buffers at once, see `peak_memory_in_child`)."""

    def __init__(self, device, resident=False):
        self.device = device
        self.libc = ctypes.CDLL("libc.so.6") if resident and platform.system() == "Linux" else None

    def _status(self, field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))

    def measure(self, call):
        """Runs `call` and returns (its wall time in seconds, its extra peak memory in bytes or None)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        elif self.libc is not None:
            self.libc.malloc_trim(0)  # give freed heap back, so reuse of cached pages cannot hide a peak
            before = self._status("VmRSS:")
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # reset the high-water mark to the current resident size
        start = time.perf_counter()
        call()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if self.device.type == "cuda":
            return elapsed, torch.cuda.max_memory_allocated() - before
        if self.libc is not None:
            return elapsed, self._status("VmHWM:") - before
        return elapsed, None


def measure_interleaved(calls, repeats, memory, limit=None, log=print):
    """Warm each call up once, then time `repeats` rounds of all of them in turn; median and peak memory per call.

    A call whose warm-up already takes more than `limit` seconds is not repeated (its single time is kept).
    """
    results, active = {}, []
    for name, call in calls.items():
        elapsed, _ = memory.measure(call)
        results[name] = {"warmup_s": elapsed, "runs_s": [], "peak_bytes": None}
        if limit is not None and name == "oracle" and elapsed > limit:
            results[name]["skipped"] = f"warm-up run took {elapsed:.0f} s > {limit:.0f} s"
            log(f"    oracle: {results[name]['skipped']}; not repeated")
        else:
            active.append(name)
    for _ in range(repeats):
        for name in active:
            elapsed, peak = memory.measure(calls[name])
            results[name]["runs_s"].append(elapsed)
            if peak is not None:
                results[name]["peak_bytes"] = max(peak, results[name]["peak_bytes"] or 0)
    for result in results.values():
        result["median_s"] = statistics.median(result["runs_s"]) if result["runs_s"] else None
    return results


def load_average():
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def build_models(name, device):
    """ClusTR (exact and pooled, the same random weights) and PvtV2Model of variant `name`, in eval mode."""
    torch.manual_seed(0)
    clustr = ClusTRModel(ClusTRConfig.from_variant(name)).to(device).eval()
    pvt = PvtV2Model(PvtV2Config(**PVT_V2_CONFIGS[name])).to(device).eval()
    return clustr, pooled_copy(clustr), pvt


def peak_memory_in_child(name, size, variants, batch_size, threads, baseline=None):
    """Extra peak resident memory (bytes) of one forward of each of `variants` of model `name` at `size`, measured in a
    fresh process whose glibc unmaps every freed buffer above 128 KiB at once (`MALLOC_MMAP_THRESHOLD_`).

    That setting makes the high-water mark the forward's own peak, stable from run to run, but allocation slower
    (b2 224 forward 1.4x), so only memory is measured there. A PVTv2 forward first initialises the libraries' buffers.
    """
    command = [sys.executable, __file__, "--memory-of", name, str(size), *variants, "--batch-size", str(batch_size),
               "--threads", str(threads), *(["--baseline", baseline] if baseline else [])]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    output = subprocess.run(command, env=environment, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def print_child_peak_memory(name, size, variants, batch_size, threads, baseline=None):
    """The child's side of `peak_memory_in_child`: prints the peaks as a JSON line."""
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    clustr, pooled, pvt = build_models(name, device)
    pixel_values = photo_batch((size, size))[:batch_size]
    shapes = clustered_shapes(clustr, pixel_values)
    calls = forward_calls(clustr, pooled, pvt, pixel_values, shapes, device, with_oracle="oracle" in variants,
                          baseline=baseline and baseline_clusterings(baseline))
    memory = Memory(device, resident=True)
    calls["pvtv2"]()
    print(json.dumps({variant: memory.measure(calls[variant])[1] for variant in variants}))


def pooled_copy(model):
    """`model` with the same weights in the pooled clustering mode."""
    config = model.config.to_dict()
    config.update(clustering_mode="pooled")
    pooled = type(model)(type(model.config).from_dict(config)).to(next(model.parameters()).device)
    pooled.load_state_dict(model.state_dict())
    return pooled.train(model.training)


def forward_calls(clustr, pooled, pvt, pixel_values, shapes, device, with_oracle, baseline=None):
    def forward(model, function=density_peaks, pooled_function=None):
        def call():
            with clustering(function, pooled_function), torch.no_grad():
                model(pixel_values)
        return call

    calls = {"clustr": forward(clustr), "static": forward(clustr, static_density_peaks)}
    if baseline:
        calls["before"] = forward(clustr, baseline[0])
    calls["pooled"] = forward(pooled)
    if baseline:
        calls["pooled_before"] = forward(pooled, density_peaks, baseline[1])
    if with_oracle:
        calls["oracle"] = forward(clustr, reference_density_peaks)
    calls["floor"] = forward(clustr, free_assignment)
    calls["gemms"] = distance_gemms(shapes, device)
    calls["pvtv2"] = forward(pvt)
    return calls


def training_calls(name, pixel_values, device, baseline=None):
    """Training steps of the image classifiers (ClusTR with each clustering, and PVTv2): forward, backward and an
    AdamW step."""
    labels = torch.arange(pixel_values.shape[0], device=device) % 10
    torch.manual_seed(0)
    clustr = ClusTRForImageClassification(ClusTRConfig.from_variant(name, num_labels=10)).to(device).train()
    pooled = pooled_copy(clustr)
    pvt = PvtV2ForImageClassification(PvtV2Config(**PVT_V2_CONFIGS[name], num_labels=10)).to(device).train()

    optimizers = {model: torch.optim.AdamW(model.parameters(), lr=1e-4) for model in (clustr, pooled, pvt)}

    def step(model, function=density_peaks, pooled_function=None):
        def call():
            with clustering(function, pooled_function):
                model(pixel_values, labels=labels).loss.backward()
            optimizers[model].step()
            optimizers[model].zero_grad(set_to_none=True)
        return call

    calls = {"clustr": step(clustr), "static": step(clustr, static_density_peaks)}
    if baseline:
        calls.update(before=step(clustr, baseline[0]), pooled_before=step(pooled, density_peaks, baseline[1]))
    calls.update(pooled=step(pooled), floor=step(clustr, free_assignment), oracle=step(clustr, reference_density_peaks),
                 pvtv2=step(pvt))
    return calls


def run(args):
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    memory = Memory(device)  # the GPU's allocator peak; on a CPU, `peak_memory_in_child` measures memory
    report = {
        "settings": {**vars(args), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                     "load_average_start": load_average()},
        "forward": {}, "forward_by_batch": {batch_size: {} for batch_size in args.extra_batch_sizes}, "training": {},
    }
    baseline = baseline_clusterings(args.baseline) if args.baseline else None
    for name in args.models:
        clustr, pooled, pvt = build_models(name, device)
        report["forward"][name] = {}
        oracle_seconds_per_distance = None  # oracle time / sum of B N^2 over the clustered blocks, from the last size
        oracle_bytes_per_distance = None  # oracle peak memory / the largest N^2 of a block, from the last size
        for size in args.sizes:
            pixel_values = photo_batch((size, size))[: args.batch_size].to(device)
            shapes = clustered_shapes(clustr, pixel_values)
            distances = sum(batch * tokens * tokens for batch, tokens, _ in shapes)
            largest_matrix = max(tokens * tokens for _, tokens, _ in shapes)
            skip = None
            slow = oracle_seconds_per_distance and oracle_seconds_per_distance * distances > args.oracle_limit
            if slow and size not in args.oracle_sizes:
                skip = f"predicted {oracle_seconds_per_distance * distances:.0f} s a run > {args.oracle_limit:.0f} s"
            elif oracle_bytes_per_distance and oracle_bytes_per_distance * largest_matrix > 0.8 * available_memory(device):
                skip = f"predicted peak {oracle_bytes_per_distance * largest_matrix / 2**30:.1f} GiB > 80% of free memory"
            with_oracle = skip is None
            print(f"{name} {size}x{size}: load {load_average()}" + (f"; oracle skipped: {skip}" if skip else ""),
                  flush=True)
            calls = forward_calls(clustr, pooled, pvt, pixel_values, shapes, device, with_oracle, baseline)
            limit = None if size in args.oracle_sizes else args.oracle_limit
            results = measure_interleaved(calls, args.repeats, memory, limit)
            if device.type == "cpu":
                measured = [variant for variant, result in results.items() if result["runs_s"]]
                peaks = peak_memory_in_child(name, size, measured, args.batch_size, args.threads, args.baseline)
                for variant, peak in peaks.items():
                    results[variant]["peak_bytes"] = peak
            if with_oracle:
                oracle_seconds = results["oracle"]["median_s"] or results["oracle"]["warmup_s"]
                oracle_seconds_per_distance = oracle_seconds / distances
                if results["oracle"]["peak_bytes"]:
                    oracle_bytes_per_distance = results["oracle"]["peak_bytes"] / largest_matrix
            else:
                results["oracle"] = {"median_s": None, "runs_s": [], "peak_bytes": None, "skipped": skip}
            report["forward"][name][size] = results
            print(format_row(results), flush=True)
            for batch_size in args.extra_batch_sizes:
                batch = photo_batch((size, size), batch_size=batch_size).to(device)
                calls = forward_calls(clustr, pooled, pvt, batch, clustered_shapes(clustr, batch), device, with_oracle)
                calls = {variant: call for variant, call in calls.items() if variant in EXTRA_BATCH_VARIANTS}
                results = measure_interleaved(calls, args.repeats, memory, limit)
                report["forward_by_batch"][batch_size].setdefault(name, {})[size] = results
                print(f"  batch {batch_size}: " + format_row(results).strip(), flush=True)
    training_size = args.sizes[0]
    for name in args.models:
        pixel_values = photo_batch((training_size, training_size), batch_size=args.train_batch_size).to(device)
        print(f"{name} training step {training_size}x{training_size}, batch {args.train_batch_size}: "
              f"load {load_average()}", flush=True)
        calls = training_calls(name, pixel_values, device, baseline)
        report["training"][name] = measure_interleaved(calls, args.repeats, memory)
        print(format_row(report["training"][name]), flush=True)
    report["settings"]["load_average_end"] = load_average()
    report["targets"] = targets(report)
    return report


def format_row(results):
    def cell(name):
        result = results.get(name)
        if result is None:
            return f"{name} -"
        if result["median_s"] is None:
            return f"{name} skipped"
        memory = f" ({result['peak_bytes'] / 2**20:.0f} MiB)" if result["peak_bytes"] is not None else ""
        return f"{name} {result['median_s']:.3f} s{memory}"

    return "    " + " | ".join(cell(name) for name in VARIANTS)


def targets(report):
    """The `TARGETS` for b2 as measured ratios (None where a figure is missing)."""
    forward = report["forward"].get("b2", {})

    def median(size, name):
        return forward.get(size, {}).get(name, {}).get("median_s")

    def ratio(numerator, denominator):
        return numerator / denominator if numerator is not None and denominator else None

    checks = {}
    for size in (224, 448):
        if size not in forward:
            continue
        clustr, oracle, floor, gemms = (median(size, name) for name in ("clustr", "oracle", "floor", "gemms"))
        checks[f"speedup_over_oracle_{size}"] = {
            "value": ratio(oracle, clustr), "target": TARGETS[f"speedup_{size}"], "higher_is_better": True}
        checks[f"overhead_per_gemms_{size}"] = {
            "value": ratio(clustr - floor, gemms) if clustr and floor else None,
            "target": TARGETS["overhead_per_gemm"], "higher_is_better": False}
        checks[f"ratio_to_pvtv2_{size}"] = {"value": ratio(clustr, median(size, "pvtv2"))}
        if size == 224:
            checks["ratio_to_pvtv2_224"].update(target=TARGETS["clustr_to_pvtv2_224"], higher_is_better=False)
    for batch_size, models in report["forward_by_batch"].items():
        batch = models.get("b2", {}).get(224, {})
        clustr, pvtv2 = (batch.get(name, {}).get("median_s") for name in ("clustr", "pvtv2"))
        if clustr and pvtv2:
            checks[f"ratio_to_pvtv2_224_batch_{batch_size}"] = {
                "value": clustr / pvtv2, "target": TARGETS["clustr_to_pvtv2_224"], "higher_is_better": False}
    for size in (224, 448, 640):
        if size in forward:
            checks[f"pooled_to_pvtv2_{size}"] = {
                "value": ratio(median(size, "pooled"), median(size, "pvtv2")),
                "target": TARGETS[f"pooled_to_pvtv2_{size}"], "higher_is_better": False}
    if 640 in forward:
        checks["pooled_memory_to_pvtv2_640"] = {
            "value": ratio(forward[640]["pooled"]["peak_bytes"], forward[640]["pvtv2"]["peak_bytes"]),
            "target": TARGETS["pooled_memory_to_pvtv2_640"], "higher_is_better": False}
    if 448 in forward:
        peaks = {name: forward[448][name].get("peak_bytes") for name in ("clustr", "oracle")}
        checks["memory_fraction_of_oracle_448"] = {
            "value": ratio(peaks["clustr"], peaks["oracle"]), "target": TARGETS["memory_fraction_448"],
            "higher_is_better": False}
    for check in checks.values():
        if check.get("target") is not None and check["value"] is not None:
            better = check["value"] >= check["target"] if check["higher_is_better"] else check["value"] <= check["target"]
            check["met"] = better
    return checks


def print_summary(report):
    print("\nForward latency, median s (extra peak memory); " f"threads {report['settings']['threads']}, "
          f"batch {report['settings']['batch_size']}, load average {report['settings']['load_average_start']} -> "
          f"{report['settings']['load_average_end']}")
    for name, sizes in report["forward"].items():
        for size, results in sizes.items():
            print(f"  {name} {size:>4}: " + format_row(results).strip())
    for batch_size, models in report["forward_by_batch"].items():
        for name, sizes in models.items():
            for size, results in sizes.items():
                print(f"  {name} {size:>4} batch {batch_size}: " + format_row(results).strip())
    for name, results in report["training"].items():
        print(f"  {name} training step {report['settings']['sizes'][0]}, batch {report['settings']['train_batch_size']}"
              f" (forward, backward, AdamW): " + format_row(results).strip())
    print("\nTargets (b2):")
    for name, check in report["targets"].items():
        value = "n/a" if check["value"] is None else f"{check['value']:.2f}"
        target = "" if "target" not in check else (
            f" (target {'>=' if check['higher_is_better'] else '<='} {check['target']:.2f}: "
            f"{'met' if check.get('met') else 'MISSED' if 'met' in check else 'not measured'})")
        print(f"  {name}: {value}{target}")


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(report["forward"]), figsize=(6 * len(report["forward"]), 4.5), squeeze=False)
    labels = {"clustr": "ClusTR (exact clustering)", "before": f"ClusTR (exact clustering at {report['settings']['baseline']})",
              "pooled": "ClusTR (pooled clustering mode)", "oracle": "ClusTR (reference formulation)",
              "floor": "ClusTR, free clustering (floor)", "gemms": "distance GEMMs alone", "pvtv2": "PVTv2 (transformers)"}
    for axis, (name, sizes) in zip(axes[0], report["forward"].items()):
        for variant, label in labels.items():
            points = [(size, results[variant]["median_s"]) for size, results in sizes.items()
                      if results.get(variant, {}).get("median_s") is not None]
            if points:
                axis.plot(*zip(*points), marker="o", label=label)
        axis.set(title=f"{name}: forward, batch {report['settings']['batch_size']}, {report['settings']['threads']} threads",
                 xlabel="input size (pixels per side)", ylabel="latency (s, median)", yscale="log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["b2", "b0"], choices=sorted(PVT_V2_CONFIGS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 384, 448, 640])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant after one warm-up (>= 5)")
    parser.add_argument("--batch-size", type=int, default=4, choices=range(1, 5), help="1-4 different photos")
    parser.add_argument("--extra-batch-sizes", nargs="*", type=int, default=[1],
                        help="forward also at these batch sizes (the photos repeat beyond 4)")
    parser.add_argument("--train-batch-size", type=int, default=8, help="images per training step (photos repeat)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--oracle-limit", type=float, default=60.0,
                        help="skip the reference formulation where a run would take longer (seconds)")
    parser.add_argument("--oracle-sizes", nargs="*", type=int, default=[224, 448],
                        help="sizes where the reference formulation runs whatever its time (the targets need them)")
    parser.add_argument("--baseline", metavar="REV", help="also time the clustering of git revision REV ('before')")
    parser.add_argument("--output", type=Path, default=HERE / "results", help="folder for speed.json and speed.png")
    parser.add_argument("--memory-of", nargs="+", metavar="MODEL SIZE VARIANT",
                        help="internal: print the peak memory of the variants' forwards (see peak_memory_in_child)")
    args = parser.parse_args()
    if args.memory_of:
        name, size, *variants = args.memory_of
        return print_child_peak_memory(name, int(size), variants, args.batch_size, args.threads, args.baseline)
    args.sizes = sorted(args.sizes)
    report = run(args)
    print_summary(report)
    args.output.mkdir(parents=True, exist_ok=True)
    report["settings"]["output"] = str(args.output)
    (args.output / "speed.json").write_text(json.dumps(report, indent=1, default=str))
    plot(report, args.output / "speed.png")
    print(f"\nWrote {args.output / 'speed.json'} and {args.output / 'speed.png'}")


if __name__ == "__main__":
    main()
