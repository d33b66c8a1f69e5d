"""DPC-kNN: density-peaks clustering of tokens with k nearest neighbours (docs/algorithm.md, section 3).

Exact, without ever holding the N x N distance matrix, and in a number of operators that does not depend on the batch:
distances come a chunk of rows at a time from one GEMM over the whole batch and are reduced at once (memory
O(chunk x N) per image, chunks sized per device), and every step treats all images together. The steps:

1. `nearest_neighbours`: the 2k nearest tokens of every token, with exact distances: its density;
2. `nearest_denser`: the nearest denser token of every token (its delta), read off the neighbour lists for all tokens
   but the local density peaks, which alone are searched;
3. `rank_centres`: the tokens of largest rho * delta, best first;
4. `assign_to_centres`: the nearest centre of every token, one pass serving every scale.

Float32 prunes, float64 decides. A float32 GEMM's rounding (relative to the tokens' norms, not to their distances)
would otherwise decide between near-equal distances that the float64 reference tells apart, as flat image regions
produce by the hundred. So step 1 keeps 2k float32 candidates per token, recomputes their distances by direct float64
differences and certifies, with a rigorous bound on the float32 rounding, that no other token is nearer; step 4
certifies that the runner-up centre is farther by more than twice the bound. The tokens a float32 pass cannot certify
are redone with a float64 GEMM, those of all images at once (`redo_uncertain`), as are step 2's searches: one host
sync each, three per call. Under torch.compile or export, where shapes cannot depend on data, a fixed share of every
image's tokens is redone instead and `torch.cond` redoes them all when more are in doubt: the same clusters, no sync.

Non-finite tokens (NaN or inf) are farther from every token than any finite pair: they are never the neighbours or
centres of finite tokens and join cluster 0, so the finite tokens of an image with at least k of them get the clusters
they would get without the others.

`pooled_density_peaks` is the opt-in scalable mode (`clustering_mode="pooled"`), not the paper's clustering: density
peaks of the token grid average-pooled to a few cells per cluster, then every token joins the nearest chosen cell mean,
so that a block costs O(N M) instead of O(N^2).
"""

import functools
import math
from typing import NamedTuple

import torch


FAR = torch.finfo(torch.float32).max / 16
"""GEMM offset of non-finite tokens: farther than any finite pair, finite in float32 (the chunks' padding is inf)."""
DENSE_TOKENS = 1024
"""Images of at most this many tokens are clustered from their whole float64 distance matrix (8 MB per image at most):
few operators and no host sync, where the certified float32 passes would pay more in launches than they save."""
REDONE_SHARE = {"neighbours": 1 / 4, "peaks": 1 / 16, "assignment": 1 / 16}
"""Under static shapes, the share of each image's tokens a step redoes in float64 before it falls back to redoing them
all: well above what real photos need (b2 at 448, random weights: at most 13%, 3% and 0.3% of a block's tokens)."""


def cluster_counts(num_tokens: int, reduction_ratio: int, scales) -> tuple[int, ...]:
    """Clusters per scale for `num_tokens` tokens (2.2 step 3): `scale * (N // r**2)`, raised to 1, clipped to N."""
    base = num_tokens // reduction_ratio**2
    return tuple(min(max(scale * base, 1), num_tokens) for scale in scales)


