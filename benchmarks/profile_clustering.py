"""Where the clustering's time goes in a ClusTR forward: a torch.profiler table per pass and per operator.

Profiles one forward of ClusTR (random weights, real photos, eval, fp32, batch 4) after a warm-up, at each --sizes.
Each step of `clustr_hf.clustering` is wrapped in a `record_function` range, so the first table splits the
clustering's time into its passes (nested: a pass's total includes the steps it calls); the second lists the operators
by self time. Printed next to them: the distance GEMMs alone (one (B, N, N) product per clustered block), the budget
of the clustering's target (1.3x those GEMMs). The last table, per size: the clustering of every clustered block,
timed without the profiler on the tokens it clusters in the forward, against those GEMMs (medians of --repeats runs,
the two interleaved). With --per-block, first a table of every clustered block: its clustering against the bare
distance GEMM of the same tokens.

    python benchmarks/profile_clustering.py [--model b2] [--sizes 224 448] [--threads 2] [--per-block]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_speed import clustering_inputs, distance_gemms, median_seconds  # noqa: E402
from clustr_hf import ClusTRConfig, ClusTRModel  # noqa: E402
from clustr_hf import clustering  # noqa: E402
from clustr_hf.testing_utils import photo_batch  # noqa: E402


STEPS = [
    "density_peaks", "dense_centres", "certified_centres", "nearest_neighbours", "smallest_distances",
    "exact_squared_distances", "listed_radius", "redo_uncertain", "nearest_denser", "rank_centres",
    "assign_to_centres", "nearest_of_centres", "gemm_operands", "claim_centres",
]


def labelled(name, function):
    def call(*args, **kwargs):
        with record_function(f"clustering.{name}"):
            return function(*args, **kwargs)

    return call


def print_per_block(inputs, repeats):
    """Each clustered block's clustering against the bare GEMM of its tokens (`inputs` from `clustering_inputs`), and
    each token count's share."""
    print(f"{'block':>5} {'tokens (B, N, C)':>18} {'counts':>10} {'clustering s':>13} {'GEMM s':>9} {'ratio':>6}")
    seconds_by_count = {}
    for block, (tokens, counts) in enumerate(inputs):
        cluster, bare_gemm = lambda: clustering.density_peaks(tokens, counts), lambda: torch.bmm(tokens, tokens.mT)
        cluster(), bare_gemm()  # warm-up
        seconds, gemm_seconds = median_seconds(cluster, repeats), median_seconds(bare_gemm, repeats)
        seconds_by_count[tokens.shape[1]] = seconds_by_count.get(tokens.shape[1], 0.0) + seconds
        print(f"{block:5} {str(tuple(tokens.shape)):>18} {str(counts):>10} {seconds:13.3f} {gemm_seconds:9.4f} "
              f"{seconds / gemm_seconds:6.2f}")
    total = sum(seconds_by_count.values())
    print("share of the clustering by N: " + ", ".join(
        f"N = {count}: {seconds / total:.0%}" for count, seconds in seconds_by_count.items()) + "\n")


def time_clustering(inputs, gemms, repeats):
    """Median seconds of the clustering of every block in `inputs` and of the `gemms`, interleaved run by run."""
    def cluster():
        for tokens, counts in inputs:
            clustering.density_peaks(tokens, counts)

    cluster(), gemms()  # warm-up
    seconds = {cluster: [], gemms: []}
    for _ in range(repeats):
        for call in seconds:
            seconds[call].append(median_seconds(call, 1))
    return statistics.median(seconds[cluster]), statistics.median(seconds[gemms])


def profile_size(model, size, args):
    """Prints the profile of one forward at `size`; returns (size, clustering seconds, GEMM seconds) unprofiled."""
    pixel_values = photo_batch((size, size))
    inputs = clustering_inputs(model, pixel_values)
    if args.per_block:
        print_per_block(inputs, args.repeats)
    gemms = distance_gemms([tuple(tokens.shape) for tokens, _ in inputs], pixel_values.device)
    gemms()
    start = time.perf_counter()
    gemms()
    gemm_seconds = time.perf_counter() - start

    originals = {name: getattr(clustering, name) for name in STEPS}
    for name, function in originals.items():
        setattr(clustering, name, labelled(name, function))
    import clustr_hf.modeling_clustr as modeling_clustr

    modeling_density_peaks = modeling_clustr.density_peaks
    modeling_clustr.density_peaks = clustering.density_peaks
    try:
        with torch.no_grad():
            model(pixel_values)
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                model(pixel_values)
    finally:
        modeling_clustr.density_peaks = modeling_density_peaks
        for name, function in originals.items():
            setattr(clustering, name, function)

    averages = profiler.key_averages()
    steps = sorted((event for event in averages if event.key.startswith("clustering.")), key=lambda e: -e.cpu_time_total)
    clustering_seconds = next(e.cpu_time_total for e in steps if e.key == "clustering.density_peaks") / 1e6
    print(f"ClusTR-{args.model}, {size}x{size}, batch {pixel_values.shape[0]}, {args.threads} threads")
    print(f"distance GEMMs alone {gemm_seconds:.3f} s; target budget (1.3x) {1.3 * gemm_seconds:.3f} s; "
          f"clustering under the profiler {clustering_seconds:.3f} s ({clustering_seconds / gemm_seconds:.2f}x)")
    print(f"\n{'step (nested totals)':36} {'total s':>8} {'share':>7} {'calls':>6}")
    for event in steps:
        seconds = event.cpu_time_total / 1e6
        print(f"{event.key:36} {seconds:8.3f} {seconds / clustering_seconds:7.1%} {event.count:6}")
    print()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return (size, *time_clustering(inputs, gemms, args.repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="b2")
    parser.add_argument("--sizes", "--size", nargs="+", type=int, default=[224])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25, help="rows of the operator table")
    parser.add_argument("--per-block", action="store_true", help="first time every clustered block on its own")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the clustering and of the GEMMs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ClusTRModel(ClusTRConfig.from_variant(args.model)).eval()
    summary = [profile_size(model, size, args) for size in args.sizes]
    print(f"\nClusTR-{args.model}, batch 4, {args.threads} threads: the clustering of every clustered block against "
          f"its distance GEMMs (median of {args.repeats}, without the profiler)")
    print("| input | clustering s | distance GEMMs s | ratio (target <= 1.3) |\n|---|---|---|---|")
    for size, seconds, gemm_seconds in summary:
        print(f"| {size}x{size} | {seconds:.3f} | {gemm_seconds:.3f} | {seconds / gemm_seconds:.2f}x |")


if __name__ == "__main__":
    main()
