"""The training paths users take on GPUs, checked on the CPU: a compiled training step (torch.compile with fullgraph,
exact and pooled clustering) and mixed precision (bfloat16 autocast, a bfloat16 model).

The photos are 136x136, so that stage 1 has 34 x 34 = 1156 tokens, above `DENSE_TOKENS`: the clustering takes its
certified chunked passes and, compiled, their static-shape form with `torch.cond`. The aot_eager backend runs Dynamo
and AOTAutograd (forward and backward graphs) without inductor's C++ compilation, which takes minutes here.
"""

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


def test_bfloat16_model_trains(pixel_values):
    model = classifier("exact").to(torch.bfloat16)
    outputs = model(pixel_values.to(torch.bfloat16), labels=LABELS)
    assert outputs.logits.dtype == torch.bfloat16 and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())
    with torch.no_grad():
        clusters = model.clustr(pixel_values.to(torch.bfloat16), output_cluster_assignments=True)
    assert clusters.cluster_assignments[0].shape == (2, 2, (SIZE[0] // 4) ** 2)
