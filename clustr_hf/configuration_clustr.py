"""ClusTR model configuration (docs/algorithm.md sections 1, 2 and 4)."""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin


_SMALL_WIDTHS = (64, 128, 256, 512)
_RELEASED = {"mlp_ratios": (8, 8, 4, 4), "cluster_reduction_ratios": (8, 4, 2, 1), "cluster_scales": (1, 4)}
VARIANTS = {
    # Our own small variant for demos and CPU benchmarks (not in the paper).
    "b0": dict(_RELEASED, hidden_sizes=(32, 64, 160, 256), num_attention_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2),
               drop_path_rate=0.1),
    "b1": dict(_RELEASED, hidden_sizes=_SMALL_WIDTHS, num_attention_heads=(1, 2, 4, 8), depths=(1, 2, 6, 1),
               drop_path_rate=0.1),
    "b2": dict(_RELEASED, hidden_sizes=_SMALL_WIDTHS, num_attention_heads=(1, 2, 4, 8), depths=(3, 5, 13, 2),
               drop_path_rate=0.1),
    "b3": dict(_RELEASED, hidden_sizes=(64, 128, 320, 512), num_attention_heads=(1, 2, 5, 8), depths=(3, 5, 18, 3),
               drop_path_rate=0.3),
}
"""The released ClusTR variants (b1-b3, docs/algorithm.md section 4) and our small b0."""

CLUSTERING_MODES = ("exact", "pooled")
"""Values of `ClusTRConfig.clustering_mode`."""

UPPER_BOUNDS = {
    "depths": 100, "hidden_sizes": 8192, "mlp_ratios": 16, "patch_sizes": 64, "num_channels": 1024,
    "num_labels": 1_000_000,
}
"""The largest value of each field (of every stage's, for the per-stage lists), far above any published vision model's:
a typo such as depths=[2, 2, 2, 1000000] is an error, where the model would take hours or all memory to build."""

_PER_STAGE_FIELDS = (
    "hidden_sizes", "num_attention_heads", "mlp_ratios", "patch_sizes", "strides", "cluster_reduction_ratios",
)


