"""Convert a checkpoint of the authors' ClusTR code (names of ALGORITHM.md section 5) to a Hub-ready folder.

    python -m clustr_hf.convert_reference_checkpoint --checkpoint in.pth --variant b2 --output-dir out/
"""

import argparse
import re
from pathlib import Path

import torch

from .configuration_clustr import VARIANTS, ClusTRConfig
from .image_processing_clustr import ClusTRImageProcessor
from .modeling_clustr import ClusTRForImageClassification, ClusTRModel


_STAGE_PATTERNS = [
    (r"patch_embed(\d)\.proj\.(.+)", "encoder.stages.{stage}.patch_embeddings.proj.{rest}"),
    (r"patch_embed(\d)\.norm\.(.+)", "encoder.stages.{stage}.patch_embeddings.layer_norm.{rest}"),
    (r"norm(\d)\.(.+)", "encoder.stages.{stage}.layer_norm.{rest}"),
]
_BLOCK_PARTS = {
    "norm1": "layer_norm_1",
    "attn.q": "attention.query",
    "attn.proj": "attention.proj",
    "attn.weight_layer": "attention.score",
    "attn.kv1": "attention.cluster_key_values.0",
    "attn.kv2": "attention.cluster_key_values.1",
    "attn.kv": "attention.key_value",
    "norm2": "layer_norm_2",
    "mlp.fc1": "mlp.dense1",
    "mlp.dwconv.dwconv": "mlp.dwconv",
    "mlp.fc2": "mlp.dense2",
}
_BLOCK_PATTERN = re.compile(rf"block(\d)\.(\d+)\.({'|'.join(re.escape(part) for part in _BLOCK_PARTS)})\.(weight|bias)")


def _base_model_key(name: str) -> str | None:
    """The ClusTRModel parameter name of a reference name, or None if the name is not a reference name."""
    if match := _BLOCK_PATTERN.fullmatch(name):
        stage, block, part, kind = match.groups()
        return f"encoder.stages.{int(stage) - 1}.blocks.{block}.{_BLOCK_PARTS[part]}.{kind}"
    for pattern, target in _STAGE_PATTERNS:
        if match := re.fullmatch(pattern, name):
            return target.format(stage=int(match.group(1)) - 1, rest=match.group(2))
    return None


def convert_reference_state_dict(state_dict: dict) -> dict:
    """Rename a reference state dict (optionally wrapped under "model") to ClusTR names.

    With a `head` the result is for ClusTRForImageClassification (base model under `clustr.`), otherwise for
    ClusTRModel. Raises ValueError listing every name that is not a reference name.
    """
    state_dict = state_dict.get("model", state_dict)
    has_head = any(name.startswith("head.") for name in state_dict)
    converted, unexpected = {}, []
    for name, tensor in state_dict.items():
        if name in ("head.weight", "head.bias"):
            converted[name.replace("head.", "classifier.")] = tensor
        elif (key := _base_model_key(name)) is not None:
            converted[f"clustr.{key}" if has_head else key] = tensor
        else:
            unexpected.append(name)
    if unexpected:
        raise ValueError(
            f"{len(unexpected)} keys are not ClusTR reference names (ALGORITHM.md section 5): {sorted(unexpected)}"
        )
    return converted


def infer_config(state_dict: dict, variant: str | None = None) -> ClusTRConfig:
    """The configuration that fits a reference state dict's shapes; checked against `variant` when given.

    Widths, depths, MLP ratios, the number of cluster scales and the classes come from the shapes. Head counts do
    not change any shape, so they come from the variant: given, or the released variant with these widths and depths.
    """
    state_dict = state_dict.get("model", state_dict)
    stages = {int(m.group(1)) for name in state_dict if (m := re.match(r"patch_embed(\d)\.proj\.weight$", name))}
    if not stages:
        raise ValueError("The state dict has no patch_embed1.proj.weight: it is not a ClusTR reference checkpoint.")
    num_stages = max(stages)
    hidden_sizes = [state_dict[f"patch_embed{i}.proj.weight"].shape[0] for i in range(1, num_stages + 1)]
    depths = [
        len({int(m.group(1)) for name in state_dict if (m := re.match(rf"block{i}\.(\d+)\.", name))})
        for i in range(1, num_stages + 1)
    ]
    mlp_ratios = [
        state_dict[f"block{i}.0.mlp.fc1.weight"].shape[0] // hidden_sizes[i - 1] for i in range(1, num_stages + 1)
    ]
    found = dict(hidden_sizes=tuple(hidden_sizes), depths=tuple(depths), mlp_ratios=tuple(mlp_ratios))
    if variant is None:
        matches = [name for name, spec in VARIANTS.items() if all(spec[k] == v for k, v in found.items())]
        if not matches:
            raise ValueError(f"The checkpoint ({found}) matches no known variant; pass --variant with its head counts.")
        variant = matches[0]
    config = ClusTRConfig.from_variant(variant)
    mismatched = {k: (v, getattr(config, k)) for k, v in found.items() if tuple(getattr(config, k)) != v}
    if mismatched:
        raise ValueError(
            f"The checkpoint does not fit variant {variant!r}: "
            + "; ".join(f"{k} is {v} in the checkpoint but {expected} in {variant}" for k, (v, expected) in
                        mismatched.items())
        )
    if "head.weight" in state_dict:
        config.num_labels = state_dict["head.weight"].shape[0]
    return config


def load_reference_checkpoint(path) -> dict:
    """Read a reference checkpoint safely (weights only), with a clear error for a file that is not one."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error}).") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.")
    return checkpoint


def convert_checkpoint(checkpoint_path, output_dir, variant: str | None = None):
    """Convert a reference checkpoint file into a Hub-ready folder (config.json, model.safetensors, the remote code
    and the reference's 224x224 evaluation transform as preprocessor_config.json); returns the model."""
    state_dict = load_reference_checkpoint(checkpoint_path)
    converted = convert_reference_state_dict(state_dict)
    config = infer_config(state_dict, variant)
    model_class = ClusTRForImageClassification if "classifier.weight" in converted else ClusTRModel
    model = model_class(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"The converted checkpoint does not fit {model_class.__name__}: "
                         f"missing {sorted(missing)}, unexpected {sorted(unexpected)}.")
    model.save_pretrained(output_dir)
    ClusTRImageProcessor().save_pretrained(output_dir)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="reference .pth file")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="checked against the shapes; inferred if omitted")
    parser.add_argument("--output-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    model = convert_checkpoint(args.checkpoint, args.output_dir, args.variant)
    print(f"Wrote {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) to "
          f"{args.output_dir}")


if __name__ == "__main__":
    main()
