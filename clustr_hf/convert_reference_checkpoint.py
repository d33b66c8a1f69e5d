"""Convert a checkpoint of the authors' ClusTR code (names of docs/algorithm.md section 5) to a Hub-ready folder.

    python -m clustr_hf.convert_reference_checkpoint --checkpoint in.pth --variant b2 --output_dir out/
"""

import argparse
import re
from pathlib import Path

import torch

from .atomic import atomic_folder
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


def reference_weights(checkpoint) -> dict:
    """The reference state dict of a checkpoint (the weights, optionally wrapped under "model"), checked to map names
    to tensors; ValueError naming what is not."""
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise ValueError(f"The checkpoint's weights are a {type(state_dict).__name__}, not a state dict (a dict of "
                         f"names to tensors, as the reference saves under 'model').")
    not_tensors = sorted(f"{name} ({type(value).__name__})" for name, value in state_dict.items()
                         if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{len(not_tensors)} entries of the state dict are not tensors: {not_tensors[:10]}; the "
                         f"checkpoint is damaged or not a ClusTR reference checkpoint.")
    return state_dict


def convert_reference_state_dict(state_dict: dict) -> dict:
    """Rename a reference state dict (optionally wrapped under "model") to ClusTR names.

    With a `head` the result is for ClusTRForImageClassification (base model under `clustr.`), otherwise for
    ClusTRModel. Raises ValueError listing every name that is not a reference name.
    """
    state_dict = reference_weights(state_dict)
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
            f"{len(unexpected)} keys are not ClusTR reference names (docs/algorithm.md section 5): {sorted(unexpected)}"
        )
    return converted


def infer_config(state_dict: dict, variant: str | None = None) -> ClusTRConfig:
    """The configuration that fits a reference state dict's shapes; checked against `variant` when given.

    Widths, depths, MLP ratios, the number of cluster scales and the classes come from the shapes. Head counts do
    not change any shape, so they come from the variant: given, or the released variant with these widths and depths.
    """
    state_dict = reference_weights(state_dict)
    stages = {int(m.group(1)) for name in state_dict if (m := re.match(r"(?:patch_embed|block|norm)(\d)\.", name))}
    if "patch_embed1.proj.weight" not in state_dict:
        raise ValueError("The state dict has no patch_embed1.proj.weight: it is not a ClusTR reference checkpoint.")
    num_stages = max(stages)
    missing = [name for stage in range(1, num_stages + 1)
               for name in (f"patch_embed{stage}.proj.weight", f"block{stage}.0.mlp.fc1.weight")
               if name not in state_dict]
    if missing:
        raise ValueError(f"The checkpoint lacks {', '.join(missing)} (stages 1 to {num_stages} found): it is "
                         f"incomplete, e.g. a truncated or partly saved state dict.")
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
    and the reference's 224x224 evaluation transform as preprocessor_config.json), written whole or not at all (see
    `atomic_folder`: into a new folder, or replacing the files of the same names in an existing one); returns the
    model."""
    state_dict = load_reference_checkpoint(checkpoint_path)
    converted = convert_reference_state_dict(state_dict)
    config = infer_config(state_dict, variant)
    model_class = ClusTRForImageClassification if "classifier.weight" in converted else ClusTRModel
    model = model_class(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"The converted checkpoint does not fit {model_class.__name__}: "
                         f"missing {sorted(missing)}, unexpected {sorted(unexpected)}.")
    with atomic_folder(output_dir, merge=True) as staging:
        model.save_pretrained(staging)
        ClusTRImageProcessor().save_pretrained(staging)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="reference .pth file")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="checked against the shapes; inferred if omitted")
    parser.add_argument("--output_dir", "--output-dir", required=True, type=Path,
                        help="the Hub-ready folder to write (new, or an existing one whose files it replaces)")
    args = parser.parse_args(argv)
    try:
        model = convert_checkpoint(args.checkpoint, args.output_dir, args.variant)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"Wrote {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) to "
          f"{args.output_dir}")


if __name__ == "__main__":
    main()
