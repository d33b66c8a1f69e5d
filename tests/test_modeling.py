"""ClusTRModel, ClusTRForImageClassification and ClusTRBackbone: shapes, outputs, losses, training features, errors."""

import copy
import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file, save_file
from conftest import photo, photo_batch, tiny_config
from dpc_knn_oracle import dpc_knn_oracle

from clustr_hf import ClusTRBackbone, ClusTRConfig, ClusTRForImageClassification, ClusTRModel


def classifier(config, seed=0):
    torch.manual_seed(seed)
    return ClusTRForImageClassification(config).eval()


@pytest.mark.parametrize(
    "variant, expected", [("b0", 3_322_702), ("b1", 11_682_417), ("b2", 22_690_941), ("b3", 40_246_210)]
)
def test_parameter_counts_equal_the_released_models(variant, expected):
    with torch.device("meta"):
        model = ClusTRForImageClassification(ClusTRConfig.from_variant(variant, num_labels=1000))
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("height, width", [(64, 64), (96, 64), (28, 28), (33, 17), (1, 1)])
def test_model_outputs_nchw_maps_at_any_size(height, width):
    config = tiny_config()
    model = ClusTRModel(config).eval()
    pixel_values = photo("coffee", (height, width))[None]
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
    sizes = [(height, width)]
    for kernel, stride in zip(config.patch_sizes, config.strides):
        h, w = sizes[-1]
        sizes.append(((h + 2 * (kernel // 2) - kernel) // stride + 1, (w + 2 * (kernel // 2) - kernel) // stride + 1))
    expected = [(1, c, h, w) for c, (h, w) in zip(config.hidden_sizes, sizes[1:])]
    assert [tuple(h.shape) for h in outputs.hidden_states] == expected
    assert tuple(outputs.last_hidden_state.shape) == expected[-1]
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state.mean(dim=(2, 3)))
    assert torch.isfinite(outputs.last_hidden_state).all()


def test_classifier_logits_are_the_head_on_the_pooled_tokens():
    model = classifier(tiny_config())
    pixel_values = photo_batch((64, 48))
    with torch.no_grad():
        outputs = model(pixel_values)
        pooled = model.clustr(pixel_values).pooler_output
    assert outputs.logits.shape == (4, 3)
    torch.testing.assert_close(outputs.logits, model.classifier(pooled))


def test_batch_gives_the_same_outputs_as_each_image_alone():
    model = classifier(tiny_config())
    pixel_values = photo_batch((64, 64))
    with torch.no_grad():
        batched = model.clustr(pixel_values, output_cluster_assignments=True)
        for i in range(len(pixel_values)):
            single = model.clustr(pixel_values[i : i + 1], output_cluster_assignments=True)
            torch.testing.assert_close(single.pooler_output, batched.pooler_output[i : i + 1], rtol=1e-5, atol=1e-5)
            for one, many in zip(single.cluster_assignments, batched.cluster_assignments):
                assert torch.equal(one[0], many[i])


def test_cluster_assignments_are_the_dpc_knn_of_each_block_input():
    config = tiny_config(depths=[1, 1, 1, 1])
    model = ClusTRModel(config).eval()
    pixel_values = photo_batch((64, 64), names=("chelsea",))
    captured = []
    handle = model.encoder.stages[0].blocks[0].attention.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach())
    )
    with torch.no_grad():
        outputs = model(pixel_values, output_cluster_assignments=True)
    handle.remove()
    assert len(outputs.cluster_assignments) == 3  # stages 1-3 are clustered, one block each
    expected = dpc_knn_oracle(captured[0][0], (4, 16), k=5)
    assert torch.equal(outputs.cluster_assignments[0][0], expected)
    centres = outputs.cluster_centres[0][0]
    assert torch.equal(outputs.cluster_assignments[0][0, 1, centres], torch.arange(16))


def test_clustered_attention_is_the_weighted_cluster_mean_attention_of_the_spec():
    """Section 2.2 written out for one block: merge by exp(score)-weighted means, attend per scale, sum, project."""
    config = tiny_config(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[2, 2, 3, 4])
    attention = ClusTRModel(config).eval().encoder.stages[0].blocks[0].attention
    torch.manual_seed(3)
    x = torch.randn(1, 64, 8)
    with torch.no_grad():
        output, _ = attention(x, 8, 8)
        clusters = attention.clustering(x, 8, 8, (1, 4))
        weights = torch.exp(attention.score(x))[0, :, 0]
        q = attention.query(x)[0].reshape(64, 2, 4).transpose(0, 1)
        total = 0
        for scale, count in enumerate((1, 4)):
            members = clusters.assignments[0, scale]
            merged = torch.stack([
                (weights[members == c, None] * x[0, members == c]).sum(0) / (weights[members == c].sum() + 1e-6)
                for c in range(count)
            ])
            key, value = attention.cluster_key_values[scale](merged).split(8, dim=-1)
            key, value = key.reshape(count, 2, 4).transpose(0, 1), value.reshape(count, 2, 4).transpose(0, 1)
            total = total + torch.softmax(q @ key.transpose(1, 2) / math.sqrt(4), dim=-1) @ value
        expected = attention.proj(total.transpose(0, 1).reshape(64, 8))
    torch.testing.assert_close(output[0], expected, rtol=1e-5, atol=1e-5)


def kolmogorov_smirnov_distance(weights: torch.Tensor, std: float) -> float:
    """The largest gap between the empirical distribution of `weights` and that of a normal of mean 0 and `std`."""
    values = weights.detach().flatten().double().sort().values
    count = values.numel()
    cdf = torch.special.ndtr(values / std)
    ranks = torch.arange(1, count + 1, dtype=torch.float64)
    return max((ranks / count - cdf).max().item(), (cdf - (ranks - 1) / count).max().item())


def assert_normal(weights: torch.Tensor, std: float, tests: int, name: str) -> None:
    """Kolmogorov-Smirnov test at a false alarm rate of 1e-6 over `tests` tests: P(sqrt(n) D > c) <= 2 exp(-2 c^2).

    It tells a uniform of the same std, a normal truncated at 2 std or a std off by 5% apart at 500,000 weights."""
    critical = math.sqrt(math.log(2 * tests / 1e-6) / 2)
    distance = kolmogorov_smirnov_distance(weights, std)
    assert distance * math.sqrt(weights.numel()) < critical, f"{name} is not a normal of std {std:.4g}: D = {distance}"


def test_initialisation_follows_the_reference():
    """Section 1.7 for every weight: linears N(0, 0.02) (truncated at +-2, i.e. 100 std, so normal in effect),
    convolutions N(0, sqrt(2 / fan_out)), LayerNorms at 1 and 0, all biases 0 (PyTorch's defaults differ in each)."""
    torch.manual_seed(0)
    model = ClusTRForImageClassification(ClusTRConfig.from_variant("b0", num_labels=10))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert len(layers) == 65  # per block: 6 linears and a depthwise convolution (stage 4: 5), 4 patch embeddings
    for name, layer in layers.items():
        if isinstance(layer, torch.nn.Linear):
            std = 0.02
        else:
            std = math.sqrt(2 * layer.groups / (layer.kernel_size[0] * layer.kernel_size[1] * layer.out_channels))
        assert_normal(layer.weight, std, len(layers), name)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), name
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 24  # per stage: the patch embedding's, two per block, the stage's last
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_a_new_classifier_head_gets_the_reference_initialisation(tmp_path):
    """Fine-tuning to other labels replaces the head; the new one is initialised as in section 1.7, not PyTorch's."""
    classifier(tiny_config(num_labels=10)).save_pretrained(tmp_path)
    torch.manual_seed(1)
    model = ClusTRForImageClassification.from_pretrained(tmp_path, num_labels=300, ignore_mismatched_sizes=True)
    assert_normal(model.classifier.weight, 0.02, 1, "the new classifier")
    assert torch.equal(model.classifier.bias, torch.zeros(300))


