"""Operators and host syncs of one forward, by batch size: what a GPU pays in kernel launches and synchronisations.

Counts, with torch.profiler on the CPU, the top-level `aten::` operators (those not called by another aten operator)
and the host syncs (`aten::_local_scalar_dense`, which every `.item()`, `int(tensor)` and `bool(tensor)` runs, and the
operators whose output size depends on data: `aten::nonzero`, `aten::masked_select`, `aten::equal`) of one eval
forward of ClusTRModel in exact and pooled mode and of transformers' PvtV2Model, after a warm-up, on real photos.

    python benchmarks/count_ops.py [--model b2] [--size 224] [--batch-sizes 1 8 16]
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_speed import PVT_V2_CONFIGS  # noqa: E402
from clustr_hf import ClusTRConfig, ClusTRModel  # noqa: E402
from clustr_hf.testing_utils import photo_batch  # noqa: E402
from transformers import PvtV2Config, PvtV2Model  # noqa: E402


SYNC_OPERATORS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::equal"}


def is_nested(event) -> bool:
    """Whether `event` runs inside another aten operator."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def count_operators(model, pixel_values) -> tuple[int, int]:
    """(top-level aten operators, host syncs) of one forward of `model` after a warm-up."""
    with torch.no_grad():
        model(pixel_values)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            model(pixel_values)
    events = [event for event in profiler.events() if event.name.startswith("aten::")]
    return sum(not is_nested(event) for event in events), sum(event.name in SYNC_OPERATORS for event in events)


def models(name: str) -> dict:
    """The compared models, random weights, eval mode."""
    torch.manual_seed(0)
    exact = ClusTRModel(ClusTRConfig.from_variant(name)).eval()
    pooled = ClusTRModel(ClusTRConfig.from_variant(name, clustering_mode="pooled")).eval()
    pooled.load_state_dict(exact.state_dict())
    pvt = PvtV2Model(PvtV2Config(**PVT_V2_CONFIGS[name])).eval()
    return {f"ClusTR-{name} exact": exact, f"ClusTR-{name} pooled": pooled, f"PvtV2-{name}": pvt}


def clustered_blocks(model) -> int:
    return sum(len(stage.blocks) for stage, ratio in zip(model.encoder.stages, model.config.cluster_reduction_ratios)
               if ratio > 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="b2", choices=sorted(PVT_V2_CONFIGS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    compared = models(args.model)
    table = {}
    for batch_size in args.batch_sizes:
        pixel_values = photo_batch((args.size, args.size), batch_size=batch_size)
        for label, model in compared.items():
            table[label, batch_size] = count_operators(model, pixel_values)
    blocks = clustered_blocks(compared[f"ClusTR-{args.model} exact"])
    print(f"Operators / host syncs of one {args.size}x{args.size} forward (eval; {blocks} clustered blocks)\n")
    print("| model | " + " | ".join(f"batch {size}" for size in args.batch_sizes) + " |")
    print("|---|" + "---|" * len(args.batch_sizes))
    for label in compared:
        cells = [f"{table[label, size][0]:,} / {table[label, size][1]}" for size in args.batch_sizes]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return table


if __name__ == "__main__":
    main()
