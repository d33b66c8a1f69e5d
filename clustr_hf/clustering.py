"""DPC-kNN: density-peaks clustering of tokens with k nearest neighbours (ALGORITHM.md section 3).

Exact, without ever holding the N x N distance matrix: distances are produced `chunk_size` rows at a time by one
batched GEMM and reduced at once, so memory is O(chunk_size * N) per image. Three passes over the distances:

1. the k nearest neighbours of every token (its density), block minima pruning the selection so that it costs little
   beside the GEMM;
2. the nearest denser token (its delta), read off the neighbour lists for all tokens except the few local density
   peaks, which alone are searched, among their denser tokens only;
3. the nearest centre of every token, one pass serving every scale.

The GEMMs only choose (which neighbour, which denser token, which centre) and work on squared distances up to a per-row
constant; the distances that enter density and score are then recomputed from the chosen pairs by direct float64
differences, free of the GEMM's cancellation (equal tokens get exactly 0, as in the reference). The search of pass 2
has a data-dependent size; under tracing or export it searches every token instead, giving the same result with static
shapes. The batch dimension only batches the GEMMs: every image is clustered on its own.
"""

import math
from typing import NamedTuple

import torch


def cluster_counts(num_tokens: int, reduction_ratio: int, scales) -> tuple[int, ...]:
    """Clusters per scale for `num_tokens` tokens (2.2 step 3): `scale * (N // r**2)`, raised to 1, clipped to N."""
    base = num_tokens // reduction_ratio**2
    return tuple(min(max(scale * base, 1), num_tokens) for scale in scales)


def gemm_operands(tokens):
    """Rows `[x_i, 1]` and columns `[-2 x_j, |x_j|^2]` whose product is `|x_i - x_j|^2 - |x_i|^2`.

    Within a row the per-row constant changes no order, so one plain GEMM gives everything the passes choose by.
    """
    norms = tokens.square().sum(-1, keepdim=True)
    return torch.cat([tokens, torch.ones_like(norms)], -1), torch.cat([-2 * tokens, norms], -1)


def gather_rows(values, index):
    """`values` (B, N, ...) at the token indices `index` (B, ...) of the same image: (B, *index.shape[1:], ...)."""
    batch_size, num_tokens = values.shape[:2]
    offsets = torch.arange(batch_size, device=index.device).view(-1, *(1 for _ in index.shape[1:])) * num_tokens
    return values.flatten(0, 1).index_select(0, (index + offsets).flatten()).view(*index.shape, *values.shape[2:])


def exact_squared_distances(tokens, others, chunk_size: int):
    """`|x_i - x_j|^2` in float64 for every token i (B, N, C) and each of its `others[:, i]` (B, N, m) tokens j.

    Direct differences: float32 tokens subtract and square exactly in float64, so only the sum rounds, and equal
    tokens are exactly 0 apart.
    """
    tokens = tokens.double()
    distances = []
    for start in range(0, tokens.shape[1], chunk_size):
        rows, index = tokens[:, start : start + chunk_size, None], others[:, start : start + chunk_size]
        distances.append((rows - gather_rows(tokens, index)).square_().sum(-1))
    return torch.cat(distances, dim=1)