def test_drop_path_rises_linearly_over_all_blocks():
    model = ClusTRModel(ClusTRConfig.from_variant("b0", drop_path_rate=0.7))
    rates = [block.drop_path.p for stage in model.encoder.stages for block in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.7, 8))


def test_drop_path_only_acts_in_training():
    """In eval a model with drop path gives, every time, what the same weights give without it; in training it drops."""
    model = classifier(tiny_config(drop_path_rate=0.5))
    without_drop_path = ClusTRForImageClassification(tiny_config(drop_path_rate=0.0)).eval()
    without_drop_path.load_state_dict(model.state_dict())
    pixel_values = photo_batch((32, 32))
    with torch.no_grad():
        torch.manual_seed(0)
        evaluated = model(pixel_values).logits
        torch.manual_seed(1)
        assert torch.equal(model(pixel_values).logits, evaluated)
        assert torch.equal(without_drop_path(pixel_values).logits, evaluated)
        model.train()
        torch.manual_seed(0)
        trained = model(pixel_values).logits
        assert torch.equal(without_drop_path.train()(pixel_values).logits, evaluated)  # nothing else is random
    assert not torch.allclose(evaluated, trained)


def test_losses_for_the_three_problem_types():
    pixel_values = photo_batch((32, 32))
    single = classifier(tiny_config())
    labels = torch.tensor([0, 2, 1, 2])
    out = single(pixel_values, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert single.config.problem_type == "single_label_classification"

    multi = classifier(tiny_config(problem_type="multi_label_classification"))
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
    out = multi(pixel_values, labels=targets)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets))

    regression = classifier(tiny_config(num_labels=1))
    values = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = regression(pixel_values, labels=values)
    assert regression.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), values))


