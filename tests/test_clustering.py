"""The chunked DPC-kNN clustering against the naive float64 oracle (docs/algorithm.md section 3, ties as in 3.3).

Random tokens are compared in float64. Real-photo tokens (a photo through the model's patch embedding and first
LayerNorm, float32, as the model clusters them) are compared as they are: the implementation decides in float64
wherever float32 could not, so they must match exactly too, flat regions and duplicate tokens included. The oracle is
slow (Python loops, full matrix): the largest case (N = 12544) keeps its channel and cluster counts small.
"""

import functools

import pytest
import torch
from conftest import photo_batch, tiny_config
from dpc_knn_oracle import dpc_knn_oracle

from clustr_hf import ClusTRModel
from clustr_hf import clustering
from clustr_hf.clustering import DensityPeaks, cluster_counts, cluster_tokens, density_peaks
from clustr_hf.testing_utils import clustered_tokens


@pytest.fixture(params=["dense", "certified"])
def each_path(request, monkeypatch):
    """Run the test with the clustering of few tokens (whole float64 matrix) and with the certified chunked passes."""
    if request.param == "certified":
        monkeypatch.setattr(clustering, "DENSE_TOKENS", 0)
    return request.param


@functools.cache
def cached_oracle(tokens_bytes: bytes, shape, dtype, counts, k):
    tokens = torch.frombuffer(bytearray(tokens_bytes), dtype=dtype).view(shape)
    return dpc_knn_oracle(tokens, counts, k)


def oracle(tokens, counts, k):
    """`dpc_knn_oracle` of one image, computed once per tokens for the tests that run on both paths."""
    return cached_oracle(tokens.contiguous().numpy().tobytes(), tuple(tokens.shape), tokens.dtype, tuple(counts), k)


def assert_matches_oracle(tokens, counts, k=5, chunk_size=256):
    """Every image of `tokens` (B, N, C) gets the oracle's assignments, and centres consistent with them."""
    clusters = density_peaks(tokens, counts, k, chunk_size)
    assert clusters.assignments.shape == (tokens.shape[0], len(counts), tokens.shape[1])
    assert clusters.centres.shape == (tokens.shape[0], max(counts))
    for image in range(tokens.shape[0]):
        expected = oracle(tokens[image], counts, k)
        mismatches = (clusters.assignments[image] != expected).sum().item()
        assert mismatches == 0, f"image {image}: {mismatches} of {expected.numel()} assignments differ from the oracle"
        for scale, count in enumerate(counts):
            centres = clusters.centres[image, :count]
            assert torch.equal(clusters.assignments[image, scale, centres], torch.arange(count))
    return clusters


def photo_tokens(size, names=("astronaut",)):
    """Real photos' stage-1 clustering input in a tiny model: patch embedding, then block 0's first LayerNorm (C=8)."""
    torch.manual_seed(0)
    return clustered_tokens(ClusTRModel(tiny_config()), photo_batch((size, size), names))


def with_duplicates(tokens, generator):
    """`tokens` (B, N, C) with a third of each image's tokens overwritten by copies of a few others (exact ties)."""
    tokens = tokens.clone()
    num_tokens = tokens.shape[1]
    copies = torch.randperm(num_tokens, generator=generator)[: num_tokens // 3]
    sources = torch.randint(0, 4, (len(copies),), generator=generator)
    tokens[:, copies] = tokens[:, sources]
    return tokens


@pytest.mark.parametrize(
    "num_tokens, channels, counts",
    [(2, 3, (1, 2)), (9, 4, (2, 9)), (64, 8, (4, 16)), (300, 16, cluster_counts(300, 4, (1, 4))), (1000, 32, (62, 248))],
)
@pytest.mark.usefixtures("each_path")
def test_random_float64_tokens_match_oracle(num_tokens, channels, counts):
    generator = torch.Generator().manual_seed(num_tokens)
    assert_matches_oracle(torch.randn(2, num_tokens, channels, dtype=torch.float64, generator=generator), counts)


def test_random_float32_tokens_match_oracle():
    # Random tokens are full of float32 near-ties of the score; decisions in float64 keep the oracle's order.
    tokens = torch.randn(2, 1200, 32, generator=torch.Generator().manual_seed(1))
    assert_matches_oracle(tokens, cluster_counts(1200, 4, (1, 4)))


@pytest.mark.parametrize("size, counts", [(112, (49, 196)), (224, (49, 196)), (448, (4, 16))])
@pytest.mark.usefixtures("each_path")
def test_photo_tokens_match_oracle(size, counts):
    # 224 and 448 hold flat regions (448: 831 duplicate tokens) where float32 distances cannot separate neighbours.
    tokens = photo_tokens(size)
    assert tokens.dtype == torch.float32 and tokens.shape[1] == (size // 4) ** 2
    assert_matches_oracle(tokens, counts)


def outlying_norms(generator):
    """Float32 tokens (2, 600, 16) in tight groups of 15, and 3 tokens of 50x the usual norm, which make the image's
    worst-case float32 rounding bound larger than the groups' spread; 5 of the 40 groups are near-duplicates below
    float32's resolution."""
    groups = 3 + torch.randn(2, 40, 1, 16, generator=generator)
    spread = torch.where(torch.arange(40) < 5, 1e-6, 0.05).view(1, 40, 1, 1)
    tokens = (groups + spread * torch.randn(2, 40, 15, 16, generator=generator)).flatten(1, 2)
    tokens[:, :3] *= 50
    return tokens


def test_listed_radius_holds_every_nearer_token():
    tokens = outlying_norms(torch.Generator().manual_seed(8))
    points = clustering.exact_points(tokens)
    operands = clustering.rounded_operands(clustering.gemm_operands(points), torch.float32)
    every_token = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    neighbours = clustering.listed_neighbours(points, operands, every_token, 10, chunk_size=64)
    exact = (tokens.double()[:, :, None] - tokens.double()[:, None]).square().sum(-1)
    inside = exact < neighbours.radius[..., None]
    listed = torch.zeros_like(inside).scatter_(-1, neighbours.index, True)
    assert not (inside & ~listed).any(), "a token inside the certified radius is missing from the list"
    kth = neighbours.distance.sort(-1).values[..., 4]
    largest = exact.gather(-1, neighbours.index).amax(-1)  # within float32 rounding of the largest listed GEMM value
    worst_case = largest - clustering.rounding_bound(operands, operands.norm, operands.norm.amax(1, keepdim=True))
    certain, certain_in_worst_case = (kth <= neighbours.radius).float().mean(), (kth <= worst_case).float().mean()
    assert certain > 0.8 and certain_in_worst_case < 0.1, (certain, certain_in_worst_case)


def test_listed_radius_of_a_token_at_the_mean_is_zero_not_nan():
    tokens = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]])
    points = clustering.exact_points(tokens)
    operands = clustering.rounded_operands(clustering.gemm_operands(points), torch.float32)
    neighbours = clustering.listed_neighbours(points, operands, torch.arange(6)[None], 2, chunk_size=4)
    assert neighbours.radius[0, 0] == 0 and not neighbours.radius.isnan().any()


