"""PyTorch ClusTR: a pyramid vision transformer with clustering-guided attention (docs/algorithm.md sections 1-2)."""

import functools
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torchvision.ops import StochasticDepth
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import logging, output_capturing
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .clustering import (
    DensityPeaks, capped_cluster_counts, cluster_counts, density_peaks, is_static, pooled_density_peaks,
)
from .configuration_clustr import ClusTRConfig


REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_clustr.ClusTRConfig",
    "AutoModel": "modeling_clustr.ClusTRModel",
    "AutoModelForImageClassification": "modeling_clustr.ClusTRForImageClassification",
    "AutoBackbone": "modeling_clustr.ClusTRBackbone",
}
"""The config.json auto_map of a saved ClusTR model: each Auto class finds its ClusTR class in the saved .py files."""

logger = logging.get_logger(__name__)

EXACT_CLUSTERING_WARNING_TOKENS = 16384
"""Exact clustering of more tokens than this in one block (above 512x512 inputs) warns once and points to the pooled
mode: one b2 block takes 3.5 s at 25,600 tokens (640x640) and 37 s at 65,536 (1024x1024) on 2 CPU threads, against
0.1-0.3 s pooled (`benchmarks/exact_clustering_cost.py`)."""

MERGE_LOG_EPSILON = math.log(1e-6)
"""The logarithm of the 1e-6 that the merge adds to each cluster's weight sum (docs/algorithm.md 2.2 step 5)."""

MAX_PIXEL_MAGNITUDE = 1e4
"""The largest |pixel_values| the model takes: normalised images lie within a few units (ImageNet's normalisation gives
-2.2 to 2.7), and values far beyond are corrupt data whose activations overflow into NaN logits."""

LEGACY_KEYS = {r"attention\.key_values\.": "attention.cluster_key_values."}
"""`from_pretrained`'s renaming of checkpoints saved before the clustered blocks' projections were named
`cluster_key_values` (they were `key_values`, one letter from the full-attention blocks' `key_value`)."""


class ClusTRKwargs(TypedDict, total=False):
    """The keywords every ClusTR model's forward takes besides its inputs; the output flags default to the config's."""

    output_attentions: bool | None
    output_hidden_states: bool | None
    output_cluster_assignments: bool | None
    return_dict: bool | None


def block_cluster_counts(config: ClusTRConfig, num_tokens: int, reduction_ratio: int) -> tuple[int, ...]:
    """Clusters per scale of a clustered block with `num_tokens` tokens: capped in the "pooled" clustering mode."""
    if config.clustering_mode == "pooled":
        return capped_cluster_counts(num_tokens, reduction_ratio, config.cluster_scales, config.pooled_max_clusters)
    return cluster_counts(num_tokens, reduction_ratio, config.cluster_scales)


def eager_attention_forward(
    module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, scale_sizes=None, **kwargs
):
    """Softmax attention written out, so that the probabilities can be returned: the output (B, N, heads, d) and the
    (B, heads, N, M) probabilities the values were multiplied by. With `scale_sizes` the M keys are the clusters of
    several scales in turn, each scale's scores normalised on their own: the output is the sum of the scales'
    attentions."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probabilities = [
        nn.functional.softmax(part, dim=-1, dtype=torch.float32)
        for part in scores.split(scale_sizes or [scores.shape[-1]], dim=-1)
    ]
    weights = (probabilities[0] if len(probabilities) == 1 else torch.cat(probabilities, dim=-1)).to(query.dtype)
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


@dataclass
class ClusTRImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` plus the clusters of `ClusTRModelOutput` (with `output_cluster_assignments=True`)."""

    cluster_assignments: tuple[torch.LongTensor, ...] | None = None
    cluster_centres: tuple[torch.LongTensor, ...] | None = None


@dataclass
class ClusTRBackboneOutput(BackboneOutput):
    """`BackboneOutput` plus the clusters of `ClusTRModelOutput` (with `output_cluster_assignments=True`)."""

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