@pytest.mark.parametrize("problem_type, labels", [
    ("single_label_classification", torch.tensor([0, 2, 1, 2])),
    ("multi_label_classification", torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]])),
    ("regression", torch.tensor([[0.5, 1, 0], [-1.0, 0, 0], [2.0, 1, 1], [0.0, 0, 3]])),
])
def test_num_items_in_batch_turns_the_loss_into_a_sum_over_the_accumulated_items(problem_type, labels):
    """Trainer passes the item count of all accumulated micro-batches and does not divide the loss itself."""
    model = classifier(tiny_config(problem_type=problem_type))
    pixel_values = photo_batch((32, 32))
    with torch.no_grad():
        mean_loss = model(pixel_values, labels=labels).loss
        accumulated_items = torch.tensor(3 * labels.numel())
        scaled = model(pixel_values, labels=labels, num_items_in_batch=accumulated_items).loss
    torch.testing.assert_close(scaled, mean_loss * labels.numel() / accumulated_items)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    model = classifier(tiny_config(drop_path_rate=0.0)).train()
    pixel_values = photo_batch((32, 32))
    labels = torch.tensor([0, 1, 2, 1])
    model(pixel_values, labels=labels).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    checkpointed = copy.deepcopy(model)
    checkpointed.zero_grad()
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(block.gradient_checkpointing for stage in checkpointed.clustr.encoder.stages for block in stage.blocks)
    pixel_values.requires_grad_(use_reentrant)  # reentrant checkpointing needs an input that requires grad
    checkpointed(pixel_values, labels=labels).loss.backward()
    for name, p in checkpointed.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_score_layer_is_trained_through_the_cluster_means():
    model = classifier(tiny_config()).train()
    model(photo_batch((64, 64)), labels=torch.tensor([0, 1, 2, 1])).loss.backward()
    score = model.clustr.encoder.stages[0].blocks[0].attention.score
    assert score.weight.grad is not None and score.weight.grad.abs().sum() > 0


def test_backbone_returns_the_requested_stages():
    config = tiny_config(out_features=["stage1", "stage3", "stage4"])
    backbone = ClusTRBackbone(config).eval()
    pixel_values = photo_batch((64, 96), names=("astronaut", "coffee"))
    with torch.no_grad():
        outputs = backbone(pixel_values)
        maps = ClusTRModel(config).eval()
        maps.load_state_dict(backbone.clustr.state_dict())
        expected = maps(pixel_values, output_hidden_states=True).hidden_states
    assert [tuple(f.shape) for f in outputs.feature_maps] == [(2, 8, 16, 24), (2, 24, 4, 6), (2, 32, 2, 3)]
    assert outputs.hidden_states is None
    for feature_map, index in zip(outputs.feature_maps, (0, 2, 3)):
        torch.testing.assert_close(feature_map, expected[index])
    assert backbone.channels == [8, 24, 32]
    as_tuple = backbone(pixel_values, return_dict=False)
    assert len(as_tuple) == 1 and len(as_tuple[0]) == 3


