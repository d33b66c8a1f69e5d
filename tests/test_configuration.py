"""ClusTRConfig: released variants, validation with clear messages, backbone fields, serialisation."""

import json

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError

from clustr_hf import VARIANTS, ClusTRConfig


@pytest.mark.parametrize(
    "name, widths, heads, depths, drop_path",
    [
        ("b0", [32, 64, 160, 256], [1, 2, 5, 8], [2, 2, 2, 2], 0.1),
        ("b1", [64, 128, 256, 512], [1, 2, 4, 8], [1, 2, 6, 1], 0.1),
        ("b2", [64, 128, 256, 512], [1, 2, 4, 8], [3, 5, 13, 2], 0.1),
        ("b3", [64, 128, 320, 512], [1, 2, 5, 8], [3, 5, 18, 3], 0.3),
    ],
)
def test_variants_match_the_released_configurations(name, widths, heads, depths, drop_path):
    config = ClusTRConfig.from_variant(name)
    assert list(config.hidden_sizes) == widths
    assert list(config.num_attention_heads) == heads
    assert list(config.depths) == depths
    assert config.drop_path_rate == drop_path
    assert list(config.mlp_ratios) == [8, 8, 4, 4]
    assert list(config.cluster_reduction_ratios) == [8, 4, 2, 1]
    assert list(config.cluster_scales) == [1, 4]
    assert config.cluster_num_neighbors == 5
    assert config.layer_norm_eps == 1e-6 and config.patch_embed_layer_norm_eps == 1e-5
    assert config.qkv_bias is True


def test_variant_overrides_and_unknown_names():
    assert ClusTRConfig.from_variant("b2", num_labels=10, drop_path_rate=0.0).num_labels == 10
    with pytest.raises(ValueError, match="Unknown ClusTR variant 'b9'; the known variants are b0, b1, b2, b3"):
        ClusTRConfig.from_variant("b9")
    assert set(VARIANTS) == {"b0", "b1", "b2", "b3"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_attention_heads": [1, 2, 3, 8]}, "Stage 3: hidden size 160 is not divisible by its 3 attention heads"),
        ({"cluster_num_neighbors": 0}, "cluster_num_neighbors=0 must be >= 1"),
        ({"cluster_reduction_ratios": [8, 4, 0, 1]}, "cluster_reduction_ratios=.* has a value below 1"),
        ({"cluster_scales": []}, "cluster_scales=.* must be a non-empty list"),
        ({"cluster_scales": [0, 4]}, "cluster_scales=.* must be a non-empty list of integers >= 1"),
        ({"depths": [2, 0, 2, 2]}, "depths=.* has a value below 1"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate=1.0 must lie in \[0, 1\)"),
        ({"hidden_act": "swishy"}, "hidden_act='swishy' is not a known activation"),
        ({"cluster_chunk_size": 0}, "cluster_chunk_size=0 must be >= 1"),
    ],
)
def test_inconsistent_settings_are_rejected_with_the_reason(overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        ClusTRConfig(**overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"depths": []}, "depths is empty"),
        ({"hidden_sizes": [32, 64, 160]}, "hidden_sizes has 3 entries but depths has 4"),
        ({"cluster_reduction_ratios": [8, 4, 1]}, "cluster_reduction_ratios has 3 entries but depths has 4"),
        ({"depths": [2, 2, 2], "out_features": ["stage4"]}, "hidden_sizes has 4 entries but depths has 3"),
    ],
)
def test_per_stage_lists_of_other_lengths_are_rejected_before_the_backbone_fields(overrides, message):
    with pytest.raises(ValueError, match=message):
        ClusTRConfig(**overrides)


def test_config_json_with_three_depths_names_the_list_lengths(tmp_path):
    """A hand-edited config.json used to report its (valid) out_features instead."""
    ClusTRConfig(out_features=["stage2", "stage4"]).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "depths": [2, 2, 2]}))
    with pytest.raises(ValueError, match="hidden_sizes has 4 entries but depths has 3; give one value per stage"):
        ClusTRConfig.from_pretrained(tmp_path)


def test_backbone_fields():
    config = ClusTRConfig(out_features=["stage2", "stage4"])
    assert config.stage_names == ["stage1", "stage2", "stage3", "stage4"]
    assert list(config.out_indices) == [1, 3]
    assert list(ClusTRConfig(out_indices=[0, 2]).out_features) == ["stage1", "stage3"]
    assert list(ClusTRConfig().out_features) == ["stage4"]
    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        ClusTRConfig(out_features=["stage5"])


def test_save_and_load_round_trip(tmp_path):
    config = ClusTRConfig.from_variant("b1", num_labels=4, out_features=["stage1", "stage3"], cluster_chunk_size=64)
    config.save_pretrained(tmp_path)
    loaded = ClusTRConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.model_type == "clustr"
