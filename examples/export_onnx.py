"""Export a ClusTR image classifier to ONNX and check it with ONNX Runtime on a real photo.

    python examples/export_onnx.py --model_name_or_path path/to/saved-classifier --output_dir clustr-onnx

Uses transformers' `OnnxExporter` (torch.export, then torch.onnx with onnxscript). Plain
`torch.onnx.export(model, ..., dynamo=True)` fails on the clustering's stable sort ("No ONNX function found for
aten.sort.stable"); transformers' exporter rewrites it to the plain sort, which becomes ONNX TopK, whose ties go to
the lower index as ClusTR's order does. The batch size stays dynamic; height and width are fixed at export (each
stage's cluster counts follow its token count), so export once per input size. The folder gets model.onnx
(+ model.onnx.data), export.json, config.json and the image processor; the script then compares ONNX Runtime's logits
with PyTorch's on a photo the export did not see and exits with status 1 if they differ by more than --atol.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from skimage import data
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.exporters import OnnxConfig, OnnxExporter

import clustr_hf  # noqa: F401  (registers ClusTR with the Auto classes)


def export(model, processor, output_dir: Path, max_batch_size: int = 64) -> Path:
    """Export `model` at the processor's crop size with a dynamic batch; returns the path of model.onnx."""
    # Two photos: torch.export would fix a batch dimension of size 1 as a constant.
    sample = processor([data.astronaut(), data.coffee()], return_tensors="pt").pixel_values
    batch = torch.export.Dim("batch", min=1, max=max_batch_size)
    exported = OnnxExporter().export(
        model, {"pixel_values": sample}, config=OnnxConfig(dynamic_shapes={"pixel_values": {0: batch}})
    )
    exported.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir / "model.onnx"


def compare_with_pytorch(model, processor, onnx_path: Path, photo: str) -> float:
    """The largest absolute difference between ONNX Runtime's and PyTorch's logits on a skimage photo."""
    pixel_values = processor(getattr(data, photo)(), return_tensors="pt").pixel_values
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
    with torch.no_grad():
        torch_logits = model(pixel_values).logits.numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


def missing_local_folder(name: str) -> bool:
    """Whether `name` is meant as a local folder that does not exist: it does not exist and is a path (starts with
    '.', '/' or '~', is not a valid Hub id, or lies inside an existing folder) rather than a Hub id."""
    if os.path.exists(name):
        return False
    if name.startswith((".", "/", "~")) or os.path.isdir(os.path.dirname(name)):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True,
                        help="a saved ClusTRForImageClassification with its preprocessor_config.json")
    parser.add_argument("--output_dir", "--output-dir", required=True)
    parser.add_argument("--photo", default="chelsea", help="the skimage.data photo to check the export on")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |ONNX - PyTorch| of the logits")
    args = parser.parse_args(argv)
    if missing_local_folder(args.model_name_or_path):
        parser.error(f"--model_name_or_path {args.model_name_or_path}: no such folder")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = AutoModelForImageClassification.from_pretrained(args.model_name_or_path).eval()
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    onnx_path = export(model, processor, Path(args.output_dir))
    difference = compare_with_pytorch(model, processor, onnx_path, args.photo)
    report = {"onnx": str(onnx_path), "photo": args.photo, "max_abs_logit_difference": difference, "atol": args.atol}
    print(json.dumps(report, indent=2))
    if difference > args.atol:
        sys.exit(f"ONNX Runtime's logits differ from PyTorch's by {difference:.3g} > atol {args.atol}")
    return report


if __name__ == "__main__":
    main()
