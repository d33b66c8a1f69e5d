"""SDPA is ClusTR's default attention, agrees with eager, and eager serves output_attentions (shapes as documented
in ClusTRModel)."""

import copy
from unittest import mock

import pytest
import torch
from conftest import photo_batch, tiny_config

from clustr_hf import ClusTRForImageClassification, cluster_counts


HEIGHT, WIDTH = 64, 96


def counting_sdpa():
    """A patch of torch's scaled_dot_product_attention that counts its calls and still computes it."""
    return mock.patch.object(
        torch.nn.functional, "scaled_dot_product_attention", wraps=torch.nn.functional.scaled_dot_product_attention
    )


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    sdpa = ClusTRForImageClassification(tiny_config()).eval()
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    return sdpa, eager


def expected_attention_calls(config) -> int:
    """One softmax-attention product per scale in a clustered block, one in a full-attention block."""
    return sum(
        depth * (len(config.cluster_scales) if ratio > 1 else 1)
        for depth, ratio in zip(config.depths, config.cluster_reduction_ratios)
    )


def test_sdpa_is_the_default_and_runs_every_attention_product(models):
    sdpa, eager = models
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    pixel_values = photo_batch((HEIGHT, WIDTH))
    with counting_sdpa() as sdpa_calls, torch.no_grad():
        sdpa(pixel_values)
    assert sdpa_calls.call_count == expected_attention_calls(sdpa.config) == 9
    with counting_sdpa() as sdpa_calls, torch.no_grad():
        eager(pixel_values)
    assert sdpa_calls.call_count == 0


def test_eager_and_sdpa_agree(models):
    sdpa, eager = models
    pixel_values = photo_batch((HEIGHT, WIDTH))
    with torch.no_grad():
        sdpa_outputs = sdpa(pixel_values, output_hidden_states=True)
        eager_outputs = eager(pixel_values, output_hidden_states=True)
    torch.testing.assert_close(sdpa_outputs.logits, eager_outputs.logits, atol=1e-5, rtol=1e-4)
    for sdpa_map, eager_map in zip(sdpa_outputs.hidden_states, eager_outputs.hidden_states):
        torch.testing.assert_close(sdpa_map, eager_map, atol=1e-5, rtol=1e-4)


def test_output_attentions_falls_back_to_eager_with_the_documented_shapes(models):
    sdpa, _ = models
    config = sdpa.config
    pixel_values = photo_batch((HEIGHT, WIDTH))
    with counting_sdpa() as sdpa_calls, torch.no_grad():
        outputs = sdpa(pixel_values, output_attentions=True)
        plain_logits = sdpa(pixel_values).logits
    assert sdpa_calls.call_count == expected_attention_calls(config)  # only the call without attentions
    torch.testing.assert_close(outputs.logits, plain_logits, atol=1e-5, rtol=1e-4)

    assert len(outputs.attentions) == sum(config.depths)
    blocks = [(stage, block) for stage, depth in enumerate(config.depths) for block in range(depth)]
    height, width = HEIGHT, WIDTH
    grids = []
    for stride in config.strides:
        height, width = (height - 1) // stride + 1, (width - 1) // stride + 1  # conv with padding k // 2
        grids.append(height * width)
    for (stage, _), attention in zip(blocks, outputs.attentions):
        tokens, ratio = grids[stage], config.cluster_reduction_ratios[stage]
        counts = cluster_counts(tokens, ratio, config.cluster_scales) if ratio > 1 else (tokens,)
        assert attention.shape == (4, config.num_attention_heads[stage], tokens, sum(counts))
        parts = attention.split(list(counts), dim=-1)
        for part in parts:  # each scale's probabilities sum to one over its clusters
            torch.testing.assert_close(part.sum(-1), torch.ones_like(part.sum(-1)), atol=1e-5, rtol=0)
    first_counts = cluster_counts(grids[0], config.cluster_reduction_ratios[0], config.cluster_scales)
    assert first_counts == (6, 24)  # 64x96 input: a 16x24 grid, 384 // 8**2 = 6 coarse and 24 fine clusters
