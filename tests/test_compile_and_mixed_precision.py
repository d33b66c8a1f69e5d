"""The training paths users take on GPUs, checked on the CPU: a compiled training step (torch.compile with fullgraph,
exact and pooled clustering) and mixed precision (bfloat16 autocast, a bfloat16 model).

The photos are 136x136, so that stage 1 has 34 x 34 = 1156 tokens, above `DENSE_TOKENS`: the clustering takes its
certified chunked passes and, compiled, their static-shape form with `torch.cond`. The aot_eager backend runs Dynamo
and AOTAutograd (forward and backward graphs) without inductor's C++ compilation, which takes minutes here.
"""

import copy

import pytest
import torch
from conftest import photo_batch, tiny_config

from clustr_hf import ClusTRForImageClassification
from clustr_hf import modeling_clustr
from clustr_hf.clustering import DENSE_TOKENS, density_peaks


SIZE = (136, 136)
LABELS = torch.tensor([0, 2])


@pytest.fixture(scope="module")
def pixel_values():
    return photo_batch(SIZE, names=("astronaut", "coffee"))


def classifier(mode):
    torch.manual_seed(0)
    config = tiny_config(depths=[1, 1, 1, 1], clustering_mode=mode, pooled_max_clusters=20)
    return ClusTRForImageClassification(config).train()


def training_step(model, pixel_values):
    """The outputs (with the clusters) and the gradients of one forward and backward."""
    model.zero_grad()
    outputs = model(pixel_values, labels=LABELS, output_cluster_assignments=True)
    outputs.loss.backward()
    return outputs, [parameter.grad.clone() for parameter in model.parameters()]


@pytest.mark.parametrize("mode", ["exact", "pooled"])
def test_compiled_training_step_gives_the_eager_logits_gradients_and_clusters(mode, pixel_values):
    model = classifier(mode)
    assert (SIZE[0] // 4) ** 2 > DENSE_TOKENS
    # Eager first: transformers installs the hooks that record the clusters on first use, under a lock.
    eager, eager_gradients = training_step(model, pixel_values)
    torch._dynamo.reset()
    compiled, compiled_gradients = training_step(torch.compile(model, fullgraph=True, backend="aot_eager"),
                                                 pixel_values)
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_gradients, eager_gradients, rtol=1e-4, atol=1e-6)
    eager_again, _ = training_step(model, pixel_values)  # eager after compiled: the outputs are recorded again
    assert len(compiled.cluster_assignments) == len(eager.cluster_assignments) == len(eager_again.cluster_assignments)
    for compiled_block, eager_block, again in zip(compiled.cluster_assignments, eager.cluster_assignments,
                                                  eager_again.cluster_assignments):
        assert torch.equal(compiled_block, eager_block) and torch.equal(again, eager_block)
    assert len(eager.cluster_assignments) == 3


def test_bfloat16_autocast_trains_and_clusters_in_full_precision(pixel_values, monkeypatch):
    model = classifier("exact")
    clustered = []

    def recording(tokens, *args, **kwargs):
        clustered.append((tokens, args, kwargs, density_peaks(tokens, *args, **kwargs)))
        return clustered[-1][-1]

    monkeypatch.setattr(modeling_clustr, "density_peaks", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(pixel_values, labels=LABELS)
    assert outputs.logits.dtype == torch.bfloat16 and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())
    # Whatever autocast makes of the tokens (bfloat16 on the CPU), they are clustered as their float32 values are
    # outside autocast: the clustering's products run in float32 and float64, not bfloat16.
    assert len(clustered) == 3
    for tokens, args, kwargs, clusters in clustered:
        outside = density_peaks(tokens.float(), *args, **kwargs)
        assert torch.equal(clusters.assignments, outside.assignments)
        assert torch.equal(clusters.centres, outside.centres)
    tokens = clustered[0][0].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = density_peaks(tokens, *clustered[0][1], **clustered[0][2])
    assert torch.equal(inside.assignments, density_peaks(tokens, *clustered[0][1], **clustered[0][2]).assignments)


def test_bfloat16_model_computes_what_float32_computes_up_to_its_rounding(pixel_values, monkeypatch):
    """A bfloat16 model's clusters are those the clustering gives its tokens' values in float32, and with those
    clusters, the same (bfloat16) weights and photos in float32 give its logits, loss and gradients up to rounding."""
    torch.manual_seed(0)
    # Linear weights of std 0.2, not 0.02: at the default the attention is nearly uniform and the score weights nearly
    # equal, so the logits would not show a defect there.
    model = ClusTRForImageClassification(tiny_config(depths=[1, 1, 1, 1], initializer_range=0.2))
    model = model.train().to(torch.bfloat16)
    in_float32 = copy.deepcopy(model).float()
    photos = pixel_values.to(torch.bfloat16)
    clustered = []

    def recording(tokens, *args, **kwargs):
        clustered.append((tokens, args, kwargs, density_peaks(tokens, *args, **kwargs)))
        return clustered[-1][-1]

    monkeypatch.setattr(modeling_clustr, "density_peaks", recording)
    outputs = model(photos, labels=LABELS)
    outputs.loss.backward()
    assert outputs.logits.dtype == torch.bfloat16
    assert len(clustered) == 3
    for tokens, args, kwargs, clusters in clustered:
        assert tokens.dtype == torch.bfloat16
        in_full_precision = density_peaks(tokens.float(), *args, **kwargs)
        assert torch.equal(clusters.assignments, in_full_precision.assignments)
        assert torch.equal(clusters.centres, in_full_precision.centres)

    # The float32 model's own tokens differ from the bfloat16 ones by rounding, which moves tokens between clusters;
    # given the same clusters, only rounding separates the two. bfloat16 keeps 8 significant bits (unit roundoff
    # u = 2^-8) and every layer's output is rounded to it: the logits and loss stay within about u of float32's,
    # relative to their size (bound 2u), the gradients, through backward's longer chain, within a few u (bound 8u).
    same_clusters = iter([clusters for *_, clusters in clustered])
    monkeypatch.setattr(modeling_clustr, "density_peaks", lambda tokens, *args, **kwargs: next(same_clusters))
    expected = in_float32(photos.float(), labels=LABELS)
    expected.loss.backward()
    unit_roundoff = 2.0**-8
    scale = expected.logits.abs().max().item()
    torch.testing.assert_close(outputs.logits.float(), expected.logits, rtol=0, atol=2 * unit_roundoff * scale)
    torch.testing.assert_close(outputs.loss.float(), expected.loss, rtol=2 * unit_roundoff, atol=0)
    gradients = torch.cat([parameter.grad.float().flatten() for parameter in model.parameters()])
    expected_gradients = torch.cat([parameter.grad.flatten() for parameter in in_float32.parameters()])
    assert (gradients - expected_gradients).norm() <= 8 * unit_roundoff * expected_gradients.norm()