class ClusTRClustering(nn.Module):
    """DPC-kNN clusters of a block's tokens (2.2 steps 1-4). No parameters: a module of its own so that
    `output_cluster_assignments` records its `DensityPeaks`."""

    def __init__(self, config: ClusTRConfig):
        super().__init__()
        self.config = config

    def forward(self, hidden_states: torch.Tensor, height: int, width: int, counts: tuple[int, ...]) -> DensityPeaks:
        """The clusters of the (B, N, C) tokens on the (height, width) grid, `counts` clusters per scale."""
        tokens = hidden_states.detach()
        config = self.config
        if config.clustering_mode == "pooled":
            return pooled_density_peaks(tokens, (height, width), counts, config.cluster_num_neighbors,
                                        config.pooled_tokens_per_cluster, config.cluster_chunk_size)
        if tokens.shape[1] > EXACT_CLUSTERING_WARNING_TOKENS and not torch.compiler.is_compiling():
            logger.warning_once(
                f"Exact clustering of {tokens.shape[1]} tokens per block (a {height}x{width} grid) is slow: its cost "
                f"grows with the square of the tokens (about 3.5 s per block at 640x640 on 2 CPU threads). For large "
                f"images, load the model with `from_pretrained(..., clustering_mode=\"pooled\")`, whose cost grows "
                f"linearly, or resize the inputs.")
        return density_peaks(tokens, counts, config.cluster_num_neighbors, config.cluster_chunk_size)


