"""Honest multiply-add count of ClusTR: both attention scales and the clustering.

The paper reports 2.15 / 4.8 / 7.48 GFLOPs for b1 / b2 / b3 at 224x224, counting only the coarse-scale attention and
no clustering (docs/algorithm.md section 4). Per image, in multiply-adds (the convention of those figures: one fused
multiply-add counts 1), this prints:

  coarse only    the paper's convention: the network without the finer scales' key/value projections and products;
  both scales    the network as it runs, outside the clustering;
  clustering     the GEMMs of `density_peaks` (measured on a real photo: its float64 redo of uncertain rows and its
                 search of density peaks depend on the image) plus its exact float64 distances (C per token pair);
  reference      the reference formulation's clustering: one N x N x C distance GEMM per clustered block;
  total          both scales + clustering.

Matrix products and convolutions are counted by `torch.utils.flop_counter`; selections (top-k, minima), sorting,
normalisations, activations and other elementwise work are counted in no column.

    python benchmarks/flops.py                 # b0-b3 at 224x224
    python benchmarks/flops.py --size 448 --models b2
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_speed import clustering, free_assignment  # noqa: E402
from clustr_hf import ClusTRConfig, ClusTRModel  # noqa: E402
from clustr_hf import clustering as clustering_module  # noqa: E402
from clustr_hf.clustering import density_peaks  # noqa: E402
from clustr_hf.publishing import PAPER_GFLOPS  # noqa: E402
from clustr_hf.testing_utils import photo  # noqa: E402


def multiply_adds(model, pixel_values, function) -> float:
    """Multiply-adds of one forward with `function` as the clustering (flop_counter counts 2 per multiply-add)."""
    with clustering(function), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values)
    return counter.get_total_flops() / 2


def count(name: str, size: int) -> dict:
    """The columns of the table for one variant, in multiply-adds per image."""
    torch.manual_seed(0)
    model = ClusTRModel(ClusTRConfig.from_variant(name)).eval()
    pixel_values = photo("astronaut", (size, size))[None]
    blocks = []  # (tokens, channels, cluster counts) of every clustered block

    def free(tokens, counts, *args):
        blocks.append((tokens.shape[1], tokens.shape[2], tuple(counts)))
        return free_assignment(tokens, counts, *args)

    network = multiply_adds(model, pixel_values, free)
    exact_pairs_work = 0
    exact_squared_distances = clustering_module.exact_squared_distances

    def counted_exact_distances(points, index, others, chunk_size=None):
        nonlocal exact_pairs_work
        exact_pairs_work += others.numel() * (points.values.shape[-1] - 1)
        return exact_squared_distances(points, index, others, chunk_size)

    clustering_module.exact_squared_distances = counted_exact_distances
    try:
        with_clustering = multiply_adds(model, pixel_values, density_peaks)
    finally:
        clustering_module.exact_squared_distances = exact_squared_distances
    finer_scales = sum(
        2 * tokens * clusters * channels + clusters * channels * 2 * channels  # products, then key/value projection
        for tokens, channels, counts in blocks
        for clusters in counts[1:]
    )
    clustering_work = with_clustering - network + exact_pairs_work
    return {
        "coarse only": network - finer_scales,
        "both scales": network,
        "clustering": clustering_work,
        "reference": sum(tokens * tokens * channels for tokens, channels, _ in blocks),
        "total": network + clustering_work,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["b0", "b1", "b2", "b3"])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    columns = ["coarse only", "both scales", "clustering", "reference", "total"]
    print(f"GFLOPs (multiply-adds) per {args.size}x{args.size} image")
    print(f"{'variant':8} {'paper':>6} " + " ".join(f"{column:>12}" for column in columns))
    for name in args.models:
        counts = count(name, args.size)
        paper = f"{PAPER_GFLOPS[name]:.2f}" if name in PAPER_GFLOPS and args.size == 224 else "-"
        print(f"{name:8} {paper:>6} " + " ".join(f"{counts[column] / 1e9:12.2f}" for column in columns))


if __name__ == "__main__":
    main()