@pytest.mark.parametrize("pixel_values, message", [
    (torch.zeros(1, 1, 32, 32), "has 1 channels but the model expects 3; convert the images"),
    (torch.zeros(3, 32, 32), r"must be a \(batch, channels, height, width\) tensor, got \(3, 32, 32\); add a batch"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "must be floating point, got torch.uint8"),
    (torch.zeros(0, 3, 32, 32), "is empty"),
    (torch.zeros(1, 3, 0, 32), "is empty"),
])
def test_bad_inputs_get_clear_errors(pixel_values, message):
    model = classifier(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(pixel_values)


@pytest.mark.parametrize("overrides, message", [
    ({"clustering_mode": "Pooled"}, "clustering_mode='Pooled' is not one of 'exact', 'pooled'"),
    ({"cluster_num_neighbors": 0}, "cluster_num_neighbors=0 must be >= 1"),
    ({"cluster_reduction_ratios": [8, 4, 1]}, "cluster_reduction_ratios has 3 entries but depths has 4"),
])
def test_config_overrides_to_from_pretrained_are_validated(tmp_path, overrides, message):
    classifier(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        ClusTRForImageClassification.from_pretrained(tmp_path, **overrides)


def test_config_attributes_assigned_after_construction_are_validated_when_the_model_is_built():
    config = tiny_config()
    config.cluster_reduction_ratios = [8, 4, 1]
    with pytest.raises(StrictDataclassClassValidationError, match="cluster_reduction_ratios has 3 entries"):
        ClusTRModel(config)


def test_save_pretrained_writes_nothing_for_a_config_changed_into_an_invalid_one(tmp_path):
    model = classifier(tiny_config())
    model.config.clustering_mode = "Pooled"
    with pytest.raises(StrictDataclassClassValidationError, match="clustering_mode='Pooled'"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_half_precision_input_to_a_float32_model_says_to_cast_one_of_them():
    model = classifier(tiny_config())
    with pytest.raises(ValueError, match=r"pixel_values are torch.float16 but the model's weights are torch.float32; "
                                         r"cast the input \(pixel_values.to\(torch.float32\)\) or the model"):
        model(photo_batch((32, 32)).half())
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # autocast mixes dtypes on purpose
        assert torch.isfinite(model(photo_batch((32, 32)).bfloat16()).logits).all()


@pytest.mark.parametrize("labels", [[0, 2, 1, 2], torch.tensor([0, 2, 1, 2], dtype=torch.int32)])
def test_labels_as_a_list_or_int32_give_the_int64_loss(labels):
    model = classifier(tiny_config())
    pixel_values = photo_batch((32, 32))
    with torch.no_grad():
        expected = model(pixel_values, labels=torch.tensor([0, 2, 1, 2])).loss
        torch.testing.assert_close(model(pixel_values, labels=labels).loss, expected)
    with pytest.raises(ValueError, match="labels must be a tensor or a .nested. list of numbers, got list"):
        model(pixel_values, labels=["cat", "dog", "cat", "dog"])


@pytest.mark.parametrize("model_class", [ClusTRForImageClassification, ClusTRBackbone])
def test_heads_return_the_clusters_and_reject_misspelled_keywords(model_class):
    model = model_class(tiny_config()).eval()
    pixel_values = photo_batch((32, 32))
    with torch.no_grad():
        outputs = model(pixel_values, output_cluster_assignments=True)
        base = model.clustr(pixel_values, output_cluster_assignments=True)
    assert len(outputs.cluster_assignments) == len(outputs.cluster_centres) == 4  # clustered blocks of stages 1-3
    for ours, theirs in zip(outputs.cluster_assignments + outputs.cluster_centres,
                            base.cluster_assignments + base.cluster_centres):
        assert torch.equal(ours, theirs)
    assert model(pixel_values).cluster_assignments is None
    with pytest.raises(TypeError, match="unexpected keyword argument.s. output_cluster_assignment; it takes pixel_values"):
        model(pixel_values, output_cluster_assignment=True)


def test_checkpoints_with_the_former_key_values_names_load(tmp_path):
    """The clustered blocks' projections were saved as `attention.key_values.<scale>` before they were renamed."""
    model = classifier(tiny_config())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert any(".attention.cluster_key_values.1.weight" in name for name in weights)
    save_file({name.replace(".cluster_key_values.", ".key_values."): tensor for name, tensor in weights.items()},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = ClusTRForImageClassification.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_exact_clustering_of_many_tokens_warns_once_and_names_the_pooled_mode(monkeypatch):
    from transformers.testing_utils import CaptureLogger

    from clustr_hf import modeling_clustr

    monkeypatch.setattr(modeling_clustr, "EXACT_CLUSTERING_WARNING_TOKENS", 16 * 16 - 1)
    pixel_values = photo("coffee", (64, 64))[None]  # 16 x 16 tokens in stage 1, fewer after
    for mode, expected in [("pooled", ""), ("exact", "clustering_mode=\"pooled\""), ("exact", "")]:
        model = ClusTRModel(tiny_config(clustering_mode=mode)).eval()
        with CaptureLogger(modeling_clustr.logger) as captured, torch.no_grad():
            model(pixel_values)
        if expected:
            assert "Exact clustering of 256 tokens per block (a 16x16 grid) is slow" in captured.out
            assert expected in captured.out
        else:
            assert captured.out == ""  # pooled mode never warns, and exact mode warns once per process