@strict
class ClusTRConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a ClusTR model: a four-stage pyramid vision transformer whose attention in the stages with
    `cluster_reduction_ratios[i] > 1` takes its keys and values from density-peaks clusters of the tokens.
    The defaults give the small `b0` variant (without drop path); `ClusTRConfig.from_variant("b2")` gives a released one.

    Args:
        num_channels (`int`, defaults to 3): channels of the input images.
        depths (`list[int]`): number of transformer blocks per stage.
        hidden_sizes (`list[int]`): token width per stage.
        num_attention_heads (`list[int]`): attention heads per stage; must divide the stage width.
        mlp_ratios (`list[int]`): hidden width of each block's feed-forward network, as a multiple of the stage width.
        patch_sizes (`list[int]`), strides (`list[int]`): kernel and stride of each stage's overlapping patch embedding.
        cluster_reduction_ratios (`list[int]`): per stage, the coarse scale has `N // r**2` clusters for `N` tokens;
            `1` means plain full self-attention (stage 4 of the released variants).
        cluster_scales (`list[int]`): multiples of the coarse cluster count attended at once (paper: 1 and 4).
        cluster_num_neighbors (`int`): the `k` of the kNN local density (paper: 5, the token itself included).
        cluster_chunk_size (`int`, *optional*): rows of the distance matrix the clustering holds at once per image;
            bounds its memory to `cluster_chunk_size * N` distances without changing the result. By default (None)
            chosen per device: cache-sized chunks on a CPU, large ones on an accelerator.
        clustering_mode (`str`, defaults to `"exact"`): `"exact"` clusters all N tokens of a block with DPC-kNN as the
            paper does (O(N^2) per block); `"pooled"` scales to high resolution: the cluster counts are capped at
            `pooled_max_clusters`, the density peaks are found on the token grid average-pooled to
            `pooled_tokens_per_cluster` cells per cluster, and every token joins the nearest one (O(N M) per block).
        pooled_max_clusters (`int`, defaults to 49): `"pooled"` mode only: the coarse scale's cluster count is at most
            this (scale s: `s * pooled_max_clusters`); 49 is the count at 224x224, so it binds only above.
        pooled_tokens_per_cluster (`int`, defaults to 4): `"pooled"` mode only: pooled cells per cluster of the finest
            scale on which the density peaks are found; grids with fewer tokens are not pooled.
        hidden_act (`str`): activation of the feed-forward networks.
        hidden_dropout_prob (`float`), attention_probs_dropout_prob (`float`): dropout after projections and on the
            attention probabilities.
        drop_path_rate (`float`): stochastic depth rate of the last block, rising linearly from 0 over all blocks.
        initializer_range (`float`): standard deviation of the truncated normal initialisation of linear layers.
        layer_norm_eps (`float`): epsilon of the block and stage LayerNorms (1e-6 in the reference); positive.
        patch_embed_layer_norm_eps (`float`): epsilon of the patch-embedding LayerNorms (1e-5 in the reference);
            positive.
        qkv_bias (`bool`): whether the query and key/value projections have a bias.
        out_features (`list[str]`), out_indices (`list[int]`): the stages a `ClusTRBackbone` returns
            (`"stage1"`..`"stage4"`); the last stage by default.

    `num_labels` (or `id2label`) gives the classifier's classes, at least one. `UPPER_BOUNDS` caps the sizes: depths
    100 per stage, hidden_sizes 8192, mlp_ratios 16, patch_sizes 64, num_channels 1024 and num_labels 1,000,000.
    """

    model_type = "clustr"

    num_channels: int = 3
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    hidden_sizes: list[int] | tuple[int, ...] = (32, 64, 160, 256)
    num_attention_heads: list[int] | tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: list[int] | tuple[int, ...] = (8, 8, 4, 4)
    patch_sizes: list[int] | tuple[int, ...] = (7, 3, 3, 3)
    strides: list[int] | tuple[int, ...] = (4, 2, 2, 2)
    cluster_reduction_ratios: list[int] | tuple[int, ...] = (8, 4, 2, 1)
    cluster_scales: list[int] | tuple[int, ...] = (1, 4)
    cluster_num_neighbors: int = 5
    cluster_chunk_size: int | None = None
    clustering_mode: str = "exact"
    pooled_max_clusters: int = 49
    pooled_tokens_per_cluster: int = 4
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    patch_embed_layer_norm_eps: float = 1e-5
    qkv_bias: bool = True
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.validate_stage_lists()  # before the backbone fields, which would report a mismatch as bad out_features
        if kwargs.get("num_labels") is not None:  # before transformers builds id2label, one entry per label
            check_upper_bound("num_labels", kwargs["num_labels"])
        self.stage_names = [f"stage{idx}" for idx in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @classmethod
    def from_variant(cls, name: str, **overrides) -> "ClusTRConfig":
        """The configuration of a named variant (`"b0"`..`"b3"`), with any field overridden by keyword."""
        if name not in VARIANTS:
            raise ValueError(f"Unknown ClusTR variant {name!r}; the known variants are {', '.join(VARIANTS)}.")
        return cls(**{**VARIANTS[name], **overrides})

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers saves, after validating first: transformers validates only after writing the code file."""
        self.validate()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def validate_stage_lists(self):
        """One entry per stage in every per-stage list."""
        if not self.depths:
            raise ValueError("depths is empty; give the number of blocks of each stage, e.g. depths=[2, 2, 2, 2].")
        for name in _PER_STAGE_FIELDS:
            if len(getattr(self, name)) != len(self.depths):
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries but depths has {len(self.depths)}; "
                    f"give one value per stage."
                )

    def validate_architecture(self):
        """Reject inconsistent settings, naming the field and the fix."""
        for name in ("depths", "hidden_sizes", "num_attention_heads", "patch_sizes", "strides"):
            if any(value < 1 for value in getattr(self, name)):
                raise ValueError(f"{name}={list(getattr(self, name))} has a value below 1; every entry must be >= 1.")
        if any(ratio <= 0 for ratio in self.mlp_ratios):
            raise ValueError(f"mlp_ratios={list(self.mlp_ratios)} must be positive.")
        for stage, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads), start=1):
            if width % heads:
                raise ValueError(
                    f"Stage {stage}: hidden size {width} is not divisible by its {heads} attention heads; "
                    f"choose num_attention_heads that divide hidden_sizes."
                )
        if any(ratio < 1 for ratio in self.cluster_reduction_ratios):
            raise ValueError(
                f"cluster_reduction_ratios={list(self.cluster_reduction_ratios)} has a value below 1; "
                f"use 1 for full attention and r > 1 for N // r**2 clusters."
            )
        if not self.cluster_scales or any(scale < 1 for scale in self.cluster_scales):
            raise ValueError(
                f"cluster_scales={list(self.cluster_scales)} must be a non-empty list of integers >= 1 (paper: [1, 4])."
            )
        if self.cluster_num_neighbors < 1:
            raise ValueError(f"cluster_num_neighbors={self.cluster_num_neighbors} must be >= 1 (paper: 5).")
        if self.cluster_chunk_size is not None and self.cluster_chunk_size < 1:
            raise ValueError(
                f"cluster_chunk_size={self.cluster_chunk_size} must be >= 1, or None to choose per device."
            )
        if self.clustering_mode not in CLUSTERING_MODES:
            raise ValueError(
                f"clustering_mode={self.clustering_mode!r} is not one of {', '.join(map(repr, CLUSTERING_MODES))}; "
                f"'exact' is the paper's clustering, 'pooled' the scalable one for high resolutions."
            )
        for name in ("pooled_max_clusters", "pooled_tokens_per_cluster"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (defaults: 49 and 4).")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1).")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not a known activation; try 'gelu'.")
        if self.num_channels < 1:
            raise ValueError(f"num_channels={self.num_channels} must be >= 1.")
        for name in ("layer_norm_eps", "patch_embed_layer_norm_eps"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name}={getattr(self, name)} must be positive: LayerNorm divides by the square root "
                                 f"of the variance plus it, so 0 gives NaN on constant inputs (reference: 1e-6 in the "
                                 f"blocks, 1e-5 in the patch embeddings).")
        if self.num_labels < 1:
            raise ValueError(f"num_labels={self.num_labels}: ClusTR's classifier needs at least one class; set "
                             f"num_labels, or id2label, to the dataset's classes.")
        for name in UPPER_BOUNDS:
            values = getattr(self, name)
            check_upper_bound(name, max(values) if isinstance(values, (list, tuple)) else values)


def check_upper_bound(name: str, value: int) -> None:
    """Reject a value of `name` above its `UPPER_BOUNDS` entry."""
    if value > UPPER_BOUNDS[name]:
        raise ValueError(f"{name} has a value of {value:,}, above ClusTR's limit of {UPPER_BOUNDS[name]:,} (the model "
                         f"would be too large to build); check the value for a typo.")


__all__ = ["ClusTRConfig", "VARIANTS"]
