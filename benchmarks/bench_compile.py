"""Does torch.compile speed up the clustering? (issue 4 asks to keep it only if it does.)

Times `density_peaks` on the stage-1 tokens of ClusTR-b2 (random weights, real photos, batch 4) in three forms:
  eager             as shipped;
  compiled kNN      its hot spot, the chunked GEMM + block-minima selection (`smallest_distances`), compiled;
  compiled all      the whole function compiled (under compilation it takes its static-shape path: every token is
                    redone in float64 and searched, so this mostly measures that path's price).
All three must give identical clusters. Compilation time is reported separately from the median run time.

    python benchmarks/bench_compile.py [--size 224] [--repeats 5]
"""

import argparse
import sys
import time
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

from bench_speed import clustering_inputs, median_seconds  # noqa: E402
from clustr_hf import ClusTRConfig, ClusTRModel  # noqa: E402
from clustr_hf import clustering as clustering_module  # noqa: E402
from conftest import photo_batch  # noqa: E402


def stage_one_tokens(size):
    """The tokens (and cluster counts) the first clustered block of ClusTR-b2 clusters for a batch of 4 photos."""
    torch.manual_seed(0)
    return clustering_inputs(ClusTRModel(ClusTRConfig.from_variant("b2")).eval(), photo_batch((size, size)))[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokens, counts = stage_one_tokens(args.size)
    eager = clustering_module.density_peaks
    reference = eager(tokens, counts)
    smallest_distances = clustering_module.smallest_distances
    forms = {
        "eager": (eager, None),
        "compiled kNN": (eager, torch.compile(smallest_distances, dynamic=False)),
        "compiled all": (torch.compile(eager, dynamic=False), None),
    }
    print(f"density_peaks on {tuple(tokens.shape)} tokens, counts {counts}, {args.threads} threads")
    for name, (function, hot_spot) in forms.items():
        clustering_module.smallest_distances = hot_spot or smallest_distances
        try:
            start = time.perf_counter()
            result = function(tokens, counts)
            first = time.perf_counter() - start
            same = torch.equal(result.assignments, reference.assignments)
            seconds = median_seconds(lambda: function(tokens, counts), args.repeats)
        finally:
            clustering_module.smallest_distances = smallest_distances
        print(f"  {name:13} median {seconds:.3f} s   first call (with compilation) {first:.1f} s   "
              f"same clusters: {same}")


if __name__ == "__main__":
    main()
