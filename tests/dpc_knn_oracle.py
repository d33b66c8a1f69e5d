"""Test oracle: a deliberately naive, line-by-line transcription of docs/algorithm.md section 3 (with the 3.3 ties).

It builds the full N x N distance matrix in float64 and loops over tokens. Slow and memory-hungry on purpose:
it is the reference the fast `clustr_hf.clustering` is checked against, never used by the model.
"""

import math

import torch


def dpc_knn_oracle(tokens: torch.Tensor, cluster_counts, k: int = 5) -> torch.LongTensor:
    """Cluster one image's tokens (N, C); returns (len(cluster_counts), N) cluster numbers."""
    x = tokens.to(torch.float64)
    num_tokens, num_channels = x.shape
    index = torch.arange(num_tokens)

    # 1. Distances D_ij = ||x_i - x_j|| / sqrt(C), all pairs.
    distance = torch.stack([torch.linalg.vector_norm(x - x[i], dim=1) for i in range(num_tokens)])
    distance = distance / math.sqrt(num_channels)

    # 2. Local density: rho_i = exp(-mean of D_ij^2 over the k nearest j, i itself included).
    k = min(k, num_tokens)
    density = torch.stack([torch.exp(-(distance[i].sort().values[:k] ** 2).mean()) for i in range(num_tokens)])

    # 3.3: j is denser than i when rho_j > rho_i, or rho_j == rho_i and j < i.
    def denser_than(i):
        return (density > density[i]) | ((density == density[i]) & (index < i))

    # 3. Distance indicator: delta_i = min D_ij over denser j; max D of the image for the densest.
    largest_distance = distance.max()
    delta = torch.empty(num_tokens, dtype=torch.float64)
    for i in range(num_tokens):
        denser = denser_than(i)
        delta[i] = distance[i][denser].min() if denser.any() else largest_distance

    # 4. Score g_i = rho_i * delta_i; centres by descending score, ties to the lower index.
    score = density * delta
    ranking = sorted(range(num_tokens), key=lambda i: (-score[i].item(), i))

    # 5. Every token joins its nearest centre (ties: the first centre in ranking order); centres keep their own.
    assignments = torch.empty(len(cluster_counts), num_tokens, dtype=torch.long)
    for scale, count in enumerate(cluster_counts):
        centres = ranking[:count]
        for i in range(num_tokens):
            if i in centres:
                assignments[scale, i] = centres.index(i)
            else:
                distances_to_centres = [distance[i, c].item() for c in centres]
                assignments[scale, i] = distances_to_centres.index(min(distances_to_centres))
    return assignments
