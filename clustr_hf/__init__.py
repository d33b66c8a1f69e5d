"""ClusTR for Hugging Face transformers: content-clustered attention in a pyramid vision transformer."""

from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

from .clustering import DensityPeaks, cluster_counts, cluster_tokens, density_peaks
from .configuration_clustr import VARIANTS, ClusTRConfig
from .modeling_clustr import (
    ClusTRBackbone,
    ClusTRForImageClassification,
    ClusTRModel,
    ClusTRModelOutput,
    ClusTRPreTrainedModel,
)


AutoConfig.register(ClusTRConfig.model_type, ClusTRConfig, exist_ok=True)
AutoModel.register(ClusTRConfig, ClusTRModel, exist_ok=True)
AutoModelForImageClassification.register(ClusTRConfig, ClusTRForImageClassification, exist_ok=True)
AutoBackbone.register(ClusTRConfig, ClusTRBackbone, exist_ok=True)

__all__ = [
    "VARIANTS",
    "ClusTRBackbone",
    "ClusTRConfig",
    "ClusTRForImageClassification",
    "ClusTRModel",
    "ClusTRModelOutput",
    "ClusTRPreTrainedModel",
    "DensityPeaks",
    "cluster_counts",
    "cluster_tokens",
    "density_peaks",
]