class ClusTRAttention(nn.Module):
    """Multi-head attention whose keys and values are content clusters of the tokens (2.2), or all tokens (2.1).

    With `reduction_ratio > 1` the tokens are clustered by DPC-kNN at every scale, merged into score-weighted means
    and projected to keys and values per scale (`cluster_key_values`); the full-resolution queries attend to each scale
    and the results are summed. With `reduction_ratio == 1` it is plain self-attention (`key_value`).
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
            self.clustering = ClusTRClustering(config)
            self.score = nn.Linear(self.hidden_size, 1)
            self.cluster_key_values = nn.ModuleList(
                nn.Linear(self.hidden_size, 2 * self.hidden_size, bias=config.qkv_bias) for _ in config.cluster_scales
            )
        else:
            self.key_value = nn.Linear(self.hidden_size, 2 * self.hidden_size, bias=config.qkv_bias)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.proj = nn.Linear(self.hidden_size, self.hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def merge_clusters(self, hidden_states: torch.Tensor, assignments: torch.Tensor, counts: tuple[int, ...]):
        """Score-weighted mean of each cluster's tokens at every scale (2.2 step 5), `assignments` (B, scales, N);
        gradients reach the tokens and the scores. The weights and the 1e-6 are divided by the image's largest weight
        and summed in float32, which leaves the means as they are and keeps half-precision sums from overflowing."""
        batch_size, _, channels = hidden_states.shape
        scores = self.score(hidden_states).float()
        largest = scores.detach().amax(dim=1, keepdim=True)
        weights = torch.exp(scores - largest)
        epsilon = torch.exp(MERGE_LOG_EPSILON - largest)
        weighted_tokens = weights * hidden_states
        merged = []
        for scale, count in enumerate(counts):
            index = assignments[:, scale, :, None]
            totals = weighted_tokens.new_zeros(batch_size, count, channels)
            totals = totals.scatter_add(1, index.expand(-1, -1, channels), weighted_tokens)
            weight_sums = weights.new_zeros(batch_size, count, 1).scatter_add(1, index, weights)
            merged.append((totals / (weight_sums + epsilon)).to(hidden_states.dtype))
        return merged

    def forward(self, hidden_states: torch.Tensor, height: int, width: int, **kwargs):
        """Returns the attention output (B, N, C) of the tokens on the (height, width) grid and, from the eager
        attention (which `output_attentions=True` selects), the probabilities the values were multiplied by (see
        ClusTRModel)."""
        query = self._heads(self.query(hidden_states))
        if self.reduction_ratio > 1:
            counts = block_cluster_counts(self.config, hidden_states.shape[1], self.reduction_ratio)
            clusters = self.clustering(hidden_states, height, width, counts)
            merged = self.merge_clusters(hidden_states, clusters.assignments, counts)
            sources = list(zip(merged, self.cluster_key_values))
        else:
            sources = [(hidden_states, self.key_value)]
        keys, values = zip(*(key_value(source).chunk(2, dim=-1) for source, key_value in sources))
        keys, values = [self._heads(key) for key in keys], [self._heads(value) for value in values]
        dropout = self.attention_dropout if self.training else 0.0
        if self.config._attn_implementation == "eager" or kwargs.get("output_attentions"):
            # One product over the clusters of all scales, so that the returned probabilities are on the output's path.
            output, weights = eager_attention_forward(
                self, query, torch.cat(keys, dim=2), torch.cat(values, dim=2), None, scaling=self.scaling,
                dropout=dropout, scale_sizes=[key.shape[2] for key in keys],
            )
        else:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
            output, weights = 0, None
            for key, value in zip(keys, values):
                output = output + attention(self, query, key, value, None, dropout=dropout, scaling=self.scaling)[0]
        return self.proj_dropout(self.proj(output.flatten(2))), weights


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

    def forward(self, hidden_states: torch.Tensor, height: int, width: int, **kwargs) -> torch.Tensor:
        attention_output, _ = self.attention(self.layer_norm_1(hidden_states), height, width, **kwargs)
        hidden_states = hidden_states + self.drop_path(attention_output)
        return hidden_states + self.drop_path(self.mlp(self.layer_norm_2(hidden_states), height, width))


class ClusTRStage(nn.Module):
    """Patch embedding, the stage's blocks, and a final LayerNorm; returns the stage's (B, C, H, W) map (1.4)."""

    def __init__(self, config: ClusTRConfig, stage: int, drop_paths: list[float]):
        super().__init__()
        self.patch_embeddings = ClusTRPatchEmbeddings(config, stage)
        self.blocks = nn.ModuleList(ClusTRLayer(config, stage, rate) for rate in drop_paths)
        self.layer_norm = nn.LayerNorm(config.hidden_sizes[stage], eps=config.layer_norm_eps)

    def forward(self, feature_map: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states, height, width = self.patch_embeddings(feature_map)
        for block in self.blocks:
            hidden_states = block(hidden_states, height, width, **kwargs)
        return self.layer_norm(hidden_states).transpose(1, 2).unflatten(2, (height, width))


class ClusTREncoder(nn.Module):
    def __init__(self, config: ClusTRConfig):
        super().__init__()
        rates = [rate * config.drop_path_rate / max(sum(config.depths) - 1, 1) for rate in range(sum(config.depths))]
        starts = [sum(config.depths[:stage]) for stage in range(config.num_stages)]
        self.stages = nn.ModuleList(
            ClusTRStage(config, stage, rates[start : start + depth])
            for stage, (start, depth) in enumerate(zip(starts, config.depths))
        )

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """The last stage's (B, C, H, W) map; every stage's is recorded as a hidden state."""
        feature_map = pixel_values
        for stage in self.stages:
            feature_map = stage(feature_map, **kwargs)
        return feature_map


def end_stale_compiled_recording() -> None:
    """After a torch.compile'd forward, transformers' output collector (5.24) stays in its compiled mode, and eager
    forwards then record their outputs into that stale state and return none (no hidden states, attentions or
    clusters); put it back in eager mode."""
    collector = output_capturing._active_collector
    if getattr(collector, "compiling", False):
        collector.reset(None)


def unreadable_weights_message(pretrained_model_name_or_path, subfolder: str, error: SafetensorError) -> str:
    """What to say when safetensors cannot read a weights file of a checkpoint: in a local folder, the files it
    cannot open and their sizes; for a Hub repository, the repository."""
    folder = Path(pretrained_model_name_or_path, subfolder)
    if not folder.is_dir():
        return (f"A .safetensors weights file of {pretrained_model_name_or_path} could not be read ({error}): it is "
                f"truncated or corrupt, e.g. by an interrupted download. Download it again with "
                f"from_pretrained({str(pretrained_model_name_or_path)!r}, force_download=True).")
    unreadable = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError:
            unreadable.append(f"{path} ({os.path.getsize(path):,} bytes)")
    return (f"{', '.join(unreadable) or f'A .safetensors file in {folder}'} could not be read ({error}): truncated or "
            f"corrupt, e.g. by an interrupted copy, download or save. Copy or download the folder again, or save "
            f"the model again with save_pretrained.")


def checked_keywords(forward):
    """Reject keywords a ClusTR forward does not take: a typo would otherwise be ignored. Keeps `forward`'s signature."""
    accepted = [name for name in inspect.signature(forward).parameters if name not in ("self", "kwargs")]
    accepted += ClusTRKwargs.__annotations__

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword argument(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(accepted)}.")
        return forward(self, *args, **kwargs)

    return wrapper


