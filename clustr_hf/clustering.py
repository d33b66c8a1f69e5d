"""DPC-kNN: density-peaks clustering of tokens with k nearest neighbours (ALGORITHM.md section 3).

Exact, but never holds the N x N distance matrix: distances are produced `chunk_size` rows at a time by one
batched GEMM each and reduced at once, so memory is O(chunk_size * N) per image. Only the order of distances
matters until the centre score, so the passes work on squared distances. Shapes are static (no data-dependent
sizes), which keeps the model exportable. Every function runs per image; the batch dimension only batches the GEMMs.
"""

from typing import NamedTuple

import torch


def cluster_counts(num_tokens: int, reduction_ratio: int, scales) -> tuple[int, ...]:
    """Clusters per scale for `num_tokens` tokens (2.2 step 3): `scale * (N // r**2)`, raised to 1, clipped to N."""
    base = num_tokens // reduction_ratio**2
    return tuple(min(max(scale * base, 1), num_tokens) for scale in scales)


def pairwise_squared_distances(rows, cols, row_norms, col_norms):
    """Squared Euclidean distances (B, R, M) between rows (B, R, C) and cols (B, M, C), from their squared norms."""
    norms = row_norms[:, :, None] + col_norms[:, None, :]
    return torch.baddbmm(norms, rows, cols.transpose(1, 2), alpha=-2).clamp_min_(0)


def knn_mean_squared_distance(tokens, norms, k: int, chunk_size: int):
    """Mean squared distance from each token to its k nearest tokens, itself included (3 step 2).

    The local density is `rho = exp(-this / C)`, so a token is denser exactly when this is smaller.
    """
    means = []
    for start in range(0, tokens.shape[1], chunk_size):
        rows = slice(start, start + chunk_size)
        distances = pairwise_squared_distances(tokens[:, rows], tokens, norms[:, rows], norms)
        means.append(distances.topk(k, dim=-1, largest=False).values.mean(-1))
    return torch.cat(means, dim=1)


def squared_distance_to_denser(tokens, norms, knn_distance, chunk_size: int):
    """Squared distance from each token to its nearest denser token (3 step 3); `inf` for the densest token.

    Denser follows the total order of 3.3 (higher density, then lower index): a stable sort puts the tokens in
    that order, after which the denser tokens of each token are exactly those before it, so each chunk of rows
    only meets the columns up to its own end.
    """
    num_tokens = tokens.shape[1]
    order = torch.sort(knn_distance, dim=1, stable=True).indices
    sorted_tokens = tokens.gather(1, order[:, :, None].expand_as(tokens))
    sorted_norms = norms.gather(1, order)
    positions = torch.arange(num_tokens, device=tokens.device)
    nearest = []
    for start in range(0, num_tokens, chunk_size):
        end = min(start + chunk_size, num_tokens)
        distances = pairwise_squared_distances(
            sorted_tokens[:, start:end], sorted_tokens[:, :end], sorted_norms[:, start:end], sorted_norms[:, :end]
        )
        not_denser = positions[:end] >= positions[start:end, None]
        nearest.append(distances.masked_fill_(not_denser, float("inf")).amin(-1))
    return torch.empty_like(knn_distance).scatter_(1, order, torch.cat(nearest, dim=1))


def rank_centres(knn_distance, denser_distance, num_channels: int, num_centres: int):
    """The `num_centres` tokens of largest score `g = rho * delta`, best first, ties to the lower index (3 step 4).

    The densest token has no denser token; the reference gives it `delta = max D`, which makes its score the
    largest of all, so scoring it `inf` ranks it exactly as the reference does.
    """
    density = torch.exp(-knn_distance / num_channels)
    score = density * torch.sqrt(denser_distance / num_channels)
    score = torch.where(torch.isinf(denser_distance), float("inf"), score)
    return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :num_centres]


def assign_to_centres(tokens, norms, centres, counts, chunk_size: int):
    """Nearest-centre cluster of every token for each scale (3 step 5); scale s uses the first `counts[s]` centres.

    One distance pass to the centres of the finest scale serves every scale. Ties go to the lower cluster number,
    and every centre belongs to its own cluster.
    """
    index = centres[:, :, None].expand(-1, -1, tokens.shape[-1])
    centre_tokens, centre_norms = tokens.gather(1, index), norms.gather(1, centres)
    per_scale = [[] for _ in counts]
    for start in range(0, tokens.shape[1], chunk_size):
        rows = slice(start, start + chunk_size)
        distances = pairwise_squared_distances(tokens[:, rows], centre_tokens, norms[:, rows], centre_norms)
        for chunks, count in zip(per_scale, counts):
            chunks.append(distances[:, :, :count].argmin(-1))
    assignments = torch.stack([torch.cat(chunks, dim=1) for chunks in per_scale], dim=1)
    for scale, count in enumerate(counts):
        own_cluster = torch.arange(count, device=tokens.device).expand(tokens.shape[0], count)
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
    num_tokens = tokens.shape[1]
    counts = tuple(int(count) for count in cluster_counts)
    if not counts or any(not 1 <= count <= num_tokens for count in counts):
        raise ValueError(f"cluster_counts={counts} must be non-empty, each between 1 and the {num_tokens} tokens.")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k={k} and chunk_size={chunk_size} must both be >= 1.")
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        work = tokens if tokens.dtype == torch.float64 else tokens.float()
        work = work - work.mean(dim=1, keepdim=True)  # distances are unchanged; the norms get smaller and exacter
        norms = work.square().sum(-1)
        knn_distance = knn_mean_squared_distance(work, norms, min(k, num_tokens), chunk_size)
        denser_distance = squared_distance_to_denser(work, norms, knn_distance, chunk_size)
        centres = rank_centres(knn_distance, denser_distance, tokens.shape[-1], max(counts))
        return DensityPeaks(assign_to_centres(work, norms, centres, counts, chunk_size), centres)


def cluster_tokens(tokens: torch.Tensor, cluster_counts, k: int = 5, chunk_size: int = 256) -> torch.LongTensor:
    """The (B, len(cluster_counts), N) cluster assignments of `density_peaks`."""
    return density_peaks(tokens, cluster_counts, k, chunk_size).assignments


__all__ = ["DensityPeaks", "cluster_counts", "cluster_tokens", "density_peaks"]
