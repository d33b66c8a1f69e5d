"""Could an exact kNN pass form fewer than the N^2 distance products? Ball pruning, with ideal and real bounds.

Issue 4's speed targets leave the whole clustering less time than the distance GEMMs themselves (see
`benchmarks/README.md`), so they need a kNN pass that skips products. The exact way to skip them is ball pruning:
group the tokens, and leave out the products of token i with group B when |x_i - c_B| - r_B (centre c_B, radius r_B)
exceeds the distance from x_i to its k-th nearest token. On the tokens of ClusTR's largest clustered blocks (random
weights, four real photos), this prints the share of the N^2 products such a pass must still form, bounded with the
*true* k-th distances (no real pass knows them beforehand, so every share is a lower bound), at three granularities:

    token:  each token against the groups it cannot rule out (ragged: its own gather of columns, no GEMM);
    group:  each group's tokens against the groups none of them rules out (one small GEMM per group);
    chunk:  `--chunk` consecutive tokens, ordered by group, against the groups none of them rules out (GEMM rows).

Groups are k-means clusters of the tokens (`--group-sizes` tokens on average; 10 Lloyd iterations over all tokens
from centres drawn with a fixed seed, a favourable grouping at no charge) or square tiles of the token grid. Then it
times, for one image, the group- and chunk-granularity products (gather of the kept columns and one GEMM per group or
chunk, nothing else) against the dense GEMM of all N^2 products in `smallest_distances`' chunks, both median of 5
after a warm-up; and a whole pruned kNN pass with the bounds a real pass has (`real_bound_pass`, a prototype) against
`smallest_distances`.

    python benchmarks/knn_pruning.py [--model b2] [--size 448] [--group-sizes 16 64] [--threads 2]
"""

import argparse
import math
import sys
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

from bench_speed import clustering_inputs, median_seconds  # noqa: E402
from clustr_hf import ClusTRConfig, ClusTRModel  # noqa: E402
from clustr_hf.clustering import CHUNK_DISTANCES, gemm_operands, smallest_distances  # noqa: E402
from conftest import photo_batch  # noqa: E402


def kth_distances(tokens, k: int, chunk: int = 1024):
    """Exact float64 distance (N,) from every token to its k-th nearest, itself included."""
    return torch.cat([torch.cdist(tokens[start : start + chunk], tokens).topk(k, largest=False).values[:, -1]
                      for start in range(0, tokens.shape[0], chunk)])


def kmeans_centres(tokens, num_groups: int, iterations: int):
    """`num_groups` centres (G, C) of Lloyd's k-means on `tokens`, from tokens drawn with a fixed seed."""
    generator = torch.Generator().manual_seed(0)
    centres = tokens[torch.randperm(tokens.shape[0], generator=generator)[:num_groups]]
    for _ in range(iterations):
        group = torch.cdist(tokens, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, group, tokens)
        counts = torch.bincount(group, minlength=num_groups)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


def kmeans_groups(tokens, num_groups: int, iterations: int = 10):
    """Group (N,) of every token: its nearest of the k-means centres of all tokens."""
    return torch.cdist(tokens, kmeans_centres(tokens, num_groups, iterations)).argmin(1)


def ball_lower_bounds(to_centres, own_distance, group):
    """Lower bound (N, G) on the distance from token i to any token of group B: |x_i - c_B| - r_B, from the tokens'
    distances `to_centres` (N, G) and each token's `own_distance` to its group's centre (r_B: their largest in B)."""
    radius = torch.zeros(to_centres.shape[1], dtype=to_centres.dtype).scatter_reduce_(0, group, own_distance, "amax")
    return to_centres - radius


def group_members(group):
    """The tokens in group order (N,), and the members of every non-empty group, ascending by group."""
    order = torch.argsort(group, stable=True)
    return order, [rows for rows in order.split(torch.bincount(group).tolist()) if len(rows)]


def real_bound_pass(tokens, group_size: int, k: int, count: int):
    """A ball-pruned kNN pass with the bounds a real one has: the `count` nearest (N, count) and the share of the N^2
    products it formed. A prototype for timing only (no float32 rounding bound, no float64 certification).

    Groups are k-means on a sample (three Lloyd iterations, eight tokens per centre). A group's members meet the
    members of the three groups of nearest centre (their own included) for an upper bound on each k-th distance,
    then, in one GEMM, the members of every group that one of them cannot rule out.
    """
    num_tokens = tokens.shape[0]
    num_groups = num_tokens // group_size
    sample = tokens[torch.randperm(num_tokens, generator=torch.Generator().manual_seed(1))[: 8 * num_groups]]
    centres = kmeans_centres(sample, num_groups, iterations=3)
    to_centres = torch.cdist(tokens, centres)
    group = to_centres.argmin(1)
    lower_bound = ball_lower_bounds(to_centres, to_centres.gather(1, group[:, None])[:, 0], group)
    order, members = group_members(group)
    sorted_group = group[order]
    nearest_groups = torch.cdist(centres, centres).topk(3, largest=False).indices
    squared_norms = tokens.square().sum(1)
    nearest, formed = torch.zeros(num_tokens, count, dtype=torch.long), 0
    for rows in members:
        near = order[torch.isin(sorted_group, nearest_groups[group[rows[0]]])]
        upper_bound = torch.cdist(tokens[rows], tokens[near]).topk(min(k, len(near)), largest=False).values[:, -1]
        if len(near) < k:
            upper_bound.fill_(float("inf"))
        columns = order[(lower_bound[rows] < upper_bound[:, None]).any(0)[sorted_group]]
        distances = squared_norms[columns] - 2 * tokens[rows] @ tokens[columns].T
        nearest[rows] = columns[distances.topk(min(count, len(columns)), largest=False).indices]
        formed += len(rows) * len(columns)
    return nearest, formed / num_tokens**2


