"""PyTorch ClusTR: a pyramid vision transformer with clustering-guided attention (ALGORITHM.md sections 1-2)."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import StochasticDepth
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils.generic import can_return_tuple

from .clustering import capped_cluster_counts, cluster_counts, density_peaks, pooled_density_peaks
from .configuration_clustr import ClusTRConfig


REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_clustr.ClusTRConfig",
    "AutoModel": "modeling_clustr.ClusTRModel",
    "AutoModelForImageClassification": "modeling_clustr.ClusTRForImageClassification",
    "AutoBackbone": "modeling_clustr.ClusTRBackbone",
}
"""The config.json auto_map of a saved ClusTR model: each Auto class finds its ClusTR class in the saved .py files."""


def block_cluster_counts(config: ClusTRConfig, num_tokens: int, reduction_ratio: int) -> tuple[int, ...]:
    """Clusters per scale of a clustered block with `num_tokens` tokens: capped in the "pooled" clustering mode."""
    if config.clustering_mode == "pooled":
        return capped_cluster_counts(num_tokens, reduction_ratio, config.cluster_scales, config.pooled_max_clusters)
    return cluster_counts(num_tokens, reduction_ratio, config.cluster_scales)


def eager_attention_forward(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Softmax attention written out, so that the probabilities can be returned; (B, N, heads, d) and (B, h, N, M)."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@dataclass
class ClusTRModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` plus, with `output_cluster_assignments=True`, one entry per clustered block
    (stages with reduction ratio > 1, in order): `cluster_assignments` (B, scales, N) cluster numbers of the block's
    N tokens (row-major on the stage's grid), `cluster_centres` (B, clusters of the finest scale) the centres' token
    indices, best first; cluster c of any scale has centre `cluster_centres[..., c]`."""

    cluster_assignments: tuple[torch.LongTensor, ...] | None = None
    cluster_centres: tuple[torch.LongTensor, ...] | None = None


class ClusTRPatchEmbeddings(nn.Module):
    """Overlapping patch embedding: strided convolution, then LayerNorm over the flattened tokens (1.1)."""

    def __init__(self, config: ClusTRConfig, stage: int):
        super().__init__()
        in_channels = config.num_channels if stage == 0 else config.hidden_sizes[stage - 1]
        patch_size = config.patch_sizes[stage]
        self.proj = nn.Conv2d(
            in_channels, config.hidden_sizes[stage], patch_size, stride=config.strides[stage], padding=patch_size // 2
        )
        self.layer_norm = nn.LayerNorm(config.hidden_sizes[stage], eps=config.patch_embed_layer_norm_eps)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        embeddings = self.proj(feature_map)
        height, width = embeddings.shape[-2:]
        return self.layer_norm(embeddings.flatten(2).transpose(1, 2)), height, width