def is_static() -> bool:
    """Whether shapes must not depend on data (tracing, torch.compile or torch.export)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def chunks(tensors: tuple, row_length: int, chunk_size: int | None, dim: int = 1) -> list[tuple]:
    """`tensors` cut along `dim` (their rows) into chunks of `chunk_size` rows, or by default of as many rows of
    `row_length` values of the first tensor's dtype as one chunk holds per image, in multiples of 64 rows: on a CPU 4 MB
    (so that a batch of four images' chunk is reduced while it is in cache; b2 at 224: 256 rows of 3136 float32
    distances, 1.4x faster than 668), on an accelerator 32 MB (few, large GEMMs). Other row counts slow the GEMM and
    the reductions (255 rows: 1.3x the time of 256). One chunk is the tensors themselves."""
    like = tensors[0]
    budget = 4_000_000 if like.device.type == "cpu" else 2**25
    size = chunk_size or max(1, budget // (row_length * like.element_size()))
    size = size if chunk_size or size < 64 else size // 64 * 64
    num_rows = like.shape[dim]
    if size >= num_rows:
        return [tensors]
    return [tuple(tensor.narrow(dim, start, min(size, num_rows - start)) for tensor in tensors)
            for start in range(0, num_rows, size)]


def gather_tokens(values, index):
    """`values` (B, N, ...) at the token indices `index` (B, ...) of the same image: (B, *index.shape[1:], ...)."""
    if values.dim() == 2 and index.dim() == 2:
        return values.gather(1, index)
    return values[torch.arange(values.shape[0], device=index.device).view(-1, *(1,) * (index.dim() - 1)), index]


def joined(pieces, dim: int):
    """`torch.cat(pieces, dim)`, without an operator for a single piece."""
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


class Points(NamedTuple):
    """The tokens in float64 for exact distances: `values` (B, N, C), which are `finite` (B, N), and each image's
    `offset` (B, 1, 1) in `values` flattened to (B N, C)."""

    values: torch.Tensor
    finite: torch.Tensor
    offset: torch.Tensor


def exact_points(tokens) -> Points:
    """`Points` of (B, N, C) tokens."""
    finite = torch.isfinite(tokens).all(-1)
    offset = torch.arange(finite.shape[0], device=tokens.device).view(-1, 1, 1) * finite.shape[1]
    return Points(tokens.double(), finite, offset)


def gather_points(flat_values, flat_index):
    """The (B N, C) `flat_values` at `flat_index` (B, R, m), token indices plus their image's `Points.offset`: the
    largest gathers, the exact distances' candidates, as one `index_select`, much faster on a CPU than advanced
    indexing. (As `gather_tokens` for every gather, building the offsets each time, it cost 270 more operators per b2
    forward.)"""
    return flat_values.index_select(0, flat_index.flatten()).view(*flat_index.shape, flat_values.shape[-1])


def exact_squared_distances(points: Points, index, others, chunk_size=None):
    """`|x_i - x_j|^2` in float64 (B, R, m) of the tokens i at `index` (B, R; None for every token) and their `others`
    (B, R, m) tokens j.

    Direct differences: float32 tokens subtract and square exactly in float64, only the sum rounds, and equal tokens
    are exactly 0 apart. Where either token is not finite, the difference is inf or NaN: the distance is inf.
    """
    rows = (points.values if index is None else gather_tokens(points.values, index))[:, :, None]
    flat_values = points.values.flatten(0, 1)
    parts = chunks((others + points.offset, rows), others.shape[-1] * rows.shape[-1], chunk_size)
    distances = [gather_points(flat_values, part_others).sub_(part_rows).square_().sum(-1)
                 for part_others, part_rows in parts]
    return joined(distances, dim=1).nan_to_num_(nan=math.inf, posinf=math.inf)


class Operands(NamedTuple):
    """GEMM operands of the centred tokens: `left @ right.T` is the matrix of squared distances; `norm` (B, N) holds
    the centred tokens' norms, from which `rounding_bound` bounds each entry's rounding."""

    left: torch.Tensor
    right: torch.Tensor
    norm: torch.Tensor


def gemm_operands(points: Points) -> Operands:
    """Float64 `left` rows `[x_i, |x_i|^2 + f_i, 1]` and `right` rows `[-2 x_j, 1, |x_j|^2 + f_j]` of the finite
    tokens, centred; the offset f (`FAR` for non-finite tokens, zeroed, else 0) puts those farther from every token
    than any finite pair, yet leaves the chunks' padding (inf) farther still."""
    finite = points.finite[..., None]
    values = torch.where(finite, points.values, 0)
    centred = torch.where(finite, values - values.sum(1, keepdim=True) / finite.sum(1, keepdim=True), 0)  # 0 / 0: none
    norms = centred.square().sum(-1, keepdim=True)
    offset_norms = torch.where(finite, norms, FAR)
    ones = torch.ones_like(norms)
    return Operands(torch.cat([centred, offset_norms, ones], -1), torch.cat([-2 * centred, ones, offset_norms], -1),
                    norms[..., 0].sqrt())


def rounded_operands(operands: Operands, dtype) -> Operands:
    """The float64 `operands` rounded to `dtype`: each entry rounds once, less than `rounding_factor` allows for."""
    return Operands(operands.left.to(dtype), operands.right.to(dtype), operands.norm)