def tile_groups(num_tokens: int, tile: int):
    """Group (N,) of every token of a square token grid: its `tile` x `tile` tile."""
    side = math.isqrt(num_tokens)
    index = torch.arange(side)
    return ((index[:, None] // tile) * -(-side // tile) + index[None, :] // tile).flatten()


def needed_groups(tokens, group, kth):
    """Sizes (G,) of the groups and the (N, G) mask of the groups each token cannot rule out."""
    num_groups = int(group.max()) + 1
    sizes = torch.bincount(group, minlength=num_groups)
    centres = torch.zeros(num_groups, tokens.shape[1], dtype=tokens.dtype).index_add_(0, group, tokens)
    centres = centres / sizes.clamp_min(1)[:, None]
    lower_bound = ball_lower_bounds(torch.cdist(tokens, centres), (tokens - centres[group]).norm(dim=1), group)
    return sizes, (lower_bound < kth[:, None]) & (sizes > 0)


def row_sets(group, chunk: int):
    """The token sets the group and chunk granularities compute together: the groups, and `chunk` consecutive tokens
    in group order."""
    order, members = group_members(group)
    return {"group": members, "chunk": list(order.split(chunk))}


def kept_products(need, sizes, rows) -> int:
    """Products formed when the tokens `rows` meet every group that one of them cannot rule out."""
    return len(rows) * int(sizes[need[rows].any(0)].sum())


def pruned_gemms(tokens, need, group, sets):
    """A callable forming each set's kept products: a gather of its kept columns and one GEMM."""
    plans = [(tokens[rows], torch.isin(group, torch.nonzero(need[rows].any(0))[:, 0]).nonzero()[:, 0])
             for rows in sets]

    def run():
        for rows, columns in plans:
            rows @ tokens.index_select(0, columns).T

    return run


def dense_gemm(tokens):
    """A callable forming all N^2 products in the kNN pass's chunks of rows."""
    chunk = max(16, CHUNK_DISTANCES // tokens.shape[0])

    def run():
        for start in range(0, tokens.shape[0], chunk):
            tokens @ tokens[start : start + chunk].T

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="b2", choices=["b0", "b1", "b2", "b3"])
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--group-sizes", nargs="+", type=int, default=[16, 64], help="mean tokens per k-means group")
    parser.add_argument("--tiles", nargs="+", type=int, default=[4], help="sides of square grid tiles")
    parser.add_argument("--chunk", type=int, default=256, help="tokens per chunk of the chunk granularity")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ClusTRConfig.from_variant(args.model)
    model = ClusTRModel(config).eval()
    tokens, _ = clustering_inputs(model, photo_batch((args.size, args.size)))[0]
    k = config.cluster_num_neighbors
    print(f"ClusTR-{args.model} {args.size}x{args.size}, first clustered block, tokens {tuple(tokens.shape)}, k = {k}")
    print("share of the N^2 products an exact pruned kNN pass still forms, with the true k-th distances as bounds")
    print(f"{'image':>5} {'groups':>13} {'token':>6} {'group':>6} {'chunk':>6}")
    groupings = [(f"k-means {size}", lambda x, size=size: kmeans_groups(x, x.shape[0] // size))
                 for size in args.group_sizes]
    groupings += [(f"tile {tile}x{tile}", lambda x, tile=tile: tile_groups(x.shape[0], tile)) for tile in args.tiles]
    timing = None
    for image, image_tokens in enumerate(tokens.double()):
        kth = kth_distances(image_tokens, k)
        num_products = image_tokens.shape[0] ** 2
        for name, grouping in groupings:
            group = grouping(image_tokens)
            sizes, need = needed_groups(image_tokens, group, kth)
            sets = row_sets(group, args.chunk)
            token_share = float((need * sizes).sum(1).sum()) / num_products
            shares = {level: sum(kept_products(need, sizes, rows) for rows in sets[level]) / num_products
                      for level in ("group", "chunk")}
            print(f"{image:5} {name:>13} {token_share:6.1%} {shares['group']:6.1%} {shares['chunk']:6.1%}", flush=True)
            if timing is None:
                timing = (name, image_tokens.float(), need, group, sets, shares)
    name, image_tokens, need, group, sets, shares = timing
    calls = {"dense, all N^2": dense_gemm(image_tokens)}
    calls.update({f"{level}, {shares[level]:.0%} kept": pruned_gemms(image_tokens, need, group, sets[level])
                  for level in ("group", "chunk")})
    print(f"\nimage 0, {name} groups: GEMM time of the products each granularity forms (median of 5)")
    for label, call in calls.items():
        call()
        print(f"{label:>22}: {median_seconds(call, 5):.4f} s", flush=True)
    centred = image_tokens - image_tokens.mean(0)
    operands = gemm_operands(centred[None], torch.float32)
    count = 2 * k
    print(f"\nimage 0, whole kNN pass ({count} nearest of every token, median of 3):")
    dense_pass = lambda: smallest_distances(operands.rows, operands.columns, count, chunk_size=256)  # noqa: E731
    dense_pass()
    print(f"{'smallest_distances':>22}: {median_seconds(dense_pass, 3):.3f} s (all N^2 products)", flush=True)
    _, share = real_bound_pass(centred, args.group_sizes[0], k, count)
    pruned_pass = lambda: real_bound_pass(centred, args.group_sizes[0], k, count)  # noqa: E731
    print(f"{'real_bound_pass':>22}: {median_seconds(pruned_pass, 3):.3f} s ({share:.0%} of the products, k-means "
          f"groups of {args.group_sizes[0]})", flush=True)


if __name__ == "__main__":
    main()
