"""The README's "Hugging Face usage" code runs and gives what its comments and text say (the compile and export blocks
excepted: tests/test_compile_and_mixed_precision.py and tests/test_export.py make the same calls on a tiny model, since
compiling or exporting b0 takes minutes)."""

import ast
import contextlib
import io
import json
import re
from pathlib import Path

import PIL.Image
import torch
from skimage import data

from clustr_hf import ClusTRForImageClassification


README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    section = README.read_text().split("## Hugging Face usage", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_hugging_face_usage_runs_and_gives_what_it_claims(tmp_path, monkeypatch):
    code = "\n".join(block for block in python_blocks() if "torch.compile" not in block and "torch.export" not in block)
    monkeypatch.chdir(tmp_path)
    printed, names = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), names)
    lines = printed.getvalue().splitlines()
    assert lines[0] == "torch.Size([2, 3, 224, 224])"
    assert lines[2] == "ClusTRBackbone ClusTRBackbone"
    assert len(lines) == 3

    folder = tmp_path / "clustr-b0-demo"
    assert json.loads((folder / "config.json").read_text())["auto_map"].keys() == {
        "AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoBackbone"}
    assert {"configuration_clustr.py", "modeling_clustr.py", "clustering.py", "image_processing_clustr.py",
            "model.safetensors", "preprocessor_config.json"} <= {path.name for path in folder.iterdir()}

    # The pipeline's top two are the labels of the two largest softmax scores of the saved model's logits.
    saved = ClusTRForImageClassification.from_pretrained(folder).eval()
    inputs = names["inputs"]
    with torch.no_grad():
        scores = saved(**names["processor"](PIL.Image.fromarray(data.chelsea()), return_tensors="pt")).logits[0]
        scores = scores.softmax(-1)
        expected_logits = saved(**inputs).logits
        eager_logits = names["model"](**inputs).logits
        encoder_output = names["encoder"](**inputs).last_hidden_state
        feature_maps = names["backbone"](**inputs).feature_maps
    top_two = ast.literal_eval(lines[1])
    best = scores.topk(2)
    assert [entry["label"] for entry in top_two] == [saved.config.id2label[int(i)] for i in best.indices]
    torch.testing.assert_close(torch.tensor([entry["score"] for entry in top_two]), best.values)

    # The logits are the saved model's; the eager attention block's model gives them too, and the remote-code
    # block's encoder and backbone compute the classifier's stage-4 map.
    torch.testing.assert_close(names["logits"].detach(), expected_logits)
    assert names["model"].config._attn_implementation == "eager"
    torch.testing.assert_close(eager_logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder_output, feature_maps[-1])
    with torch.no_grad():
        torch.testing.assert_close(encoder_output, saved.clustr(**inputs).last_hidden_state)
