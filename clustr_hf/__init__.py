"""ClusTR for Hugging Face transformers: content-clustered attention in a pyramid vision transformer."""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .clustering import DensityPeaks, cluster_counts, cluster_tokens, density_peaks
from .configuration_clustr import VARIANTS, ClusTRConfig
from .image_processing_clustr import ClusTRImageProcessor, ClusTRImageProcessorPil
from .modeling_clustr import (
    ClusTRBackbone,
    ClusTRBackboneOutput,
    ClusTRForImageClassification,
    ClusTRImageClassifierOutput,
    ClusTRModel,
    ClusTRModelOutput,
    ClusTRPreTrainedModel,
)


AutoConfig.register(ClusTRConfig.model_type, ClusTRConfig, exist_ok=True)
AutoModel.register(ClusTRConfig, ClusTRModel, exist_ok=True)
AutoModelForImageClassification.register(ClusTRConfig, ClusTRForImageClassification, exist_ok=True)
AutoBackbone.register(ClusTRConfig, ClusTRBackbone, exist_ok=True)
AutoImageProcessor.register(
    ClusTRConfig,
    image_processor_classes={"torchvision": ClusTRImageProcessor, "pil": ClusTRImageProcessorPil},
    exist_ok=True,
)
# save_pretrained then also writes the .py files and auto_map, so that saved folders load without clustr_hf.
ClusTRConfig.register_for_auto_class("AutoConfig")
ClusTRModel.register_for_auto_class("AutoModel")
ClusTRForImageClassification.register_for_auto_class("AutoModelForImageClassification")
ClusTRBackbone.register_for_auto_class("AutoBackbone")
ClusTRImageProcessor.register_for_auto_class("AutoImageProcessor")
ClusTRImageProcessorPil.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "VARIANTS",
    "ClusTRBackbone",
    "ClusTRBackboneOutput",
    "ClusTRConfig",
    "ClusTRForImageClassification",
    "ClusTRImageClassifierOutput",
    "ClusTRImageProcessor",
    "ClusTRImageProcessorPil",
    "ClusTRModel",
    "ClusTRModelOutput",
    "ClusTRPreTrainedModel",
    "DensityPeaks",
    "cluster_counts",
    "cluster_tokens",
    "density_peaks",
]
