"""torch.export, torch.compile and ONNX (examples/export_onnx.py, run by ONNX Runtime) of ClusTRForImageClassification
reproduce eager PyTorch on real photos, including photos other than the one traced."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import photo_batch, tiny_config
from skimage import data

from clustr_hf import ClusTRForImageClassification, ClusTRImageProcessor


EXAMPLE = Path(__file__).parents[1] / "examples" / "export_onnx.py"
spec = importlib.util.spec_from_file_location("export_onnx", EXAMPLE)
export_onnx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_onnx)

TRACED = ("astronaut", "coffee")
UNSEEN = ("chelsea", "rocket")
SIZE = (48, 64)  # stage 1 of 12 x 16 tokens: the clustering of few tokens, from the whole float64 distance matrix
CERTIFIED_SIZE = 136  # 34 x 34 tokens, above DENSE_TOKENS: the certified chunked passes, every token redone (export)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ClusTRForImageClassification(tiny_config(depths=[1, 1, 1, 1])).eval()


def eager_logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values).logits


def test_torch_export_matches_eager_on_traced_and_unseen_photos(model):
    program = torch.export.export(model, (), {"pixel_values": photo_batch(SIZE, TRACED)}, strict=False)
    exported = program.module()
    for names in (TRACED, UNSEEN):
        pixel_values = photo_batch(SIZE, names)
        with torch.no_grad():
            torch.testing.assert_close(exported(pixel_values=pixel_values).logits, eager_logits(model, pixel_values),
                                       atol=1e-6, rtol=1e-5)


def test_torch_compile_captures_one_graph_that_matches_eager(model):
    """fullgraph=True fails on any graph break; aot_eager runs dynamo and AOTAutograd without C++ code generation."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for names in (TRACED, UNSEEN):
        pixel_values = photo_batch(SIZE, names)
        with torch.no_grad():
            torch.testing.assert_close(compiled(pixel_values=pixel_values).logits, eager_logits(model, pixel_values),
                                       atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not os.environ.get("CLUSTR_SLOW_TESTS"),
                    reason="inductor compiles C++ for 2-4 minutes on 2 cores; set CLUSTR_SLOW_TESTS=1 to run")
def test_torch_compile_with_inductor_matches_eager(model):
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    pixel_values = photo_batch(SIZE, UNSEEN)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values=pixel_values).logits, eager_logits(model, pixel_values),
                                   atol=1e-5, rtol=1e-4)


def test_onnx_export_command_matches_pytorch_in_onnx_runtime(model, tmp_path):
    saved, exported = tmp_path / "classifier", tmp_path / "onnx"
    model.save_pretrained(saved)
    processor = ClusTRImageProcessor(size=CERTIFIED_SIZE)
    processor.save_pretrained(saved)
    report = export_onnx.main(["--model_name_or_path", str(saved), "--output_dir", str(exported)])
    assert report["max_abs_logit_difference"] <= 1e-4
    assert {"model.onnx", "model.onnx.data", "config.json", "preprocessor_config.json"} <= {
        path.name for path in exported.iterdir()
    }

    # A batch of three photos, none of them the traced one: the batch size is dynamic.
    pixel_values = processor([data.chelsea(), data.rocket(), data.coffee()], return_tensors="pt").pixel_values
    session = onnxruntime.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
    np.testing.assert_allclose(onnx_logits, eager_logits(model, pixel_values).numpy(), atol=1e-4, rtol=0)
