"""DPC-kNN: density-peaks clustering of tokens with k nearest neighbours (ALGORITHM.md section 3).

Exact, without ever holding the N x N distance matrix: distances come `chunk_size` rows at a time from one batched
GEMM, reduced at once, so memory is O(chunk_size * N) per image. Three passes:

1. the k nearest neighbours of every token (its density), block minima pruning the selection so that it costs little
   beside the GEMM;
2. the nearest denser token (its delta), read off the neighbour lists for all tokens but the few local density peaks,
   which alone are searched, among their denser tokens only;
3. the nearest centre of every token, one pass serving every scale.

Float32 prunes, float64 decides. A float32 GEMM's rounding (relative to the tokens' norms, not to their distances)
would otherwise decide between near-equal distances that the float64 reference tells apart, as flat image regions
produce by the hundred. So pass 1 keeps `2k` float32 candidates per token, recomputes their distances by direct
float64 differences (equal tokens exactly 0 apart) and certifies, with a rigorous bound on the float32 rounding, that
no other token is nearer; pass 3 certifies that the runner-up centre is farther by more than twice the bound. The
tokens either pass cannot certify are redone with a float64 GEMM, as are pass 2's searches (few rows). The redone
tokens and the searched peaks are data-dependent subsets; under tracing or export every token is redone and searched
instead, the same result with static shapes. The batch only batches the GEMMs: every image is clustered on its own.

`pooled_density_peaks` is the opt-in scalable mode (`clustering_mode="pooled"`), not the paper's clustering: density
peaks of the token grid average-pooled to a few cells per cluster, then every token joins the nearest chosen cell
mean, so that a block costs O(N M) instead of O(N^2).
"""

import functools
import math
from typing import NamedTuple

import torch


CHUNK_DISTANCES = 2**21
"""Distances per image a GEMM chunk of the kNN pass produces at most (8 MB of float32): larger chunks leave the
cache before they are reduced (measured twice as slow at N = 12544)."""


def cluster_counts(num_tokens: int, reduction_ratio: int, scales) -> tuple[int, ...]:
    """Clusters per scale for `num_tokens` tokens (2.2 step 3): `scale * (N // r**2)`, raised to 1, clipped to N."""
    base = num_tokens // reduction_ratio**2
    return tuple(min(max(scale * base, 1), num_tokens) for scale in scales)


