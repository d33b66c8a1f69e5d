"""benchmarks/knn_pruning.py: its bounds never prune a true neighbour, its product counts add up, and its prototype
pruned pass finds the true nearest tokens."""

import importlib.util
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("knn_pruning", REPO / "benchmarks" / "knn_pruning.py")
knn_pruning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(knn_pruning)


def clustered_tokens(num_tokens=256, channels=8):
    """Tokens around a few centres, so that groups are tight and pruning has something to prune."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(8, channels, generator=generator, dtype=torch.float64) * 10
    return centres[torch.arange(num_tokens) % 8] + torch.randn(num_tokens, channels, generator=generator,
                                                                 dtype=torch.float64)


def test_kth_distances_are_those_of_the_full_matrix():
    tokens = clustered_tokens()
    expected = torch.cdist(tokens, tokens).sort(dim=1).values[:, 4]
    torch.testing.assert_close(knn_pruning.kth_distances(tokens, 5, chunk=100), expected)


def test_tile_groups_are_square_tiles_of_the_grid():
    groups = knn_pruning.tile_groups(36, 2).view(6, 6)
    assert groups[0, :2].tolist() == [0, 0] and groups[1, :2].tolist() == [0, 0]
    assert groups[0, 2].item() == 1 and groups[2, 0].item() == 3 and groups[5, 5].item() == 8


def test_kept_groups_hold_every_true_neighbour_and_coarser_sets_keep_more():
    tokens = clustered_tokens()
    kth = knn_pruning.kth_distances(tokens, 5)
    group = knn_pruning.kmeans_groups(tokens, 16)
    sizes, need = knn_pruning.needed_groups(tokens, group, kth)
    neighbours = torch.cdist(tokens, tokens).topk(5, largest=False).indices
    assert need.gather(1, group[neighbours]).all()
    token_products = int((need * sizes).sum())
    sets = knn_pruning.row_sets(group, chunk=64)
    group_products = sum(knn_pruning.kept_products(need, sizes, rows) for rows in sets["group"])
    chunk_products = sum(knn_pruning.kept_products(need, sizes, rows) for rows in sets["chunk"])
    assert token_products <= min(group_products, chunk_products) and chunk_products <= 256**2
    assert group_products < 256**2 / 2  # tight groups: most products pruned
    assert sorted(torch.cat(sets["group"]).tolist()) == list(range(256))


def test_real_bound_pass_finds_the_true_nearest_and_prunes():
    tokens = clustered_tokens()
    nearest, share = knn_pruning.real_bound_pass(tokens, group_size=16, k=5, count=5)
    expected = torch.cdist(tokens, tokens).topk(5, largest=False).indices
    assert torch.equal(nearest.sort(1).values, expected.sort(1).values)
    assert share < 0.5
