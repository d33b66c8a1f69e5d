"""What exact clustering costs on large images: seconds of one block's clustering by token count, exact and pooled.

The tokens are those b2's first clustered block clusters for scikit-image's astronaut photo (one image) at each
size; both modes cluster them with b2's stage-1 counts (pooled: capped as the model caps them). Exact clustering
compares every token with every other, so its time grows like N^2; the model warns once above
`clustr_hf.modeling_clustr.EXACT_CLUSTERING_WARNING_TOKENS` tokens in a block, the threshold these figures set.

    python benchmarks/exact_clustering_cost.py [--sizes 448 640 896 1024] [--threads 2]
"""

import argparse
import sys
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_speed import Memory  # noqa: E402
from clustr_hf import ClusTRConfig, ClusTRModel  # noqa: E402
from clustr_hf.clustering import capped_cluster_counts, cluster_counts, density_peaks, pooled_density_peaks  # noqa: E402
from clustr_hf.testing_utils import clustered_tokens, photo_batch  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 640, 896, 1024])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ClusTRConfig.from_variant("b2")
    model = ClusTRModel(config).eval()
    ratio, scales = config.cluster_reduction_ratios[0], config.cluster_scales
    seconds_of = Memory(torch.device("cpu")).measure  # (wall seconds, None: no memory reading)
    print(f"{'input':>9} {'tokens N':>9} {'exact s':>8} {'pooled s':>9}   (one image, b2 stage 1, {args.threads} threads)")
    for size in args.sizes:
        tokens = clustered_tokens(model, photo_batch((size, size), ("astronaut",)))
        grid = (-(-size // 4),) * 2
        exact, _ = seconds_of(lambda: density_peaks(tokens, cluster_counts(tokens.shape[1], ratio, scales)))
        counts = capped_cluster_counts(tokens.shape[1], ratio, scales, config.pooled_max_clusters)
        pooled, _ = seconds_of(lambda: pooled_density_peaks(tokens, grid, counts, tokens_per_cluster=4))
        print(f"{size:>4}x{size:<4} {tokens.shape[1]:>9} {exact:>8.2f} {pooled:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