def nearest_neighbours(rows, columns, k: int, chunk_size: int):
    """The k nearest tokens of every token, itself included (B, N, k), nearest first (3 step 2).

    Columns are grouped into blocks of `width`; the k nearest of a row lie in the k blocks of smallest minimum (any
    other block's tokens are all at least as far as those k minima), so a full-row reduction (block minima) and two
    short selections replace a selection over the whole row. The distances are laid out (B, N, chunk): every
    reduction over columns then runs across rows, which vectorises.
    """
    batch_size, num_tokens, _ = rows.shape
    width = max(1, min(2 ** round(math.log2(math.sqrt(num_tokens / k))), num_tokens // k))
    num_blocks = -(-num_tokens // width)
    padding = columns.new_zeros(batch_size, num_blocks * width - num_tokens, columns.shape[-1])
    padding[..., -1] = float("inf")  # padded columns are infinitely far from every row
    columns = torch.cat([columns, padding], dim=1)
    neighbours = []
    for start in range(0, num_tokens, chunk_size):
        chunk_rows = rows[:, start : start + chunk_size].transpose(1, 2)
        distances = torch.bmm(columns, chunk_rows).unflatten(1, (num_blocks, width))
        blocks = distances.amin(2).topk(k, dim=1, largest=False, sorted=False).indices
        candidates = distances.gather(1, blocks[:, :, None].expand(-1, -1, width, -1)).flatten(1, 2)
        nearest = candidates.topk(k, dim=1, largest=False).indices
        neighbours.append((blocks.gather(1, nearest // width) * width + nearest % width).transpose(1, 2))
    return torch.cat(neighbours, dim=1)


def search_denser(rows, columns, positions, chunk_size: int, static: bool):
    """Position of the nearest denser token of the tokens at density-order `positions` (B, P), sorted ascending.

    `rows` and `columns` are in density order, so the denser tokens of a token are exactly those before it and each
    chunk of rows only meets the columns up to its last position. `static` promises `positions` is `0..N-1`.
    """
    nearest = []
    for start in range(0, positions.shape[1], chunk_size):
        chunk = positions[:, start : start + chunk_size]
        end = start + chunk.shape[1] if static else int(chunk.max()) + 1
        distances = torch.bmm(gather_rows(rows, chunk), columns[:, :end].transpose(1, 2))
        not_denser = torch.arange(end, device=chunk.device) >= chunk[..., None]
        nearest.append(distances.masked_fill_(not_denser, float("inf")).argmin(-1))
    return torch.cat(nearest, dim=1)


def nearest_denser(rows, columns, neighbours, neighbour_distances, rank, chunk_size: int):
    """Index of the nearest denser token of every token (B, N) (3 step 3), denser per 3.3 (`rank` 0 = densest).

    A token with a denser token among its k nearest has it as its nearest denser one (every token nearer than a listed
    one is listed too). The others, local density peaks, are searched; the densest of all gets an arbitrary index.
    """
    listed_denser = rank.gather(1, neighbours.flatten(1)).view_as(neighbours) < rank[..., None]
    listed_distance = neighbour_distances.masked_fill(~listed_denser, float("inf"))
    nearest = neighbours.gather(2, listed_distance.argmin(-1, keepdim=True))[..., 0]

    order = torch.argsort(rank, dim=1)
    peak = ~listed_denser.any(-1).gather(1, order)  # in density order
    static = torch.compiler.is_compiling() or torch.jit.is_tracing()
    num_searched = peak.shape[1] if static else int(peak.sum(1).max())
    positions = torch.argsort(~peak, dim=1, stable=True)[:, :num_searched].sort(dim=1).values
    found = order.gather(1, search_denser(gather_rows(rows, order), gather_rows(columns, order), positions, chunk_size, static))
    searched = order.gather(1, positions)
    found = torch.where(peak.gather(1, positions), found, nearest.gather(1, searched))
    return nearest.scatter(1, searched, found)


def rank_centres(density, denser_distance, num_channels: int, num_centres: int):
    """The `num_centres` tokens of largest score `g = rho * delta`, best first, ties to the lower index (3 step 4).

    The densest token has no denser token; the reference gives it `delta = max D`, which makes its score the
    largest of all, so scoring it `inf` ranks it exactly as the reference does.
    """
    score = torch.where(torch.isinf(denser_distance), float("inf"), density * torch.sqrt(denser_distance / num_channels))
    return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :num_centres]


def assign_to_centres(rows, columns, centres, counts, chunk_size: int):
    """Nearest-centre cluster of every token for each scale (3 step 5); scale s uses the first `counts[s]` centres.

    One distance pass to the centres of the finest scale serves every scale; a scale with one cluster per token
    needs none. Ties go to the lower cluster number, and every centre belongs to its own cluster.
    """
    batch_size, num_tokens, _ = rows.shape
    computed = [scale for scale, count in enumerate(counts) if count < num_tokens]
    assignments = rows.new_zeros(batch_size, len(counts), num_tokens, dtype=torch.long)
    if computed:
        centre_columns = gather_rows(columns, centres[:, : max(counts[scale] for scale in computed)]).transpose(1, 2)
        for start in range(0, num_tokens, chunk_size):
            distances = torch.bmm(rows[:, start : start + chunk_size], centre_columns)
            for scale in computed:
                assignments[:, scale, start : start + chunk_size] = distances[:, :, : counts[scale]].argmin(-1)
    for scale, count in enumerate(counts):
        own_cluster = torch.arange(count, device=rows.device).expand(batch_size, count)
        assignments[:, scale].scatter_(1, centres[:, :count], own_cluster)
    return assignments


class DensityPeaks(NamedTuple):
    """The clusters of a batch: `assignments` (B, scales, N) cluster numbers and `centres` (B, max count) token
    indices, best first; the centres of a scale are the first `count` of them and cluster c's centre is `centres[c]`."""

    assignments: torch.Tensor
    centres: torch.Tensor


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
        work = tokens if tokens.dtype == torch.float64 else tokens.float()
        rows, columns = gemm_operands(work - work.mean(dim=1, keepdim=True))  # centred: same distances, less rounding
        neighbours = nearest_neighbours(rows, columns, min(k, num_tokens), chunk_size)
        neighbour_distances = exact_squared_distances(tokens, neighbours, chunk_size)
        density = torch.exp(-neighbour_distances.mean(-1) / num_channels)
        order = torch.sort(density, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_tokens, device=tokens.device).expand_as(order))
        denser = nearest_denser(rows, columns, neighbours, neighbour_distances, rank, chunk_size)
        denser_distance = exact_squared_distances(tokens, denser[..., None], chunk_size)[..., 0]
        denser_distance = denser_distance.masked_fill(rank == 0, float("inf"))
        centres = rank_centres(density, denser_distance, num_channels, max(counts))
        return DensityPeaks(assign_to_centres(rows, columns, centres, counts, chunk_size), centres)


def cluster_tokens(tokens: torch.Tensor, cluster_counts, k: int = 5, chunk_size: int = 256) -> torch.LongTensor:
    """The (B, len(cluster_counts), N) cluster assignments of `density_peaks`."""
    return density_peaks(tokens, cluster_counts, k, chunk_size).assignments


__all__ = ["DensityPeaks", "cluster_counts", "cluster_tokens", "density_peaks"]