class ClusTRAttention(nn.Module):
    """Multi-head attention whose keys and values are content clusters of the tokens (2.2), or all tokens (2.1).

    With `reduction_ratio > 1` the tokens are clustered by DPC-kNN at every scale, merged into score-weighted means
    and projected to keys and values per scale; the full-resolution queries attend to each scale and the results are
    summed. With `reduction_ratio == 1` it is plain self-attention.
    """

    def __init__(self, config: ClusTRConfig, stage: int):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_sizes[stage]
        self.num_heads = config.num_attention_heads[stage]
        self.head_dim = self.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.reduction_ratio = config.cluster_reduction_ratios[stage]
        self.is_causal = False
        self.query = nn.Linear(self.hidden_size, self.hidden_size, bias=config.qkv_bias)
        if self.reduction_ratio > 1:
            self.score = nn.Linear(self.hidden_size, 1)
            self.key_values = nn.ModuleList(
                nn.Linear(self.hidden_size, 2 * self.hidden_size, bias=config.qkv_bias) for _ in config.cluster_scales
            )
        else:
            self.key_value = nn.Linear(self.hidden_size, 2 * self.hidden_size, bias=config.qkv_bias)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.proj = nn.Linear(self.hidden_size, self.hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def merge_clusters(self, hidden_states: torch.Tensor, assignments: torch.Tensor, num_clusters: int):
        """Score-weighted mean of each cluster's tokens (2.2 step 5); gradients reach the tokens and the scores."""
        batch_size, _, channels = hidden_states.shape
        weights = torch.exp(self.score(hidden_states))
        index = assignments[:, :, None]
        totals = hidden_states.new_zeros(batch_size, num_clusters, channels)
        totals = totals.scatter_add(1, index.expand(-1, -1, channels), weights * hidden_states)
        weight_sums = hidden_states.new_zeros(batch_size, num_clusters, 1).scatter_add(1, index, weights)
        return totals / (weight_sums + 1e-6)

    def cluster(self, hidden_states: torch.Tensor, height: int, width: int):
        """The block's `DensityPeaks` clusters of its (B, N, C) tokens on the (height, width) grid and their counts."""
        counts = block_cluster_counts(self.config, hidden_states.shape[1], self.reduction_ratio)
        tokens = hidden_states.detach()
        if self.config.clustering_mode == "pooled":
            return pooled_density_peaks(tokens, (height, width), counts, self.config.cluster_num_neighbors,
                                        self.config.pooled_tokens_per_cluster, self.config.cluster_chunk_size), counts
        return density_peaks(tokens, counts, self.config.cluster_num_neighbors, self.config.cluster_chunk_size), counts

    def forward(self, hidden_states: torch.Tensor, height: int, width: int, output_attentions: bool = False):
        """Returns the attention output (B, N, C) of the tokens on the (height, width) grid, the attention
        probabilities if asked (see ClusTRModel), and the block's `DensityPeaks` clusters (None for full attention)."""
        attention: Callable = eager_attention_forward
        if not output_attentions:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        query = self._heads(self.query(hidden_states))
        clusters = None
        if self.reduction_ratio > 1:
            clusters, counts = self.cluster(hidden_states, height, width)
            key_value_sources = [
                (self.merge_clusters(hidden_states, clusters.assignments[:, scale], count), key_value)
                for scale, (count, key_value) in enumerate(zip(counts, self.key_values))
            ]
        else:
            key_value_sources = [(hidden_states, self.key_value)]

        output, probabilities = 0, []
        for source, key_value in key_value_sources:
            key, value = key_value(source).chunk(2, dim=-1)
            scale_output, weights = attention(
                self, query, self._heads(key), self._heads(value), None,
                dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling,
            )
            output = output + scale_output
            probabilities.append(weights)
        output = self.proj_dropout(self.proj(output.flatten(2)))
        return output, torch.cat(probabilities, dim=-1) if output_attentions else None, clusters


class ClusTRFeedForward(nn.Module):
    """fc1, then GELU(a + depth-wise 3x3 conv(a)) on the token grid, dropout, fc2, dropout (1.3)."""

    def __init__(self, config: ClusTRConfig, stage: int):
        super().__init__()
        hidden_size = config.hidden_sizes[stage]
        inner_size = int(hidden_size * config.mlp_ratios[stage])
        self.dense1 = nn.Linear(hidden_size, inner_size)
        self.dwconv = nn.Conv2d(inner_size, inner_size, 3, padding=1, groups=inner_size)
        self.activation = ACT2FN[config.hidden_act]
        self.dense2 = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden_states = self.dense1(hidden_states)
        grid = hidden_states.transpose(1, 2).unflatten(2, (height, width))
        hidden_states = self.activation(hidden_states + self.dwconv(grid).flatten(2).transpose(1, 2))
        return self.dropout(self.dense2(self.dropout(hidden_states)))


class ClusTRLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + DropPath(Attention(LN(x))), then x + DropPath(FFN(LN(x))) (1.2)."""

    def __init__(self, config: ClusTRConfig, stage: int, drop_path: float):
        super().__init__()
        hidden_size = config.hidden_sizes[stage]
        self.layer_norm_1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = ClusTRAttention(config, stage)
        self.layer_norm_2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClusTRFeedForward(config, stage)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, hidden_states: torch.Tensor, height: int, width: int, output_attentions: bool = False):
        attention_output, attention_probs, clusters = self.attention(
            self.layer_norm_1(hidden_states), height, width, output_attentions
        )
        hidden_states = hidden_states + self.drop_path(attention_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.layer_norm_2(hidden_states), height, width))
        return hidden_states, attention_probs, clusters


class ClusTRStage(nn.Module):
    """Patch embedding, the stage's blocks, and a final LayerNorm; returns the stage's (B, C, H, W) map (1.4)."""

    def __init__(self, config: ClusTRConfig, stage: int, drop_paths: list[float]):
        super().__init__()
        self.patch_embeddings = ClusTRPatchEmbeddings(config, stage)
        self.blocks = nn.ModuleList(ClusTRLayer(config, stage, rate) for rate in drop_paths)
        self.layer_norm = nn.LayerNorm(config.hidden_sizes[stage], eps=config.layer_norm_eps)

    def forward(self, feature_map: torch.Tensor, output_attentions: bool = False):
        """Returns the stage's map, its blocks' attention probabilities (if asked) and their clusters."""
        hidden_states, height, width = self.patch_embeddings(feature_map)
        attentions, clusters = (), ()
        for block in self.blocks:
            hidden_states, attention_probs, block_clusters = block(hidden_states, height, width, output_attentions)
            attentions += (attention_probs,) if output_attentions else ()
            clusters += (block_clusters,) if block_clusters is not None else ()
        hidden_states = self.layer_norm(hidden_states)
        return hidden_states.transpose(1, 2).unflatten(2, (height, width)), attentions, clusters


class ClusTREncoder(nn.Module):
    def __init__(self, config: ClusTRConfig):
        super().__init__()
        rates = [rate * config.drop_path_rate / max(sum(config.depths) - 1, 1) for rate in range(sum(config.depths))]
        starts = [sum(config.depths[:stage]) for stage in range(config.num_stages)]
        self.stages = nn.ModuleList(
            ClusTRStage(config, stage, rates[start : start + depth])
            for stage, (start, depth) in enumerate(zip(starts, config.depths))
        )

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False):
        """Returns the per-stage (B, C, H, W) maps, the per-block attention probabilities (if asked) and the
        `DensityPeaks` of every clustered block."""
        feature_maps, attentions, clusters = [], (), ()
        feature_map = pixel_values
        for stage in self.stages:
            feature_map, stage_attentions, stage_clusters = stage(feature_map, output_attentions)
            feature_maps.append(feature_map)
            attentions += stage_attentions
            clusters += stage_clusters
        return feature_maps, attentions, clusters


class ClusTRPreTrainedModel(PreTrainedModel):
    config_class = ClusTRConfig
    config: ClusTRConfig
    base_model_prefix = "clustr"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ClusTRLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal linears, fan-out normal convolutions, unit LayerNorms, zero biases (1.7)."""
        super()._init_weights(module)
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers saves; a class registered for remote code (importing clustr_hf registers all) also writes
        the auto_map of all four Auto classes, where transformers would write only its own."""
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **REMOTE_CODE_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Reject inputs the model would otherwise fail on deep inside, or silently misread."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(
                f"pixel_values must be a (batch, channels, height, width) tensor, got {shape}; "
                f"add a batch dimension with pixel_values[None] or use the image processor."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be floating point, got {pixel_values.dtype}; "
                f"rescale and normalise images with ClusTRImageProcessor first."
            )
        batch_size, channels, height, width = pixel_values.shape
        if channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects {self.config.num_channels}; "
                f"convert the images (e.g. greyscale to RGB) or set num_channels in the config."
            )
        if batch_size == 0 or height < 1 or width < 1:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)} is empty; give at least one image "
                             f"of at least 1x1 pixels.")


class ClusTRModel(ClusTRPreTrainedModel):
    """The ClusTR encoder: four stages of clustering attention, returning NCHW feature maps.

    Outputs (`BaseModelOutputWithPooling`): `last_hidden_state` is stage 4's (B, C4, H/32, W/32) map, `pooler_output`
    its mean over positions (B, C4), `hidden_states` one (B, Ci, Hi, Wi) map per stage. `attentions` (eager only)
    holds one tensor per block: for a clustered block (B, heads, N, M1 + M2), the probabilities over the coarse
    clusters in `[..., :M1]` and over the fine clusters in `[..., M1:]` (each part sums to 1); for a full-attention
    block (B, heads, N, N). With `output_cluster_assignments=True` it also returns each clustered block's clusters
    (see `ClusTRModelOutput`). Any input size of at least 1x1 works (every stage then keeps at least one token).
    """

    def __init__(self, config: ClusTRConfig):
        super().__init__(config)
        self.encoder = ClusTREncoder(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_cluster_assignments: bool = False,
        **kwargs,
    ) -> ClusTRModelOutput:
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        self.check_pixel_values(pixel_values)
        feature_maps, attentions, clusters = self.encoder(pixel_values, output_attentions)
        last_hidden_state = feature_maps[-1]
        return ClusTRModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state.mean(dim=(2, 3)),
            hidden_states=tuple(feature_maps) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
            cluster_assignments=tuple(c.assignments for c in clusters) if output_cluster_assignments else None,
            cluster_centres=tuple(c.centres for c in clusters) if output_cluster_assignments else None,
        )


class ClusTRForImageClassification(ClusTRPreTrainedModel):
    """ClusTR with a linear classifier on the mean of stage 4's tokens (1.5)."""

    def __init__(self, config: ClusTRConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.clustr = ClusTRModel(config)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        """`labels`: class indices (B,) for single-label, multi-hot floats (B, num_labels) for multi-label, or
        targets for regression (`num_labels == 1`), per `config.problem_type`. Trainer's `num_items_in_batch` keeps the
        loss correct under gradient accumulation for all three."""
        if labels is not None and self.config.problem_type is None:
            # transformers' loss picks the problem type on first use and stores it in the config; picked here, before
            # the encoder, because torch.compile loses a config mutation made after the clustering's torch.cond.
            self.config.problem_type = (
                "regression" if self.num_labels == 1
                else "single_label_classification" if labels.dtype in (torch.long, torch.int)
                else "multi_label_classification"
            )
        outputs = self.clustr(
            pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            num_items_in_batch = kwargs.pop("num_items_in_batch", None)
            loss = self.loss_function(labels, logits, self.config, num_items_in_batch=num_items_in_batch, **kwargs)
            if num_items_in_batch is not None and self.config.problem_type != "single_label_classification":
                # The MSE and BCE losses average over this micro-batch; Trainer wants the sum over its accumulated count.
                loss = loss * labels.numel() / num_items_in_batch
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class ClusTRBackbone(BackboneMixin, ClusTRPreTrainedModel):
    """ClusTR as a backbone for dense prediction: the (B, C, H, W) maps of `out_features` (strides 4, 8, 16, 32)."""

    def __init__(self, config: ClusTRConfig):
        super().__init__(config)
        self.num_features = list(config.hidden_sizes)
        self.clustr = ClusTRModel(config)
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BackboneOutput:
        outputs = self.clustr(pixel_values, output_attentions=output_attentions, output_hidden_states=True)
        feature_maps = tuple(
            feature_map
            for stage, feature_map in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        )
        return BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "ClusTRBackbone",
    "ClusTRForImageClassification",
    "ClusTRModel",
    "ClusTRModelOutput",
    "ClusTRPreTrainedModel",
]