class ClusTRPreTrainedModel(PreTrainedModel):
    config_class = ClusTRConfig
    config: ClusTRConfig
    base_model_prefix = "clustr"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ClusTRLayer"]
    _supports_sdpa = True
    _can_record_outputs = {
        "hidden_states": OutputRecorder(
            ClusTRStage, capture_initial_hidden_state=False, num_hidden_layers_key="num_stages"
        ),
        "attentions": OutputRecorder(ClusTRAttention, index=1),
        "cluster_assignments": OutputRecorder(ClusTRClustering, index=0),
        "cluster_centres": OutputRecorder(ClusTRClustering, index=1),
    }

    def __init__(self, config: ClusTRConfig, *inputs, **kwargs):
        # Values given to from_pretrained or assigned to the config after it was built have not been validated yet.
        config.validate()
        super().__init__(config, *inputs, **kwargs)

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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, key_mapping: dict[str, str] | None = None, **kwargs):
        """As transformers loads, renaming the keys of older checkpoints (`LEGACY_KEYS`) after any `key_mapping`; a
        weights file safetensors cannot read is an error that names it (safetensors' own names no file)."""
        try:
            return super().from_pretrained(
                pretrained_model_name_or_path, *args, key_mapping={**(key_mapping or {}), **LEGACY_KEYS}, **kwargs
            )
        except SafetensorError as error:
            raise OSError(unreadable_weights_message(pretrained_model_name_or_path, kwargs.get("subfolder", ""),
                                                     error)) from error

    def get_input_embeddings(self) -> nn.Module:
        """The convolution that embeds the pixels (stage 1's patch embedding), which `enable_input_require_grads`
        hooks."""
        return self.base_model.encoder.stages[0].patch_embeddings.proj

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers saves, after validating the config (it may have been changed since the model was built) so
        that nothing is written that would not load; a class registered for remote code (importing clustr_hf registers
        all) also writes the auto_map of all four Auto classes, where transformers would write only its own."""
        self.config.validate()
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
        if pixel_values.dtype != self.dtype and not torch.is_autocast_enabled(pixel_values.device.type):
            raise ValueError(
                f"pixel_values are {pixel_values.dtype} but the model's weights are {self.dtype}; cast the input "
                f"(pixel_values.to({self.dtype})) or the model (model.to({pixel_values.dtype})), or run under "
                f"torch.autocast."
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
        if not is_static():  # a host sync, which compiled and exported graphs cannot hold
            largest = torch.linalg.vector_norm(pixel_values, float("inf")).item()
            if not largest <= MAX_PIXEL_MAGNITUDE:
                raise ValueError(
                    f"pixel_values hold NaN, infinite or huge values (largest magnitude {largest:g}, above "
                    f"{MAX_PIXEL_MAGNITUDE:g}), which would give NaN logits; the model takes normalised pixels (a few "
                    f"units): prepare images with ClusTRImageProcessor and look for corrupt pixels in the data."
                )


class ClusTRModel(ClusTRPreTrainedModel):
    """The ClusTR encoder: four stages of clustering attention, returning NCHW feature maps.

    Outputs (`ClusTRModelOutput`): `last_hidden_state` is stage 4's (B, C4, H/32, W/32) map, `pooler_output` its mean
    over positions (B, C4), `hidden_states` one (B, Ci, Hi, Wi) map per stage. `attentions` (computed by the eager
    attention, which `output_attentions=True` selects) holds one tensor per block, the very probabilities its values
    were multiplied by (gradients reach them): for a clustered block (B, heads, N, M1 + M2), the queries' attention
    over the coarse clusters in `[..., :M1]` and over the fine clusters in `[..., M1:]`, each part summing to 1 (the
    block's output is the sum of the scales' attentions, one product over the clusters of both scales); for a
    full-attention block (B, heads, N, N). With `output_cluster_assignments=True` it also returns each clustered
    block's clusters (see `ClusTRModelOutput`). Any input size of at least 1x1 works (every stage then keeps at least
    one token).
    """

    def __init__(self, config: ClusTRConfig):
        super().__init__(config)
        self.encoder = ClusTREncoder(config)
        self.post_init()

    @checked_keywords
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[ClusTRKwargs]) -> ClusTRModelOutput:
        """`output_attentions`, `output_hidden_states` and `output_cluster_assignments` default to the config's."""
        if "output_cluster_assignments" in kwargs:  # capture_outputs records the centres under a flag of their own
            kwargs["output_cluster_centres"] = kwargs["output_cluster_assignments"]
        if not torch.compiler.is_compiling():
            end_stale_compiled_recording()
        return self.encode(pixel_values, **kwargs)

    @capture_outputs(tie_last_hidden_states=False)
    def encode(self, pixel_values: torch.Tensor, **kwargs) -> ClusTRModelOutput:
        """The forward pass; `capture_outputs` records the outputs its keywords ask for (see `_can_record_outputs`)."""
        self.check_pixel_values(pixel_values)
        last_hidden_state = self.encoder(pixel_values, **kwargs)
        return ClusTRModelOutput(last_hidden_state=last_hidden_state, pooler_output=last_hidden_state.mean(dim=(2, 3)))