def is_static() -> bool:
    """Whether shapes must not depend on data (tracing, torch.compile or torch.export)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def rows_where(mask):
    """Ascending indices (B, S) of the rows where `mask` (B, N) holds, S the largest count of the batch (shorter lists
    padded with other rows); every row when shapes must be static."""
    if is_static():
        return torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    count = int(mask.sum(1).max())
    return torch.argsort(~mask, dim=1, stable=True)[:, :count].sort(dim=1).values


def gather_rows(values, index):
    """`values` (B, N, ...) at the token indices `index` (B, ...) of the same image: (B, *index.shape[1:], ...)."""
    batch_size, num_tokens = values.shape[:2]
    offsets = torch.arange(batch_size, device=index.device).view(-1, *(1 for _ in index.shape[1:])) * num_tokens
    return values.flatten(0, 1).index_select(0, (index + offsets).flatten()).view(*index.shape, *values.shape[2:])


def replace_rows(values, rows, replace, new_values):
    """`values` (B, N, ...) with its rows at indices `rows` (B, S) set to `new_values` (B, S, ...) where `replace`."""
    trailing = (1,) * (new_values.dim() - 2)
    index = rows.view(*rows.shape, *trailing).expand_as(new_values)
    kept = values.gather(1, index)
    return values.scatter(1, index, torch.where(replace.view(*replace.shape, *trailing), new_values, kept))


class Operands(NamedTuple):
    """GEMM operands of the centred tokens: `rows @ columns.T` is the matrix of squared distances; `norm` (B, N) holds
    the centred tokens' norms, from which `rounding_bound` bounds each entry's rounding."""

    rows: torch.Tensor
    columns: torch.Tensor
    norm: torch.Tensor


def gemm_operands(tokens, dtype) -> Operands:
    """Rows `[x_i, |x_i|^2, 1]` and columns `[-2 x_j, 1, |x_j|^2]` of the tokens centred in `dtype`."""
    centred = tokens.to(dtype) - tokens.to(dtype).mean(dim=1, keepdim=True)
    norms = centred.square().sum(-1, keepdim=True)
    ones = torch.ones_like(norms)
    return Operands(torch.cat([centred, norms, ones], -1), torch.cat([-2 * centred, ones, norms], -1),
                    norms[..., 0].double().sqrt())


def rounding_factor(operands) -> float:
    """f such that `f (|x_i| + |x_j|)^2` bounds the rounding of the GEMM entry (i, j).

    Centring and the C+2 term sums round by at most `(2C + 8) u (|x_i| + |x_j|)^2` (`u` the unit roundoff); the
    `(1 - u)^2` divisor covers the centring's rounding when a norm is itself bounded through a distance.
    """
    unit_roundoff = torch.finfo(operands.rows.dtype).eps / 2
    return (2 * (operands.rows.shape[-1] - 2) + 8) * unit_roundoff / (1 - unit_roundoff) ** 2


def rounding_bound(operands, row_norm, column_norm):
    """Bound on the rounding of the GEMM entries (i, j) for centred norms `row_norm` and `column_norm` (broadcast)."""
    return rounding_factor(operands) * (row_norm + column_norm) ** 2


def listed_radius(operands, largest, row_norm):
    """Squared radius (B, R) within which a row's every token is listed, the unlisted GEMM values being at least
    `largest` (B, R).

    The larger of two certified radii: the worst case, every token's norm at most the image's largest; and the
    largest R with `R + rounding_bound(|x_i|, |x_i| + sqrt R) <= largest`, since a token within sqrt R of x_i has
    a norm at most `|x_i| + sqrt R` (much tighter when a few tokens have outlying norms).
    """
    largest = largest.double()
    worst_case = largest - rounding_bound(operands, row_norm, operands.norm.amax(1, keepdim=True))
    factor = rounding_factor(operands)
    slack = (largest - 4 * factor * row_norm**2).clamp_min(0)  # (1 + f) s^2 + 4 f a s = slack, s = sqrt R
    root = slack / (2 * factor * row_norm + torch.sqrt(4 * (factor * row_norm) ** 2 + (1 + factor) * slack))
    near = torch.where(slack > 0, root, 0.0).square() * (1 - 1e-9)  # the margin absorbs this evaluation's rounding
    return torch.maximum(worst_case, near).clamp_min(0)


def exact_squared_distances(tokens, rows, others, chunk_size: int):
    """`|x_i - x_j|^2` in float64 (B, S, m) for the tokens i at `rows` (B, S) and their `others` (B, S, m) tokens j.

    Direct differences: float32 tokens subtract and square exactly in float64, only the sum rounds, and equal tokens
    are exactly 0 apart.
    """
    tokens = tokens.double()
    distances = []
    for start in range(0, rows.shape[1], chunk_size):
        chunk = slice(start, start + chunk_size)
        differences = gather_rows(tokens, others[:, chunk]).sub_(gather_rows(tokens, rows[:, chunk])[:, :, None])
        distances.append(differences.square_().sum(-1))
    return torch.cat(distances, dim=1)


def smallest_distances(rows, columns, count: int, chunk_size: int):
    """Indices (B, R, count) of the `count` smallest entries of every row of `rows @ columns.T`, and their largest.

    Columns are grouped into blocks of `width`; the `count` smallest of a row lie in the `count` blocks of smallest
    minimum (any other block's entries are all at least as large as those minima), so a full-row reduction (block
    minima) and two short selections replace a selection over the whole row. Distances are laid out (B, N, rows):
    every reduction over columns then runs across rows, which vectorises.
    """
    batch_size, num_tokens, _ = columns.shape
    width = max(1, min(2 ** round(math.log2(math.sqrt(num_tokens / count))), num_tokens // count))
    num_blocks = -(-num_tokens // width)
    padding = columns.new_zeros(batch_size, num_blocks * width - num_tokens, columns.shape[-1])
    padding[..., -1] = float("inf")  # padded columns are infinitely far from every row
    columns = torch.cat([columns, padding], dim=1)
    chunk_size = min(chunk_size, max(16, CHUNK_DISTANCES // num_tokens))
    indices, largest = [], []
    for start in range(0, rows.shape[1], chunk_size):
        chunk_rows = rows[:, start : start + chunk_size].transpose(1, 2)
        distances = torch.bmm(columns, chunk_rows).unflatten(1, (num_blocks, width))
        blocks = distances.amin(2).topk(count, dim=1, largest=False, sorted=False).indices
        candidates = distances.gather(1, blocks[:, :, None].expand(-1, -1, width, -1)).flatten(1, 2)
        values, nearest = candidates.topk(count, dim=1, largest=False, sorted=False)
        indices.append((blocks.gather(1, nearest // width) * width + nearest % width).transpose(1, 2))
        largest.append(values.amax(1))
    return torch.cat(indices, dim=1), torch.cat(largest, dim=1)


class Neighbours(NamedTuple):
    """Tokens' nearest tokens: `index` (B, R, K) and float64 squared `distance` (B, R, K), and `radius` (B, R): every
    token closer than `radius` is listed."""

    index: torch.Tensor
    distance: torch.Tensor
    radius: torch.Tensor


def listed_neighbours(tokens, operands, rows, count: int, chunk_size: int) -> Neighbours:
    """The `count` nearest tokens (by the `operands`' GEMM) of the tokens at `rows` (B, R), with exact distances.

    Every token within the `listed_radius` (B, R) is listed.
    """
    index, largest = smallest_distances(gather_rows(operands.rows, rows), operands.columns, count, chunk_size)
    radius = listed_radius(operands, largest, gather_rows(operands.norm, rows))
    if count == tokens.shape[1]:
        radius = torch.full_like(radius, float("inf"))
    return Neighbours(index, exact_squared_distances(tokens, rows, index, chunk_size), radius)


def decide_rows(decide, precisions, batch_size: int, num_tokens: int, device):
    """`decide(operands, images, rows)` for every token with the first precision's `Operands`, then again with each
    next precision for the tokens it left uncertain, image by image so that only those are computed.

    `decide` gets a slice `images` of the batch and token indices `rows` (b, R) of those images, and returns (b, R, ...)
    tensors, the last of them the (b, R) uncertainty. The last precision's answers are final. When shapes must be
    static, every token is redone.
    """
    rows = torch.arange(num_tokens, device=device).expand(batch_size, -1)
    first, *finer = precisions
    results = decide(first, slice(None), rows)
    for operands in finer:
        if is_static():  # every token redone, the whole batch at once: no shape depends on the data or batch size
            redone = decide(operands, slice(None), rows)
            results = tuple(replace_rows(old, rows, results[-1], new) for old, new in zip(results, redone))
            continue
        if not results[-1].any():
            break
        images = []
        for image in range(batch_size):
            one = tuple(values[image : image + 1] for values in results)
            rows = rows_where(one[-1])
            if rows.shape[1]:
                redone = decide(operands, slice(image, image + 1), rows)
                replace = one[-1].gather(1, rows)
                one = tuple(replace_rows(old, rows, replace, new) for old, new in zip(one, redone))
            images.append(one)
        results = tuple(torch.cat(parts) for parts in zip(*images))
    return results


def nearest_neighbours(tokens, precisions, k: int, chunk_size: int) -> Neighbours:
    """The `2k` nearest tokens of every token, itself included, certain to contain its k nearest (3 step 2).

    A token's list is certain when its k-th exact distance is within its radius; the others are redone with the next
    precision. Lists come sorted by exact distance, nearest first.
    """
    count = min(2 * k, tokens.shape[1])

    def decide(operands, images, rows):
        image_operands = Operands(*(values[images] for values in operands))
        neighbours = listed_neighbours(tokens[images], image_operands, rows, count, chunk_size)
        return (*neighbours, neighbours.distance.topk(k, dim=-1, largest=False).values[..., -1] > neighbours.radius)

    *neighbours, _ = decide_rows(decide, precisions, *tokens.shape[:2], tokens.device)
    index, distance, radius = neighbours
    order = torch.sort(distance, dim=-1, stable=True).indices
    return Neighbours(index.gather(-1, order), distance.gather(-1, order), radius)


def search_denser(rows, columns, positions, chunk_size: int):
    """Position of the nearest denser token of the tokens at density-order `positions` (B, P), sorted ascending.

    `rows` and `columns` are in density order, so the denser tokens of a token are exactly those before it and each
    chunk of rows only meets the columns up to its last position.
    """
    nearest = []
    for start in range(0, positions.shape[1], chunk_size):
        chunk = positions[:, start : start + chunk_size]
        end = min(start + chunk_size, positions.shape[1]) if is_static() else int(chunk.max()) + 1
        distances = torch.bmm(gather_rows(rows, chunk), columns[:, :end].transpose(1, 2))
        not_denser = torch.arange(end, device=chunk.device) >= chunk[..., None]
        nearest.append(distances.masked_fill_(not_denser, float("inf")).argmin(-1))
    return torch.cat(nearest, dim=1)


def nearest_denser(operands, neighbours: Neighbours, rank, order, chunk_size: int):
    """Index of the nearest denser token of every token (B, N) (3 step 3), denser per 3.3: `rank` (0 = densest) and
    its inverse `order` (the tokens densest first).

    A listed denser token within the list's radius is the nearest denser one (no unlisted token is closer). The
    others, local density peaks, are searched with the float64 `operands`; the densest of all gets itself.
    """
    listed_denser = gather_rows(rank, neighbours.index) < rank[..., None]
    certain = listed_denser & (neighbours.distance <= neighbours.radius[..., None])
    nearest = neighbours.index.gather(-1, certain.to(torch.uint8).argmax(-1, keepdim=True))[..., 0]  # nearest first
    peak = ~certain.any(-1).gather(1, order)  # in density order
    positions = rows_where(peak)
    sorted_rows, sorted_columns = gather_rows(operands.rows, order), gather_rows(operands.columns, order)
    found = order.gather(1, search_denser(sorted_rows, sorted_columns, positions, chunk_size))
    return replace_rows(nearest, order.gather(1, positions), peak.gather(1, positions), found)


def rank_centres(density, denser_distance, num_channels: int, num_centres: int):
    """The `num_centres` tokens of largest score `g = rho * delta`, best first, ties to the lower index (3 step 4).

    The densest token has no denser token; the reference gives it `delta = max D`, which makes its score the
    largest of all, so scoring it `inf` ranks it exactly as the reference does.
    """
    score = torch.where(torch.isinf(denser_distance), float("inf"), density * torch.sqrt(denser_distance / num_channels))
    return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :num_centres]


def nearest_centres(operands, rows, centres, counts, chunk_size: int):
    """Nearest of the first `counts[s]` `centres` (b, M) for each scale s, of the tokens at `rows` (b, R): (b, R, S)
    cluster numbers (ties to the lower), and whether some scale's runner-up is within twice the rounding bound."""
    centre_columns = gather_rows(operands.columns, centres).transpose(1, 2)
    largest_centre_norm = gather_rows(operands.norm, centres).amax(1, keepdim=True)
    clusters, uncertain = [], []
    for start in range(0, rows.shape[1], chunk_size):
        chunk = rows[:, start : start + chunk_size]
        distances = torch.bmm(gather_rows(operands.rows, chunk), centre_columns)
        margin = 2 * rounding_bound(operands, gather_rows(operands.norm, chunk), largest_centre_norm)
        nearest, close_call = [], torch.zeros_like(margin, dtype=torch.bool)
        for count in counts:
            candidates = distances[:, :, :count]
            best = candidates.argmin(-1, keepdim=True)
            runner_up = candidates.scatter(-1, best, float("inf")).amin(-1)
            close_call |= runner_up - candidates.gather(-1, best)[..., 0] <= margin
            nearest.append(best)
        clusters.append(torch.cat(nearest, dim=-1))
        uncertain.append(close_call)
    return torch.cat(clusters, dim=1), torch.cat(uncertain, dim=1)


def assign_to_centres(tokens, precisions, centres, counts, chunk_size: int):
    """Nearest-centre cluster of every token for each scale (3 step 5); scale s uses the first `counts[s]` centres.

    One distance pass to the centres of the finest scale serves every scale; a scale with one cluster per token
    needs none. Close calls are redone with the next precision. Ties go to the lower cluster number, and every centre
    belongs to its own cluster.
    """
    batch_size, num_tokens, _ = tokens.shape
    computed = [scale for scale, count in enumerate(counts) if count < num_tokens]
    assignments = torch.zeros(batch_size, len(counts), num_tokens, dtype=torch.long, device=tokens.device)
    if computed:
        scale_counts = [counts[scale] for scale in computed]
        candidates = centres[:, : max(scale_counts)]

        def decide(operands, images, rows):
            image_operands = Operands(*(values[images] for values in operands))
            return nearest_centres(image_operands, rows, candidates[images], scale_counts, chunk_size)

        clusters, _ = decide_rows(decide, precisions, batch_size, num_tokens, tokens.device)
        assignments[:, computed] = clusters.transpose(1, 2)
    return claim_centres(assignments, centres, counts)


def claim_centres(assignments, centres, counts):
    """`assignments` (B, scales, N) with every centre in its own cluster: scale s's cluster c holds `centres[:, c]`."""
    for scale, count in enumerate(counts):
        own_cluster = torch.arange(count, device=centres.device).expand(centres.shape[0], count)
        assignments[:, scale].scatter_(1, centres[:, :count], own_cluster)
    return assignments


def gemm_precisions(tokens) -> tuple[Operands, ...]:
    """The `Operands` each decision is tried with in turn: float32 first (unless the tokens are float64), then float64."""
    exact = gemm_operands(tokens, torch.float64)
    return (exact,) if tokens.dtype == torch.float64 else (gemm_operands(tokens, torch.float32), exact)


def on_float64_device(cluster):
    """`cluster(tokens, ...)` run on the CPU for tokens on a device without float64 (MPS): the same clusters."""

    @functools.wraps(cluster)
    def wrapper(tokens, *args, **kwargs):
        if tokens.device.type != "mps":
            return cluster(tokens, *args, **kwargs)
        return DensityPeaks(*(values.to(tokens.device) for values in cluster(tokens.cpu(), *args, **kwargs)))

    return wrapper


class DensityPeaks(NamedTuple):
    """The clusters of a batch: `assignments` (B, scales, N) cluster numbers and `centres` (B, max count) token
    indices, best first; the centres of a scale are the first `count` of them and cluster c's centre is `centres[c]`."""

    assignments: torch.Tensor
    centres: torch.Tensor


@on_float64_device
@torch.no_grad()
def density_peaks(tokens: torch.Tensor, cluster_counts, k: int = 5, chunk_size: int = 256) -> DensityPeaks:
    """Cluster each image's tokens at several scales with DPC-kNN (ALGORITHM.md section 3, ties as in 3.3).

    Args:
        tokens: (B, N, C) token features; each image is clustered on its own.
        cluster_counts: clusters per scale, each in [1, N]; the centres of a scale are the first of the largest.
        k: neighbours of the kNN density, the token itself included (clipped to N).
        chunk_size: rows of the distance matrix held at once per image; changes memory, never the result.

    Returns:
        `DensityPeaks`: (B, len(cluster_counts), N) cluster numbers, clusters numbered by descending centre score
        (3.2), and the centres' token indices.
    """
    if tokens.dim() != 3 or not tokens.is_floating_point():
        raise ValueError(f"tokens must be a floating-point (batch, tokens, channels) tensor, got {tuple(tokens.shape)} "
                         f"of {tokens.dtype}.")
    num_tokens, num_channels = tokens.shape[1:]
    counts = tuple(int(count) for count in cluster_counts)
    if not counts or any(not 1 <= count <= num_tokens for count in counts):
        raise ValueError(f"cluster_counts={counts} must be non-empty, each between 1 and the {num_tokens} tokens.")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k={k} and chunk_size={chunk_size} must both be >= 1.")
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        precisions = gemm_precisions(tokens)
        exact = precisions[-1]
        k = min(k, num_tokens)
        neighbours = nearest_neighbours(tokens, precisions, k, chunk_size)
        density = torch.exp(-neighbours.distance[..., :k].mean(-1) / num_channels)
        order = torch.sort(density, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_tokens, device=tokens.device).expand_as(order))
        denser = nearest_denser(exact, neighbours, rank, order, chunk_size)
        all_rows = torch.arange(num_tokens, device=tokens.device).expand_as(order)
        denser_distance = exact_squared_distances(tokens, all_rows, denser[..., None], chunk_size)[..., 0]
        centres = rank_centres(density, denser_distance.masked_fill(rank == 0, float("inf")), num_channels, max(counts))
        return DensityPeaks(assign_to_centres(tokens, precisions, centres, counts, chunk_size), centres)


