"""The scalable "pooled" clustering mode: density peaks on the average-pooled token grid, every token to the nearest.

Its clusters are not the paper's (that is the exact mode's job), so these tests check what must hold of any
clustering the attention consumes: valid partitions with the requested (capped) counts, determinism, batch equals
per-image, and, where the grid is too small to be pooled, the oracle's clusters; and that a model in this mode
trains, saves and loads like the default.
"""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from conftest import photo_batch, tiny_config
from dpc_knn_oracle import dpc_knn_oracle

from clustr_hf import ClusTRConfig, ClusTRForImageClassification
from clustr_hf.clustering import capped_cluster_counts, density_peaks, pooled_density_peaks, pooled_grid
from clustr_hf.visualization import cluster_maps


def assert_valid_partition(clusters, counts):
    """Every scale's assignments use exactly clusters 0..count-1, each non-empty, each holding its own centre."""
    batch_size, num_scales, num_tokens = clusters.assignments.shape
    assert num_scales == len(counts) and clusters.centres.shape == (batch_size, max(counts))
    for image in range(batch_size):
        for scale, count in enumerate(counts):
            assignments = clusters.assignments[image, scale]
            sizes = torch.bincount(assignments, minlength=count)
            assert len(sizes) == count and bool((sizes > 0).all()), f"scale {scale}: sizes {sizes.tolist()}"
            centres = clusters.centres[image, :count]
            assert len(set(centres.tolist())) == count
            assert torch.equal(assignments[centres], torch.arange(count))


def test_capped_cluster_counts():
    # b2 stage 1 at 224 (56 x 56 tokens, r = 8) is under the cap; at 448 (112 x 112) the cap of 49 binds.
    assert capped_cluster_counts(56 * 56, 8, (1, 4), 49) == (49, 196)
    assert capped_cluster_counts(112 * 112, 8, (1, 4), 49) == (49, 196)
    assert capped_cluster_counts(160 * 160, 8, (1, 4), 10) == (10, 40)
    assert capped_cluster_counts(9, 8, (1, 4), 49) == (1, 1)


@pytest.mark.parametrize("grid, cells, expected", [((56, 56), 784, (28, 28)), ((30, 40), 300, (15, 20)),
                                                   ((7, 7), 784, (7, 7)), ((112, 84), 196, (17, 13))])
def test_pooled_grid_keeps_the_aspect_ratio_and_enough_cells(grid, cells, expected):
    assert pooled_grid(*grid, cells) == expected
    assert expected[0] * expected[1] >= min(cells, grid[0] * grid[1])


def stage_one_tokens(pixels):
    """Real photos' stage-1 clustering input in a tiny model (stride-4 patch embedding, then the first LayerNorm)."""
    torch.manual_seed(0)
    stage = ClusTRForImageClassification(tiny_config()).clustr.encoder.stages[0]
    with torch.no_grad():
        embeddings, height, width = stage.patch_embeddings(pixels)
        return stage.blocks[0].layer_norm_1(embeddings), (height, width)


@pytest.mark.parametrize("size, counts", [((112, 112), (4, 16)), ((160, 160), (49, 196)), ((96, 160), (6, 24))])
def test_photo_clusters_are_deterministic_valid_partitions(size, counts):
    tokens, grid = stage_one_tokens(photo_batch(size, names=("astronaut", "coffee")))
    clusters = pooled_density_peaks(tokens, grid, counts)
    assert_valid_partition(clusters, counts)
    again = pooled_density_peaks(tokens, grid, counts)
    assert torch.equal(clusters.assignments, again.assignments) and torch.equal(clusters.centres, again.centres)


def test_batch_equals_each_image_alone():
    tokens, grid = stage_one_tokens(photo_batch((128, 96)))
    batch = pooled_density_peaks(tokens, grid, (12, 48))
    for image in range(tokens.shape[0]):
        alone = pooled_density_peaks(tokens[image : image + 1], grid, (12, 48))
        assert torch.equal(alone.assignments[0], batch.assignments[image])
        assert torch.equal(alone.centres[0], batch.centres[image])


def test_unpooled_grid_gives_the_oracle_clusters():
    # With at most tokens_per_cluster cells per cluster the grid is not pooled: plain DPC-kNN on all tokens.
    tokens = torch.randn(2, 8 * 8, 8, generator=torch.Generator().manual_seed(0))
    clusters = pooled_density_peaks(tokens, (8, 8), (4, 16), tokens_per_cluster=4)
    for image in range(2):
        assert torch.equal(clusters.assignments[image], dpc_knn_oracle(tokens[image].double(), (4, 16), 5))