class ClusTRForImageClassification(ClusTRPreTrainedModel):
    """ClusTR with a linear classifier on the mean of stage 4's tokens (1.5)."""

    def __init__(self, config: ClusTRConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.clustr = ClusTRModel(config)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    @can_return_tuple
    @checked_keywords
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Unpack[ClusTRKwargs],
    ) -> ClusTRImageClassifierOutput:
        """`labels`: class indices (B,) for single-label, multi-hot floats (B, num_labels) for multi-label, or
        targets for regression (`num_labels == 1`), per `config.problem_type`; a tensor or a (nested) list. Trainer's
        `num_items_in_batch` keeps the loss correct under gradient accumulation for all three. Other keywords as
        ClusTRModel's."""
        if labels is not None:
            labels = self.checked_labels(labels, pixel_values.device)
            if self.config.problem_type is None:
                # transformers' loss picks the problem type on first use and stores it in the config; picked here,
                # before the encoder, because torch.compile loses a config mutation made after the clustering's
                # torch.cond.
                self.config.problem_type = (
                    "regression" if self.num_labels == 1
                    else "multi_label_classification" if labels.is_floating_point() else "single_label_classification"
                )
        outputs = self.clustr(pixel_values, **kwargs, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, num_items_in_batch=num_items_in_batch)
            if num_items_in_batch is not None and self.config.problem_type != "single_label_classification":
                # The MSE and BCE losses average over this micro-batch; Trainer wants the sum over its accumulated count.
                loss = loss * labels.numel() / num_items_in_batch
        return ClusTRImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            cluster_assignments=outputs.cluster_assignments, cluster_centres=outputs.cluster_centres,
        )

    @staticmethod
    def checked_labels(labels, device: torch.device) -> torch.Tensor:
        """`labels` as a tensor on `device`, class indices as int64 (cross-entropy takes no other)."""
        if not isinstance(labels, torch.Tensor):
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError) as error:
                raise ValueError(
                    f"labels must be a tensor or a (nested) list of numbers, got {type(labels).__name__} ({error})."
                ) from error
        if labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"labels of dtype {labels.dtype} are not supported; give int64 class indices or float "
                             f"targets.")
        if not labels.is_floating_point():
            labels = labels.long()
        return labels.to(device)


class ClusTRBackbone(BackboneMixin, ClusTRPreTrainedModel):
    """ClusTR as a backbone for dense prediction: the (B, C, H, W) maps of `out_features` (strides 4, 8, 16, 32)."""

    def __init__(self, config: ClusTRConfig):
        super().__init__(config)
        self.num_features = list(config.hidden_sizes)
        self.clustr = ClusTRModel(config)
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    @checked_keywords
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[ClusTRKwargs]) -> ClusTRBackboneOutput:
        """Keywords as ClusTRModel's."""
        outputs = self.clustr(pixel_values, **kwargs, return_dict=True)
        feature_maps = tuple(
            feature_map
            for stage, feature_map in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        )
        return ClusTRBackboneOutput(
            feature_maps=feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            cluster_assignments=outputs.cluster_assignments, cluster_centres=outputs.cluster_centres,
        )


__all__ = [
    "ClusTRBackbone",
    "ClusTRBackboneOutput",
    "ClusTRForImageClassification",
    "ClusTRImageClassifierOutput",
    "ClusTRModel",
    "ClusTRModelOutput",
    "ClusTRPreTrainedModel",
]