@pytest.mark.usefixtures("each_path")
def test_outlying_norms_match_oracle():
    assert_matches_oracle(outlying_norms(torch.Generator().manual_seed(9)), (20, 80))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.usefixtures("each_path")
def test_duplicate_tokens_tie_as_in_3_3(dtype):
    generator = torch.Generator().manual_seed(2)
    tokens = with_duplicates(torch.randn(2, 90, 6, dtype=dtype, generator=generator), generator)
    assert_matches_oracle(tokens, (5, 20, 90), k=4)


@pytest.mark.usefixtures("each_path")
def test_one_cluster_and_one_cluster_per_token():
    tokens = torch.randn(1, 50, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    clusters = assert_matches_oracle(tokens, (1, 50))
    assert torch.equal(clusters.assignments[0, 0], torch.zeros(50, dtype=torch.long))
    assert torch.equal(clusters.assignments[0, 1, clusters.centres[0]], torch.arange(50))


@pytest.mark.usefixtures("each_path")
def test_k_larger_than_the_tokens():
    tokens = torch.randn(2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert_matches_oracle(tokens, (2, 6), k=10)


@pytest.mark.usefixtures("each_path")
def test_single_token():
    clusters = density_peaks(torch.randn(3, 1, 4), (1, 1))
    assert torch.equal(clusters.assignments, torch.zeros(3, 2, 1, dtype=torch.long))
    assert torch.equal(clusters.centres, torch.zeros(3, 1, dtype=torch.long))


def test_chunk_size_changes_nothing(monkeypatch):
    monkeypatch.setattr(clustering, "DENSE_TOKENS", 0)  # the chunked passes, also at N = 784
    tokens = photo_tokens(112, names=("astronaut", "rocket"))
    reference = density_peaks(tokens, (49, 196), chunk_size=256)
    for chunk_size in (1, 7, 64, 5000):
        clusters = density_peaks(tokens, (49, 196), chunk_size=chunk_size)
        assert torch.equal(clusters.assignments, reference.assignments), f"chunk_size={chunk_size}"
        assert torch.equal(clusters.centres, reference.centres), f"chunk_size={chunk_size}"


@pytest.mark.usefixtures("each_path")
def test_batch_equals_each_image_alone():
    names = ("astronaut", "coffee", "chelsea", "rocket")
    tokens = photo_tokens(112, names)
    batch = density_peaks(tokens, (49, 196))
    for image in range(len(names)):
        alone = density_peaks(tokens[image : image + 1], (49, 196))
        assert torch.equal(alone.assignments[0], batch.assignments[image])
        assert torch.equal(alone.centres[0], batch.centres[image])


@pytest.mark.parametrize("share", [None, 1e-9], ids=["redone-share", "share-exceeded"])
def test_static_shapes_path_gives_the_same_clusters(monkeypatch, share):
    # Under compilation or export a fixed share of the tokens is redone, or all of them when more are uncertain.
    monkeypatch.setattr(clustering, "DENSE_TOKENS", 0)
    generator = torch.Generator().manual_seed(5)
    tokens = with_duplicates(photo_tokens(112, names=("rocket", "coffee")), generator)
    dynamic = density_peaks(tokens, (49, 196), chunk_size=100)
    monkeypatch.setattr(clustering, "is_static", lambda: True)
    if share is not None:
        monkeypatch.setattr(clustering, "REDONE_SHARE", dict.fromkeys(clustering.REDONE_SHARE, share))
    static = density_peaks(tokens, (49, 196), chunk_size=100)
    assert torch.equal(static.assignments, dynamic.assignments)
    assert torch.equal(static.centres, dynamic.centres)


def test_non_finite_tokens_leave_the_other_tokens_clusters_as_they_were(each_path):
    # A NaN or inf token is farther from every token than any finite pair: the finite tokens cluster as without it.
    generator = torch.Generator().manual_seed(7)
    num_tokens = 1100 if each_path == "certified" else 300
    tokens = torch.randn(2, num_tokens, 6, generator=generator)
    broken = torch.tensor([3, 40, 41, num_tokens - 1])
    tokens[0, broken] = torch.tensor([float("nan"), float("inf"), -float("inf"), float("nan")])[:, None]
    tokens[0, 41, 1:] = 0.5  # non-finite in one channel only
    finite = torch.ones(num_tokens, dtype=torch.bool)
    finite[broken] = False
    counts = (20, 80)
    clusters = density_peaks(tokens, counts)
    alone = density_peaks(tokens[:1, finite], counts)
    assert torch.equal(clusters.assignments[0][:, finite], alone.assignments[0])
    assert torch.equal(clusters.centres[0], torch.nonzero(finite)[:, 0][alone.centres[0]])
    assert torch.equal(clusters.assignments[0][:, broken], torch.zeros(2, len(broken), dtype=torch.long))
    assert torch.equal(clusters.assignments[1:], density_peaks(tokens[1:], counts).assignments)


@pytest.mark.usefixtures("each_path")
def test_half_precision_tokens_cluster_like_their_float32_values():
    tokens = photo_tokens(112).to(torch.bfloat16)
    expected = density_peaks(tokens.float(), (49, 196))
    clusters = density_peaks(tokens, (49, 196))
    assert torch.equal(clusters.assignments, expected.assignments)


def test_cluster_tokens_returns_the_assignments():
    tokens = torch.randn(2, 40, 4, generator=torch.Generator().manual_seed(6))
    clusters = density_peaks(tokens, (3, 12))
    assert isinstance(clusters, DensityPeaks)
    assert torch.equal(cluster_tokens(tokens, (3, 12)), clusters.assignments)


def test_cluster_counts_follow_the_reduction_ratio():
    assert cluster_counts(3136, 8, (1, 4)) == (49, 196)
    assert cluster_counts(196, 2, (1, 4)) == (49, 196)
    assert cluster_counts(10, 8, (1, 4)) == (1, 1)  # raised to 1
    assert cluster_counts(20, 2, (1, 4, 8)) == (5, 20, 20)  # clipped to N


@pytest.mark.parametrize(
    "tokens, counts, k, chunk_size, message",
    [
        (torch.randn(10, 4), (2,), 5, 8, "tensor"),
        (torch.ones(1, 10, 4, dtype=torch.long), (2,), 5, 8, "floating-point"),
        (torch.randn(1, 10, 4), (), 5, 8, "cluster_counts"),
        (torch.randn(1, 10, 4), (0, 4), 5, 8, "cluster_counts"),
        (torch.randn(1, 10, 4), (2, 11), 5, 8, "cluster_counts"),
        (torch.randn(1, 10, 4), (2,), 0, 8, "k=0"),
        (torch.randn(1, 10, 4), (2,), 5, 0, "chunk_size=0"),
    ],
)
def test_invalid_arguments_raise_clear_errors(tokens, counts, k, chunk_size, message):
    with pytest.raises(ValueError, match=message):
        density_peaks(tokens, counts, k, chunk_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_gives_the_cpu_clusters():
    tokens = photo_tokens(112, names=("astronaut", "coffee"))
    on_gpu = density_peaks(tokens.cuda(), (49, 196))
    on_cpu = density_peaks(tokens, (49, 196))
    assert torch.equal(on_gpu.assignments.cpu(), on_cpu.assignments)
    assert torch.equal(on_gpu.centres.cpu(), on_cpu.centres)


def test_model_clusters_are_those_of_density_peaks():
    torch.manual_seed(0)
    model = ClusTRModel(tiny_config()).eval()
    pixels = photo_batch((64, 64))
    with torch.no_grad():
        outputs = model(pixels, output_cluster_assignments=True)
        tokens = model.encoder.stages[0].blocks[0].layer_norm_1(model.encoder.stages[0].patch_embeddings(pixels)[0])
    counts = cluster_counts(tokens.shape[1], model.config.cluster_reduction_ratios[0], model.config.cluster_scales)
    assert torch.equal(outputs.cluster_assignments[0], density_peaks(tokens, counts).assignments)