def cluster_means(tokens, assignments, count):
    """(B, count, C) mean token of each cluster of `assignments` (B, N) (empty clusters: 0)."""
    index = assignments[..., None].expand_as(tokens)
    totals = tokens.new_zeros(tokens.shape[0], count, tokens.shape[-1]).scatter_add_(1, index, tokens)
    sizes = torch.zeros(tokens.shape[0], count).scatter_add_(1, assignments, torch.ones(assignments.shape))
    return totals / sizes.clamp_min(1)[..., None]


def within_cluster_error(tokens, assignments, count):
    """Sum over the tokens (B, N, C) of the squared distance to their cluster's mean (what cluster means lose)."""
    means = cluster_means(tokens, assignments, count)
    return float((tokens - means.gather(1, assignments[..., None].expand_as(tokens))).square().sum())


def test_pooled_clusters_are_as_tight_as_exact_ones_on_photos():
    # The attention sees cluster means: pooled clusters must summarise the tokens about as well as exact DPC-kNN's
    # (measured 0.9-1.0x here, lower is tighter) and far better than clusters of consecutive tokens.
    tokens, grid = stage_one_tokens(photo_batch((160, 160)))
    counts = (25, 100)
    pooled = pooled_density_peaks(tokens, grid, counts).assignments[:, -1]
    exact = density_peaks(tokens, counts).assignments[:, -1]
    consecutive = (torch.arange(tokens.shape[1]) * counts[-1] // tokens.shape[1]).expand_as(exact)
    pooled_error, exact_error, consecutive_error = (
        within_cluster_error(tokens, assignments, counts[-1]) for assignments in (pooled, exact, consecutive)
    )
    assert pooled_error < 1.1 * exact_error < consecutive_error, (pooled_error, exact_error, consecutive_error)


@pytest.mark.parametrize("grid, counts, k, tokens_per_cluster, message", [
    ((8, 9), (4,), 5, 4, "must be (batch, height * width, channels)"),
    ((8, 8), (65,), 5, 4, "between 1 and the 64 tokens"),
    ((8, 8), (4,), 0, 4, "must both be >= 1"),
])
def test_invalid_arguments_raise_clear_errors(grid, counts, k, tokens_per_cluster, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        pooled_density_peaks(torch.randn(1, 64, 4), grid, counts, k, tokens_per_cluster)


def test_config_validates_the_mode():
    with pytest.raises(StrictDataclassClassValidationError, match="clustering_mode='kmeans' is not one of 'exact', 'po"):
        ClusTRConfig(clustering_mode="kmeans")
    with pytest.raises(StrictDataclassClassValidationError, match="pooled_max_clusters=0 must be >= 1"):
        ClusTRConfig(clustering_mode="pooled", pooled_max_clusters=0)


def test_model_in_pooled_mode_caps_its_clusters():
    # 128 x 128 input: stage 1 has 32 x 32 tokens, r = 8 gives (16, 64) clusters, capped here at (4, 16).
    torch.manual_seed(0)
    model = ClusTRForImageClassification(tiny_config(clustering_mode="pooled", pooled_max_clusters=4)).eval()
    with torch.no_grad():
        outputs = model.clustr(photo_batch((128, 128)), output_cluster_assignments=True)
    first_block = outputs.cluster_assignments[0]
    assert first_block.shape == (4, 2, 32 * 32)
    assert [int(first_block[0, scale].max()) + 1 for scale in range(2)] == [4, 16]
    assert cluster_maps(model, photo_batch((128, 128)))[0].counts == (4, 16)  # the pictures show the capped counts


def test_model_in_pooled_mode_exports_with_torch_export():
    torch.manual_seed(0)
    model = ClusTRForImageClassification(tiny_config(clustering_mode="pooled", pooled_max_clusters=4)).eval()
    pixels = photo_batch((128, 128))
    exported = torch.export.export(model, (pixels,), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(pixels).logits, model(pixels).logits, rtol=0, atol=1e-5)


def test_model_in_pooled_mode_trains_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = ClusTRForImageClassification(tiny_config(clustering_mode="pooled", pooled_max_clusters=4))
    pixels, labels = photo_batch((128, 128)), torch.tensor([0, 1, 2, 0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses

    model.eval().save_pretrained(tmp_path)
    loaded = ClusTRForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.clustering_mode == "pooled" and loaded.config.pooled_max_clusters == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits, rtol=0, atol=0)

    # The mode is a load-time switch over the same weights (how an exact-mode model is evaluated in pooled mode).
    exact = ClusTRForImageClassification.from_pretrained(tmp_path, clustering_mode="exact").eval()
    assert exact.config.clustering_mode == "exact"
    with torch.no_grad():
        assert not torch.equal(exact(pixels).logits, model(pixels).logits)
