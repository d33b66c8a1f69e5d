"""DPC-kNN the way the reference implementation computes it, for the benchmarks: full N x N matrices.

Each image gets its full distance matrix (`torch.cdist`, one GEMM) and a dozen elementwise passes over it. It follows
docs/algorithm.md section 3 with the deterministic ties of 3.3 in place of the reference's random noise, so it gives the
clusters of `clustr_hf.clustering.density_peaks` (up to float32 rounding) at the reference's cost in time and memory.
Never used by the model; the benchmarks swap it in to measure what the chunked implementation saves.
"""

import torch

from clustr_hf.clustering import DensityPeaks


@torch.no_grad()
def reference_density_peaks(tokens: torch.Tensor, cluster_counts, k: int = 5, chunk_size=None) -> DensityPeaks:
    """Same arguments and result as `clustr_hf.clustering.density_peaks`; `chunk_size` is ignored (no chunks)."""
    num_tokens, num_channels = tokens.shape[1:]
    counts = [int(count) for count in cluster_counts]
    index = torch.arange(num_tokens, device=tokens.device)
    all_assignments, all_centres = [], []
    for x in tokens.float():
        distance = torch.cdist(x, x) / num_channels**0.5
        nearest = distance.topk(min(k, num_tokens), dim=-1, largest=False).values
        density = torch.exp(-(nearest**2).mean(-1))
        denser = (density[None, :] > density[:, None]) | (
            (density[None, :] == density[:, None]) & (index[None, :] < index[:, None])
        )
        mask = denser.to(distance.dtype)
        delta = (distance * mask + distance.max() * (1 - mask)).min(-1).values
        centres = torch.sort(delta * density, descending=True, stable=True).indices[: max(counts)]
        to_centres = distance[:, centres]
        assignments = []
        for count in counts:
            assignment = to_centres[:, :count].argmin(-1)
            assignment[centres[:count]] = torch.arange(count, device=tokens.device)
            assignments.append(assignment)
        all_assignments.append(torch.stack(assignments))
        all_centres.append(centres)
    return DensityPeaks(torch.stack(all_assignments), torch.stack(all_centres))
