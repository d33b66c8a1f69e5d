"""The scalable clusterings considered for `clustering_mode="pooled"`, measured on the same tokens (issue 9).

Tokens: four real photos through ClusTR-b2's stage-1 patch embedding and first LayerNorm (random weights, C = 64),
clustered with b2's stage-1 counts (49 and 196 clusters; the pooled mode's cap keeps them there above 224x224).
For each candidate: the clustering's time alone (median of --repeats runs after a warm-up, 2 threads) and the
within-cluster squared error of the fine scale relative to the exact DPC-kNN's (the keys and values are cluster
means, so this is what the attention loses; 1.00 = as tight as exact, lower is tighter).

    python benchmarks/scalable_alternatives.py            # about 2 minutes on 2 cores
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from clustr_hf import ClusTRConfig, ClusTRModel  # noqa: E402
from clustr_hf.clustering import (  # noqa: E402
    DensityPeaks, claim_centres, density_peaks, gather_rows, join_nearest, pooled_density_peaks,
)
from conftest import photo_batch  # noqa: E402
from test_pooled_clustering import cluster_means, within_cluster_error  # noqa: E402


def sampled_density_peaks(tokens, grid, counts, k=5, tokens_per_cluster=4):
    """Density peaks of a strided subset of the tokens (no averaging), then every token to the nearest centre."""
    height, width = grid
    stride = max(1, int((height * width / (tokens_per_cluster * max(counts))) ** 0.5))
    kept = (torch.arange(0, height, stride)[:, None] * width + torch.arange(0, width, stride)[None, :]).flatten()
    subset = tokens[:, kept]
    chosen = kept[density_peaks(subset, (max(counts),), k).centres]
    assignments = join_nearest(tokens, gather_rows(tokens, chosen), counts)
    return DensityPeaks(claim_centres(assignments, chosen, counts), chosen)


def refined_density_peaks(tokens, grid, counts, k=5, tokens_per_cluster=4, steps=2):
    """The pooled mode's clusters followed by `steps` batched k-means steps on the finest scale's means."""
    clusters = pooled_density_peaks(tokens, grid, counts, k, tokens_per_cluster)
    for _ in range(steps):
        means = cluster_means(tokens, clusters.assignments[:, -1], max(counts))
        assignments = join_nearest(tokens, means, counts)
        clusters = DensityPeaks(claim_centres(assignments, clusters.centres, counts), clusters.centres)
    return clusters


def stage_one_tokens(size):
    """Four photos' stage-1 clustering input in ClusTR-b2 and its (height, width) grid."""
    torch.manual_seed(0)
    stage = ClusTRModel(ClusTRConfig.from_variant("b2")).encoder.stages[0]
    with torch.no_grad():
        embeddings, height, width = stage.patch_embeddings(photo_batch((size, size)))
        return stage.blocks[0].layer_norm_1(embeddings), (height, width)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 448])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    counts = (49, 196)
    candidates = {
        "exact DPC-kNN (default mode)": lambda tokens, grid: density_peaks(tokens, counts),
        "pooled DPC + nearest centre (chosen)": lambda tokens, grid: pooled_density_peaks(tokens, grid, counts),
        "strided-sample DPC + nearest centre": lambda tokens, grid: sampled_density_peaks(tokens, grid, counts),
        "pooled DPC + 2 k-means steps": lambda tokens, grid: refined_density_peaks(tokens, grid, counts),
    }
    print("| input | clustering | time (s, batch 4) | fine-scale within-cluster error vs exact |")
    print("|---|---|---|---|")
    for size in args.sizes:
        tokens, grid = stage_one_tokens(size)
        exact_error = None
        for name, cluster in candidates.items():
            cluster(tokens, grid)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                clusters = cluster(tokens, grid)
                times.append(time.perf_counter() - start)
            error = within_cluster_error(tokens, clusters.assignments[:, -1], counts[-1])
            exact_error = exact_error or error
            print(f"| {size}x{size} | {name} | {statistics.median(times):.3f} | {error / exact_error:.2f} |", flush=True)


if __name__ == "__main__":
    main()