def rounding_factor(operands) -> float:
    """f such that `f (|x_i| + |x_j|)^2` bounds the rounding of the GEMM entry (i, j), |x| the centred norms.

    Rounding the float64 operands to the GEMM's dtype (unit roundoff u) moves the entry by at most
    `(2u + u^2) (|x_i| + |x_j|)^2`, and the GEMM's sum of m = C + 2 products by at most `gamma_m (1 + u)^2` times the
    same, `gamma_m = m u / (1 - m u)` in any order of summation (docs/algorithm.md section 7.2); a relative 1e-6 more
    covers the float64 centring and norms.
    """
    unit_roundoff = torch.finfo(operands.left.dtype).eps / 2
    terms = operands.left.shape[-1]
    gamma = terms * unit_roundoff / (1 - terms * unit_roundoff)
    return ((2 + unit_roundoff) * unit_roundoff + gamma * (1 + unit_roundoff) ** 2) * (1 + 1e-6)


def rounding_bound(operands, row_norm, column_norm):
    """Bound on the rounding of the GEMM entries (i, j) for centred norms `row_norm` and `column_norm` (broadcast)."""
    return rounding_factor(operands) * (row_norm + column_norm) ** 2


def listed_radius(operands, largest, row_norm):
    """Squared radius (B, R) within which a row's every token is listed, the unlisted GEMM values being at least
    `largest` (B, R); inf where `largest` is.

    The larger of two certified radii: the worst case, every token's norm at most the image's largest; and the
    largest R with `R + rounding_bound(|x_i|, |x_i| + sqrt R) <= largest`, since a token within sqrt R of x_i has
    a norm at most `|x_i| + sqrt R` (much tighter when a few tokens have outlying norms).
    """
    largest = largest.double()
    worst_case = largest - rounding_bound(operands, row_norm, operands.norm.amax(1, keepdim=True))
    factor = rounding_factor(operands)
    # (1 + f) s^2 + 4 f a s = slack, s = sqrt R; a finite slack where largest is inf keeps the root from inf / inf
    slack = (largest - 4 * factor * row_norm**2).clamp(0, torch.finfo(torch.float64).max)
    root = slack / (2 * factor * row_norm + torch.sqrt(4 * (factor * row_norm) ** 2 + (1 + factor) * slack))
    near = torch.where(slack > 0, root, 0.0).square() * (1 - 1e-9)  # the margin absorbs this evaluation's rounding
    return torch.maximum(worst_case, near).clamp_min(0)


