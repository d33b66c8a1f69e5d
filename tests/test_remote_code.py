"""Saved ClusTR folders load through the Auto classes and the pipeline: as remote code in a fresh process without
clustr_hf, and through the classes that importing clustr_hf registers."""

import json
import re
import shutil

import huggingface_hub
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import run_without_clustr_hf, tiny_config
from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled
from skimage import data
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    pipeline,
)

from clustr_hf import (
    ClusTRBackbone,
    ClusTRConfig,
    ClusTRForImageClassification,
    ClusTRImageProcessor,
    ClusTRModel,
)


LABELS = {0: "cat", 1: "coffee", 2: "rocket"}
AUTO_MAP = {
    "AutoConfig": "configuration_clustr.ClusTRConfig",
    "AutoModel": "modeling_clustr.ClusTRModel",
    "AutoModelForImageClassification": "modeling_clustr.ClusTRForImageClassification",
    "AutoBackbone": "modeling_clustr.ClusTRBackbone",
}
CODE_FILES = {"configuration_clustr.py", "modeling_clustr.py", "clustering.py", "image_processing_clustr.py"}

# Runs through conftest.run_without_clustr_hf, which puts site-packages back as sys.argv[1].
FRESH_PROCESS = r"""
import PIL.Image
import torch
from skimage import data
from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification
from transformers import pipeline

folder, results = sys.argv[2], {}
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
pil_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True, backend="pil")
base_model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
# AutoBackbone.from_pretrained does not load a local folder (test_auto_backbone_from_pretrained_asks_the_hub_...);
# from_config goes through the same auto_map entry.
backbone_class = type(AutoBackbone.from_config(config, trust_remote_code=True))
backbone = backbone_class.from_pretrained(folder).eval()
photo = PIL.Image.fromarray(data.chelsea())
pixel_values = processor(photo, return_tensors="pt").pixel_values
with torch.no_grad():
    results["pixel_values"] = pixel_values
    results["pil_pixel_values"] = pil_processor(photo, return_tensors="pt").pixel_values
    results["last_hidden_state"] = base_model(pixel_values).last_hidden_state
    results["logits"] = classifier(pixel_values).logits
    results["feature_maps"] = backbone(pixel_values).feature_maps
results["pipeline"] = pipeline("image-classification", model=folder, trust_remote_code=True)(photo)
results["classes"] = {type(obj).__name__: type(obj).__module__ for obj in
                      (config, processor, pil_processor, base_model, classifier, backbone)}
torch.save(results, sys.argv[3])
"""


def chelsea() -> PIL.Image.Image:
    return PIL.Image.fromarray(data.chelsea())


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    """A tiny classifier with labels and its image processor, saved into one folder, and the in-process originals."""
    folder = tmp_path_factory.mktemp("saved") / "clustr-tiny"
    torch.manual_seed(0)
    model = ClusTRForImageClassification(tiny_config(id2label=LABELS)).eval()
    processor = ClusTRImageProcessor(size=64)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.mark.parametrize("model_class", [ClusTRModel, ClusTRForImageClassification, ClusTRBackbone])
def test_save_pretrained_writes_the_complete_auto_map_and_flat_code(model_class, tmp_path):
    model_class(tiny_config(out_features=["stage2", "stage4"])).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["model_type"] == "clustr" and config["architectures"] == [model_class.__name__]
    code_files = {path.name for path in tmp_path.glob("*.py")}
    assert code_files == CODE_FILES - {"image_processing_clustr.py"}
    for path in tmp_path.glob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(from|import) clustr_hf", source, re.MULTILINE), path.name
        for module in re.findall(r"^from \.(\w+) import", source, re.MULTILINE):
            assert f"{module}.py" in code_files, f"{path.name} imports .{module}, which was not saved"


def test_saved_folder_loads_as_remote_code_in_a_fresh_process_without_clustr_hf(saved_classifier, tmp_path):
    folder, model, processor = saved_classifier
    elsewhere = shutil.copytree(folder, tmp_path / "elsewhere" / "clustr-copy")
    assert {path.name for path in elsewhere.glob("*.py")} == CODE_FILES
    results_file = tmp_path / "results.pt"
    completed = run_without_clustr_hf(FRESH_PROCESS, str(elsewhere), str(results_file), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = torch.load(results_file, weights_only=False)

    assert all(module.startswith("transformers_modules.") for module in results["classes"].values())
    assert set(results["classes"]) == {
        "ClusTRConfig", "ClusTRImageProcessor", "ClusTRImageProcessorPil", "ClusTRModel",
        "ClusTRForImageClassification", "ClusTRBackbone",
    }
    pixel_values = processor(chelsea(), return_tensors="pt").pixel_values
    torch.testing.assert_close(results["pixel_values"], pixel_values, atol=0, rtol=0)
    assert (results["pil_pixel_values"] - pixel_values).abs().max() <= 2 / (255 * 0.224) + 1e-6
    with torch.no_grad():
        base_output = model.clustr(pixel_values).last_hidden_state
        logits = model(pixel_values).logits
    torch.testing.assert_close(results["last_hidden_state"], base_output, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results["logits"], logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results["feature_maps"][-1], base_output, atol=1e-6, rtol=1e-5)
    scores = logits[0].softmax(-1)
    expected = [{"label": LABELS[int(index)], "score": scores[index].item()} for index in scores.argsort(descending=True)]
    assert [entry["label"] for entry in results["pipeline"]] == [entry["label"] for entry in expected]
    np.testing.assert_allclose([entry["score"] for entry in results["pipeline"]],
                               [entry["score"] for entry in expected], rtol=1e-5)


def test_installed_package_loads_saved_folders_without_trust_remote_code(saved_classifier):
    folder, model, processor = saved_classifier
    assert type(AutoConfig.from_pretrained(folder)) is ClusTRConfig
    assert type(AutoImageProcessor.from_pretrained(folder)) is ClusTRImageProcessor
    assert type(AutoModel.from_pretrained(folder)) is ClusTRModel
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(loaded) is ClusTRForImageClassification
    pixel_values = processor(chelsea(), return_tensors="pt").pixel_values
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=1e-6, rtol=1e-5)
    classify = pipeline("image-classification", model=folder)
    assert type(classify.model) is ClusTRForImageClassification
    assert {entry["label"] for entry in classify(chelsea())} == set(LABELS.values())


def test_auto_backbone_from_pretrained_asks_the_hub_so_local_folders_load_through_from_config(saved_classifier,
                                                                                               monkeypatch):
    """The README's remote-code block: AutoBackbone.from_pretrained takes a local folder for a Hub repo name (a path
    is no valid one; a bare name it looks up, which offline fails), and its from_config workaround loads the folder."""
    folder, model, processor = saved_classifier
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(folder.parent)
    with pytest.raises(OfflineModeIsEnabled):
        AutoBackbone.from_pretrained(folder.name)
    for path in (str(folder), f"./{folder.name}"):
        with pytest.raises(HFValidationError):
            AutoBackbone.from_pretrained(path)
    config = AutoConfig.from_pretrained(folder.name)
    backbone = type(AutoBackbone.from_config(config, trust_remote_code=True)).from_pretrained(folder.name).eval()
    assert type(backbone) is ClusTRBackbone
    pixel_values = processor(chelsea(), return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = model.clustr(pixel_values).last_hidden_state
        torch.testing.assert_close(backbone(pixel_values).feature_maps[-1], expected)