def cluster_tokens(tokens: torch.Tensor, cluster_counts, k: int = 5, chunk_size: int = 256) -> torch.LongTensor:
    """The (B, len(cluster_counts), N) cluster assignments of `density_peaks`."""
    return density_peaks(tokens, cluster_counts, k, chunk_size).assignments


# Pooled mode: DPC-kNN on an average-pooled token grid, every token then joining its nearest centre (O(N M)).


def capped_cluster_counts(num_tokens: int, reduction_ratio: int, scales, max_clusters: int) -> tuple[int, ...]:
    """`cluster_counts` with the coarse count capped at `max_clusters` (scale s at most `s * max_clusters`), so that
    the keys per query stay bounded at any resolution, as PVTv2-li's fixed pooled grid does."""
    counts = cluster_counts(num_tokens, reduction_ratio, scales)
    return tuple(min(count, scale * max_clusters) for count, scale in zip(counts, scales))


def pooled_grid(height: int, width: int, num_pooled: int) -> tuple[int, int]:
    """The (h, w) grid with the aspect ratio of (height, width) and at least `num_pooled` cells, no larger than it."""
    shrink = min(1.0, math.sqrt(num_pooled / (height * width)))
    return min(height, math.ceil(height * shrink)), min(width, math.ceil(width * shrink))