def smallest_distances(left, right, count: int, chunk_size=None):
    """Indices (B, R, count) of the `count` smallest entries of every row of `left @ right.T`, and their largest.

    Columns are grouped into blocks of `width`; the `count` smallest of a row lie in the `count` blocks of smallest
    minimum (any other block's entries are all at least as large as those minima), so a full-row reduction (block
    minima) and two short selections replace a selection over the whole row. A row's blocks are contiguous, so one
    `index_select` gathers the chosen ones; blocks of at least 32 keep the minima's reduction vectorised.
    """
    batch_size, num_tokens, _ = right.shape
    width = max(1, min(max(32, 2 ** round(math.log2(math.sqrt(num_tokens / count)))), num_tokens // count))
    num_blocks = -(-num_tokens // width)
    padding = torch.zeros(num_blocks * width - num_tokens, right.shape[-1], dtype=right.dtype, device=right.device)
    padding[:, -1] = math.inf  # padded columns are infinitely far from every row
    right = torch.cat([right, padding.expand(batch_size, -1, -1)], dim=1).transpose(1, 2)
    blocks, positions, largest = [], [], []
    for chunk_left, in chunks((left,), num_tokens, chunk_size):
        distances = torch.bmm(chunk_left, right)
        chunk_blocks = distances.unflatten(2, (num_blocks, width)).amin(3).topk(count, dim=2, largest=False,
                                                                                sorted=False)[1]
        rows = chunk_blocks.shape[1]
        row_start = torch.arange(0, batch_size * rows * num_blocks, num_blocks, device=right.device)
        candidates = distances.view(-1, width).index_select(0, (chunk_blocks + row_start.view(-1, rows, 1)).flatten())
        values, chunk_positions = candidates.view(-1, rows, count * width).topk(count, dim=2, largest=False,
                                                                                sorted=False)
        blocks.append(chunk_blocks), positions.append(chunk_positions), largest.append(values.amax(2))
    blocks, positions = joined(blocks, dim=1), joined(positions, dim=1)
    return blocks.gather(2, positions // width) * width + positions % width, joined(largest, dim=1)


class Neighbours(NamedTuple):
    """Tokens' nearest tokens: `index` (B, R, K) and float64 squared `distance` (B, R, K), and `radius` (B, R): every
    token closer than `radius` is listed."""

    index: torch.Tensor
    distance: torch.Tensor
    radius: torch.Tensor


def listed_neighbours(points: Points, operands, index, count: int, chunk_size=None) -> Neighbours:
    """The `count` nearest tokens (by the `operands`' GEMM) of the tokens at `index` (B, R; None for every token),
    with exact distances.

    Every token within the `listed_radius` (B, R) is listed: all of them when `count` is the number of tokens.
    """
    left, norm = (operands.left, operands.norm) if index is None else (
        gather_tokens(operands.left, index), gather_tokens(operands.norm, index))
    listed, largest = smallest_distances(left, operands.right, count, chunk_size)
    if count == points.values.shape[1]:
        largest = torch.full_like(largest, math.inf)
    return Neighbours(listed, exact_squared_distances(points, index, listed, chunk_size),
                      listed_radius(operands, largest, norm))


def every_token(per_token):
    """The indices (B, N) of every token of each image, for any (B, N) tensor `per_token`."""
    return torch.arange(per_token.shape[1], device=per_token.device).expand_as(per_token)


def redo_uncertain(decide, operands, answers, share: float):
    """The (B, N, ...) `answers` but their last, the (B, N) uncertainty, with every uncertain token answered again by
    `decide(operands, index)` for token indices `index` (B, R; None for every token), all images at once.

    Eager, one host sync reads the largest count of an image, and R is that count (other images pad with certain
    tokens, whose answers are kept). Compiled, R is the `share` of N, and `torch.cond` redoes every token where some
    image has more uncertain ones; exported (torch.export, ONNX), every token is redone.
    """
    *answers, uncertain = answers

    def replaced(index):
        new_answers = decide(operands, index)[:-1]
        redone = uncertain if index is None else uncertain.gather(1, index)
        result = []
        for old, new in zip(answers, new_answers):
            trailing = (1,) * (new.dim() - 2)
            if index is None:
                result.append(torch.where(redone.view(*redone.shape, *trailing), new, old))
                continue
            spread = index.view(*index.shape, *trailing).expand_as(new)
            result.append(old.scatter(1, spread, torch.where(redone.view(*redone.shape, *trailing), new,
                                                              old.gather(1, spread))))
        return tuple(result)

    num_tokens = uncertain.shape[1]
    if is_static():
        capacity = math.ceil(share * num_tokens)
        if capacity >= num_tokens or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return replaced(None)  # exported programs take no torch.cond: the ONNX exporter fails on it (torch 2.14)
        index = uncertain.to(torch.uint8).topk(capacity, dim=1, sorted=False).indices

        def branch(index):  # torch.cond wants the same strides from both branches
            return lambda: tuple(answer.contiguous() for answer in replaced(index))

        return torch.cond(uncertain.sum(1).amax() <= capacity, branch(index), branch(None))
    count = int(uncertain.sum(1).amax())
    if count == 0:
        return tuple(answers)
    return replaced(uncertain.to(torch.uint8).topk(count, dim=1, sorted=False).indices)


def nearest_neighbours(points: Points, precisions, k: int, chunk_size=None) -> Neighbours:
    """The `2k` nearest tokens of every token, itself included, certain to contain its k nearest (3 step 2).

    A token's list is certain when its k-th exact distance is within its radius; the others are redone with the
    float64 operands.
    """
    count = min(2 * k, points.values.shape[1])

    def decide(operands, index):
        neighbours = listed_neighbours(points, operands, index, count, chunk_size)
        return (*neighbours, neighbours.distance.topk(k, dim=-1, largest=False).values[..., -1] > neighbours.radius)

    first, *exact = precisions
    answers = decide(first, None)
    return Neighbours(*redo_uncertain(decide, exact[0], answers, REDONE_SHARE["neighbours"]) if exact else answers[:-1])


def density_and_rank(listed_distance, finite, k: int, num_channels: int):
    """The density (B, N) of every token from the exact squared distances (B, N, m >= k) of its listed nearest tokens
    (3 step 2), and its rank in the density order: 0 the densest, ties to the lower index (3.3), non-finite last."""
    mean_distance = listed_distance.topk(k, dim=-1, largest=False).values.mean(-1)
    density = torch.where(finite, torch.exp(mean_distance / -num_channels), -1.0)
    order = torch.sort(density, dim=1, descending=True, stable=True).indices
    return density, torch.empty_like(order).scatter_(1, order, every_token(order))


def nearest_denser(operands, neighbours: Neighbours, rank, chunk_size=None):
    """Index (B, N) of the nearest denser token of every token (3 step 3), denser meaning of lower `rank`.

    A listed denser token within the list's radius is the nearest denser one (no unlisted token is closer). The
    others, local density peaks, are searched with the float64 `operands` among all tokens of lower rank; the
    densest of all gets an arbitrary one.
    """
    listed_denser = gather_tokens(rank, neighbours.index) < rank[..., None]
    certain = listed_denser & (neighbours.distance <= neighbours.radius[..., None])
    nearest_listed = neighbours.distance.masked_fill(~certain, math.inf).argmin(-1, keepdim=True)

    def search(operands, index):
        left, row_rank = (operands.left, rank) if index is None else (
            gather_tokens(operands.left, index), gather_tokens(rank, index))
        found = [torch.bmm(chunk_left, operands.right.transpose(1, 2))
                 .masked_fill_(rank[:, None, :] >= chunk_rank[..., None], math.inf).argmin(-1)
                 for chunk_left, chunk_rank in chunks((left, row_rank), rank.shape[1], chunk_size)]
        return joined(found, dim=1), None

    answers = (neighbours.index.gather(-1, nearest_listed)[..., 0], ~certain.any(-1))
    return redo_uncertain(search, operands, answers, REDONE_SHARE["peaks"])[0]


def rank_centres(points: Points, density, rank, denser, num_centres: int):
    """The `num_centres` tokens of largest score `g = rho * delta`, best first, ties to the lower index (3 step 4),
    delta being the exact distance to the `denser` token (B, N).

    The densest token has no denser token; the reference gives it `delta = max D`, which makes its score the
    largest of all, so scoring it `inf` ranks it exactly as the reference does.
    """
    denser_distance = exact_squared_distances(points, None, denser[..., None])[..., 0]
    score = density * torch.sqrt(denser_distance / points.values.shape[-1])
    return torch.sort(score.masked_fill(rank == 0, math.inf), dim=1, descending=True, stable=True).indices[
        :, :num_centres]


def certified_centres(points: Points, precisions, num_centres: int, k: int, chunk_size=None):
    """Token indices (B, num_centres) of every image's centres, best first (3 steps 1-4), from certified chunked
    passes over the distances."""
    neighbours = nearest_neighbours(points, precisions, k, chunk_size)
    density, rank = density_and_rank(neighbours.distance, points.finite, k, points.values.shape[-1])
    return rank_centres(points, density, rank, nearest_denser(precisions[-1], neighbours, rank, chunk_size),
                        num_centres)


def dense_centres(points: Points, num_centres: int, k: int):
    """`certified_centres` for images of at most `DENSE_TOKENS` tokens, from the whole float64 distance matrix
    (B, N, N), which it returns too: every decision on float64 GEMM values, as the certified passes' last resort. The
    listed tokens' exact distances come in one piece where it holds at most 8 MiB per image, in fewer operators than
    chunks; larger pieces run out of cache."""
    operands = gemm_operands(points)
    distances = torch.bmm(operands.left, operands.right.transpose(1, 2))
    listed = distances.topk(min(2 * k, distances.shape[-1]), dim=-1, largest=False, sorted=False).indices
    one_piece = listed.shape[1] * listed.shape[2] * points.values.shape[-1] * points.values.element_size() <= 2**23
    listed_distance = exact_squared_distances(points, None, listed, chunk_size=listed.shape[1] if one_piece else None)
    density, rank = density_and_rank(listed_distance, points.finite, k, points.values.shape[-1])
    denser = distances.masked_fill(rank[:, None, :] >= rank[..., None], math.inf).argmin(-1)
    return rank_centres(points, density, rank, denser, num_centres), distances


def assign_to_centres(precisions, centres, counts, chunk_size=None) -> list:
    """Nearest-centre cluster (B, N) of every token for each scale (3 step 5); scale s uses the first `counts[s]`
    `centres` (B, M), numbered in that order.

    One distance pass to the centres of the finest scale serves every scale; a scale with one cluster per token
    needs none (`claim_centres` fills it). Close calls, where the runner-up is within twice the rounding bound, are
    redone in float64. Ties go to the lower cluster number.
    """
    first, *exact = precisions
    computed = [count for count in counts if count < first.norm.shape[1]]
    if not computed:
        return [torch.zeros_like(first.norm, dtype=torch.long) for _ in counts]
    candidates = centres[:, : max(computed)]

    def nearest_of_chunk(operands, left, norm, centre_columns, centre_norm):
        distances = torch.bmm(left, centre_columns)
        margin = 2 * rounding_bound(operands, norm, centre_norm)[..., None]
        nearest, close_call = [], torch.zeros_like(norm, dtype=torch.bool)
        for count in computed:
            best, index = distances[..., :count].min(-1, keepdim=True)
            nearest.append(index)
            if count > 1:  # a close call: another centre within the margin of the nearest
                close_call |= (distances[..., :count] <= best + margin).sum(-1) > 1
        return joined(nearest, dim=-1), close_call

    def decide(operands, index):
        centre_columns = gather_tokens(operands.right, candidates).transpose(1, 2)
        centre_norm = gather_tokens(operands.norm, candidates).amax(1, keepdim=True)
        left, norm = (operands.left, operands.norm) if index is None else (
            gather_tokens(operands.left, index), gather_tokens(operands.norm, index))
        answers = [nearest_of_chunk(operands, chunk_left, chunk_norm, centre_columns, centre_norm)
                   for chunk_left, chunk_norm in chunks((left, norm), candidates.shape[1], chunk_size)]
        return tuple(joined(parts, dim=1) for parts in zip(*answers))

    answers = decide(first, None)
    if exact:
        answers = redo_uncertain(decide, exact[0], answers, REDONE_SHARE["assignment"])
    clusters = answers[0].unbind(-1)
    return [clusters[computed.index(count)] if count in computed else clusters[0] for count in counts]


def nearest_of_centres(distances, centres, counts) -> list:
    """`assign_to_centres` from the whole float64 distance matrix (B, N, N) of `dense_centres`."""
    to_centres = distances.gather(2, centres[:, None, :].expand(-1, distances.shape[1], -1))
    return [to_centres[..., :count].argmin(-1) for count in counts]


def claim_centres(assignments: list, centres, counts):
    """The per-scale (B, N) `assignments` as one (B, scales, N) tensor, every centre in its own cluster: scale s's
    cluster c holds `centres[:, c]`."""
    own_cluster = torch.arange(max(counts), device=centres.device).expand_as(centres)
    return torch.stack([clusters.scatter(1, centres[:, :count], own_cluster[:, :count])
                        for clusters, count in zip(assignments, counts)], dim=1)


@torch.compiler.assume_constant_result
def float32_matmuls_round_coarser(device_type: str) -> bool:
    """Whether float32 matmuls on `device_type` may round more coarsely than float32 (TF32 or bfloat16 allowed), so
    that `rounding_factor`'s bound would not hold; read once when compiled."""
    return torch.get_float32_matmul_precision() != "highest" or (
        device_type == "cuda" and torch.backends.cuda.matmul.allow_tf32)


def gemm_precisions(points: Points, dtype) -> tuple[Operands, ...]:
    """The `Operands` each decision is tried with in turn: float32 first, then float64; float64 alone for float64
    tokens, few tokens (`DENSE_TOKENS`), or where float32 matmuls round more coarsely than float32."""
    exact = gemm_operands(points)
    if (dtype == torch.float64 or points.values.shape[1] <= DENSE_TOKENS
            or float32_matmuls_round_coarser(points.values.device.type)):
        return (exact,)
    return rounded_operands(exact, torch.float32), exact


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


def check_arguments(tokens, counts, k: int, chunk_size) -> None:
    """Reject arguments the clustering would otherwise fail on deep inside."""
    if tokens.dim() != 3 or not tokens.is_floating_point():
        raise ValueError(f"tokens must be a floating-point (batch, tokens, channels) tensor, got {tuple(tokens.shape)} "
                         f"of {tokens.dtype}.")
    if not counts or any(not 1 <= count <= tokens.shape[1] for count in counts):
        raise ValueError(f"cluster_counts={counts} must be non-empty, each between 1 and the {tokens.shape[1]} "
                         f"tokens.")
    if k < 1 or chunk_size is not None and chunk_size < 1:
        raise ValueError(f"k={k} and chunk_size={chunk_size} must both be >= 1 (chunk_size None: chosen per device).")


@on_float64_device
@torch.no_grad()
def density_peaks(tokens: torch.Tensor, cluster_counts, k: int = 5, chunk_size: int | None = None) -> DensityPeaks:
    """Cluster each image's tokens at several scales with DPC-kNN (docs/algorithm.md section 3, ties as in 3.3).

    Args:
        tokens: (B, N, C) token features; each image is clustered on its own.
        cluster_counts: clusters per scale, each in [1, N]; the centres of a scale are the first of the largest.
        k: neighbours of the kNN density, the token itself included (clipped to N).
        chunk_size: rows of the distance matrix held at once per image (None: chosen per device); changes memory,
            never the result.

    Returns:
        `DensityPeaks`: (B, len(cluster_counts), N) cluster numbers, clusters numbered by descending centre score
        (3.2), and the centres' token indices.
    """
    counts = tuple(int(count) for count in cluster_counts)
    check_arguments(tokens, counts, k, chunk_size)
    k = min(k, tokens.shape[1])
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        points = exact_points(tokens)
        if tokens.shape[1] <= DENSE_TOKENS:
            centres, distances = dense_centres(points, max(counts), k)
            assignments = nearest_of_centres(distances, centres, counts)
        else:
            precisions = gemm_precisions(points, tokens.dtype)
            centres = certified_centres(points, precisions, max(counts), k, chunk_size)
            assignments = assign_to_centres(precisions, centres, counts, chunk_size)
        return DensityPeaks(claim_centres(assignments, centres, counts), centres)


def cluster_tokens(tokens: torch.Tensor, cluster_counts, k: int = 5, chunk_size: int | None = None) -> torch.LongTensor:
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


@on_float64_device
@torch.no_grad()
def pooled_density_peaks(tokens: torch.Tensor, grid, cluster_counts, k: int = 5, tokens_per_cluster: int = 4,
                         chunk_size: int | None = None) -> DensityPeaks:
    """Scalable DPC-kNN: the centres are the density peaks of the token grid average-pooled to `tokens_per_cluster`
    cells per cluster of the finest scale, and every token joins the nearest chosen cell mean; O(N M) per image.

    Both steps are `density_peaks`' certified exact ones (the cells' centres, then tokens to cell means), so a batch
    gives the clusters of its images one at a time.

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
    check_arguments(tokens, counts, k, chunk_size)
    if tokens_per_cluster < 1:
        raise ValueError(f"tokens_per_cluster={tokens_per_cluster} must be >= 1.")
    num_centres = max(counts)
    cells = pooled_grid(height, width, tokens_per_cluster * num_centres)
    if cells == (height, width):  # too few tokens to pool: every cell is a token, so this is plain DPC-kNN
        return density_peaks(tokens, counts, k, chunk_size)
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        tokens = tokens if tokens.dtype == torch.float64 else tokens.float()
        pooled = torch.nn.functional.adaptive_avg_pool2d(tokens.transpose(1, 2).unflatten(2, grid), cells)
        pooled = pooled.flatten(2).transpose(1, 2)
        pooled_points = exact_points(pooled)
        if cells[0] * cells[1] <= DENSE_TOKENS:
            chosen = dense_centres(pooled_points, num_centres, min(k, cells[0] * cells[1]))[0]
        else:
            chosen = certified_centres(pooled_points, gemm_precisions(pooled_points, tokens.dtype), num_centres, k,
                                       chunk_size)
        # The chosen cell means first, then the tokens: every token joins the nearest of the first counts[s] rows.
        candidates = exact_points(torch.cat([gather_tokens(pooled, chosen), tokens], dim=1))
        assignments = assign_to_centres(gemm_precisions(candidates, tokens.dtype), every_token(chosen), counts,
                                        chunk_size)
        centres = cell_middles(height, width, cells, tokens.device)[chosen]
        return DensityPeaks(claim_centres([clusters[:, num_centres:] for clusters in assignments], centres, counts),
                            centres)


__all__ = ["DensityPeaks", "capped_cluster_counts", "cluster_counts", "cluster_tokens", "density_peaks",
           "pooled_density_peaks"]