def cell_middles(height: int, width: int, grid, device) -> torch.Tensor:
    """Token index (h * w,) of the middle token of each cell of `adaptive_avg_pool2d`'s (h, w) grid over the token
    grid; distinct cells have distinct middles."""
    rows = ((torch.arange(grid[0], device=device) * 2 + 1) * height) // (2 * grid[0])
    columns = ((torch.arange(grid[1], device=device) * 2 + 1) * width) // (2 * grid[1])
    return (rows[:, None] * width + columns[None, :]).flatten()


def join_nearest(tokens, features, counts, chunk_size: int = 256):
    """Cluster (B, scales, N) of every token for each scale s: its nearest of the first `counts[s]` `features`
    (B, M, C), decided as `assign_to_centres` decides (certified, ties to the lower)."""
    num_features = features.shape[1]
    candidates = torch.cat([features, tokens], dim=1)
    first_rows = torch.arange(num_features, device=tokens.device).expand(tokens.shape[0], -1)
    assignments = assign_to_centres(candidates, gemm_precisions(candidates), first_rows, counts, chunk_size)
    return assignments[..., num_features:]


@on_float64_device
@torch.no_grad()
def pooled_density_peaks(tokens: torch.Tensor, grid, cluster_counts, k: int = 5, tokens_per_cluster: int = 4,
                         chunk_size: int = 256) -> DensityPeaks:
    """Scalable DPC-kNN: the centres are the density peaks of the token grid average-pooled to `tokens_per_cluster`
    cells per cluster of the finest scale, and every token joins the nearest chosen cell mean; O(N M) per image.

    Both steps are `density_peaks`' certified exact ones (on the cells, then tokens to cell means), so a batch gives
    the clusters of its images one at a time.

    Args:
        tokens: (B, N, C) token features in row-major order on the (height, width) `grid`.
        grid: (height, width) with height * width == N.
        cluster_counts: clusters per scale, each in [1, N].
        k: neighbours of the kNN density of the cells (clipped to their number).
        tokens_per_cluster: pooled cells per cluster of the finest scale; a grid with fewer tokens is not pooled.
        chunk_size: rows of distances held at once per image, as in `density_peaks`.

    Returns:
        `DensityPeaks` as from `density_peaks`: cluster c's centre is the middle token of the c-th chosen cell (best
        first) and always belongs to cluster c.
    """
    height, width = grid
    counts = tuple(int(count) for count in cluster_counts)
    if tokens.dim() != 3 or tokens.shape[1] != height * width:
        raise ValueError(f"tokens {tuple(tokens.shape)} must be (batch, height * width, channels) for grid {grid}.")
    if not counts or any(not 1 <= count <= tokens.shape[1] for count in counts):
        raise ValueError(f"cluster_counts={counts} must be non-empty, each between 1 and the {tokens.shape[1]} tokens.")
    if k < 1 or tokens_per_cluster < 1:
        raise ValueError(f"k={k} and tokens_per_cluster={tokens_per_cluster} must both be >= 1.")
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        if tokens.dtype != torch.float64:
            tokens = tokens.float()
        num_centres = max(counts)
        cells = pooled_grid(height, width, tokens_per_cluster * num_centres)
        if cells == (height, width):  # too few tokens to pool: every cell is a token, so this is plain DPC-kNN
            return density_peaks(tokens, counts, k, chunk_size)
        pooled = torch.nn.functional.adaptive_avg_pool2d(tokens.transpose(1, 2).unflatten(2, grid), cells)
        pooled = pooled.flatten(2).transpose(1, 2)
        chosen = density_peaks(pooled, (num_centres,), k, chunk_size).centres
        assignments = join_nearest(tokens, gather_rows(pooled, chosen), counts, chunk_size)
        centres = cell_middles(height, width, cells, tokens.device)[chosen]
        return DensityPeaks(claim_centres(assignments, centres, counts), centres)


__all__ = ["DensityPeaks", "capped_cluster_counts", "cluster_counts", "cluster_tokens", "density_peaks",
           "pooled_density_peaks"]
