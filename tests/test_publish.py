"""Publishing: model cards, the assembled Hub folder (loaded as remote code in a fresh process without clustr_hf), the
Inference Endpoints handler, and uploads through huggingface_hub's real upload code to a stand-in Hub on 127.0.0.1."""

import base64
import errno
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import run_without_clustr_hf, tiny_config
from huggingface_hub import ModelCard, SpaceCard, constants
from hub_server import StandInHub
from reference_forward import reference_state_dict
from safetensors.torch import load_file
from skimage import data
from training_helpers import save_tiny_classifier
from transformers import ConvNextImageProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from clustr_hf import VARIANTS, ClusTRConfig, ClusTRForImageClassification, ClusTRImageProcessor
from clustr_hf.convert_reference_checkpoint import convert_reference_state_dict
from clustr_hf.handler import EndpointHandler, decode_image
from clustr_hf.publishing import (
    COUNTED_GFLOPS,
    HANDLER_PATH,
    VISUALIZATION_PATH,
    declared_requirements,
    PublishError,
    assemble_hub_folder,
    assemble_space_folder,
    upload_hub_folder,
    upload_space_folder,
    variant_card,
)


ROOT = Path(__file__).resolve().parent.parent
LABELS = {0: "cat", 1: "coffee", 2: "rocket"}
REPO_ID = "test-user/clustr-tiny"
DATASET = "clustr-tests/photos"
TOKEN = "hf_stand_in_token"
MEASURED = {"eval_accuracy": 0.75, "eval_top5_accuracy": 1.0, "eval_loss": 0.41, "eval_samples": 4}
# The spec's exact parameter counts with 1000 classes (docs/algorithm.md section 4; b0 from the README's table).
PARAMETERS = {"b0": 3_322_702, "b1": 11_682_417, "b2": 22_690_941, "b3": 40_246_210}
HUB_FILE_NAMES = {
    "README.md", "all_results.json", "config.json", "model.safetensors", "preprocessor_config.json", "handler.py",
    "requirements.txt", "configuration_clustr.py", "modeling_clustr.py", "clustering.py", "image_processing_clustr.py",
    "visualization.py",
}
SPACE_ID = "test-user/clustr-tiny-demo"
APP_PATH = ROOT / "examples" / "app.py"
# What the training scripts record in all_results.json besides the metrics (examples/training_utils.py, run_record).
HUB_DATA = {"kind": "hub", "name": DATASET, "config": None, "about": None, "validation_dir": None,
            "evaluation_split": "test", "held_out_fraction": None}
DIGITS_DATA = {"kind": "bundled", "name": "scikit-learn digits", "config": None, "about": "bundled with scikit-learn",
               "validation_dir": None, "evaluation_split": "validation", "held_out_fraction": None}
LOCAL_RUN = {
    **MEASURED, "train_samples": 60,
    "data": {"kind": "local", "name": "/home/someone/data/photos/train", "config": None, "about": None,
             "validation_dir": "/home/someone/data/photos/val", "evaluation_split": "validation",
             "held_out_fraction": None},
    "from_scratch": False, "base_model": "test-user/clustr-b0-imagenet", "base_model_is_local": False,
    "base_model_data": None,
    "hyperparameters": {"learning_rate": 0.0005, "per_device_train_batch_size": 16, "num_train_epochs": 2,
                        "horizontal_flip_prob": 0.0, "image_size": 64, "seed": 0},
}


def cat_jpeg() -> bytes:
    """skimage's chelsea (a real photo of a cat) as JPEG file bytes."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """What training writes: a tiny classifier with labels, its image processor and all_results.json."""
    folder = tmp_path_factory.mktemp("trained") / "clustr-tiny"
    torch.manual_seed(0)
    ClusTRForImageClassification(tiny_config(id2label=LABELS)).save_pretrained(folder)
    ClusTRImageProcessor(size=64).save_pretrained(folder)
    (folder / "all_results.json").write_text(json.dumps(MEASURED))
    return folder


@pytest.fixture(scope="module")
def hub_folder(trained_folder, tmp_path_factory):
    return assemble_hub_folder(trained_folder, tmp_path_factory.mktemp("hub") / "clustr-tiny", repo_id=REPO_ID,
                               dataset=DATASET)


@pytest.fixture(scope="module")
def reference_outputs(trained_folder):
    """The in-process model's logits on the cat photo (decoded from the same JPEG bytes the other side gets)."""
    model = ClusTRForImageClassification.from_pretrained(trained_folder).eval()
    processor = ClusTRImageProcessor.from_pretrained(trained_folder)
    pixel_values = processor(PIL.Image.open(io.BytesIO(cat_jpeg())), return_tensors="pt").pixel_values
    with torch.no_grad():
        return {"logits": model(pixel_values).logits, "stage4": model.clustr(pixel_values).last_hidden_state}


# ---------------------------------------------------------------------------------------------------------- cards
# Cards are checked for the facts they must carry (metadata, the tables, the numbers and names of the run record in
# the section that states them), not for their sentences; the committed variant cards are the one golden file.

def sections(card: ModelCard) -> dict[str, str]:
    """The card's text by `## ` section, whitespace collapsed (the title and introduction under '')."""
    parts = re.split(r"^## (.+)$", card.text, flags=re.M)
    named = dict(zip(parts[1::2], parts[2::2]))
    return {"": " ".join(parts[0].split()), **{name: " ".join(text.split()) for name, text in named.items()}}


def table(text: str) -> dict[str, str]:
    """The two-column rows of the markdown tables in `text` (a section as `sections` gives it): {first cell: second
    cell}."""
    return dict(re.findall(r"\| ([^|]+?) \| ([^|]+?) \|", text))


def load_card(path: Path) -> ModelCard:
    return ModelCard.load(path, ignore_metadata_errors=False)  # strict: any malformed field raises


def check_card_metadata(card: ModelCard) -> None:
    """What the Hub needs to file the model under transformers / image classification, and nothing invented."""
    metadata = card.data.to_dict()
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-classification"
    assert metadata["pipeline_tag"] in PIPELINE_REGISTRY.get_supported_tasks()
    assert metadata["license"] == "apache-2.0"
    assert {"vision", "image-classification", "custom_code"} <= set(metadata["tags"])
    assert metadata["metrics"] == ["accuracy"]


def check_usage(card: ModelCard, repo_id: str) -> None:
    """The usage snippets name the repository (that they run is tested on an assembled folder below)."""
    snippets = re.findall(r"```python\n(.*?)```", card.text, re.S)
    assert f'repo_id = "{repo_id}"' in snippets[0] and "AutoModelForImageClassification" in snippets[0]
    assert "pipeline(" in snippets[1] and "AutoBackbone" in snippets[2]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_cards_are_current_and_state_the_architecture_and_no_results(variant):
    path = ROOT / "model_cards" / f"clustr-{variant}.md"
    assert path.read_text() == str(variant_card(variant)), "stale card: run python -m clustr_hf.publishing model_cards"
    card = load_card(path)
    check_card_metadata(card)
    metadata = card.data.to_dict()
    assert card.data.datasets == ["ILSVRC/imagenet-1k"]  # the reference recipe's data, named as such
    assert "model-index" not in metadata and "base_model" not in metadata  # nothing measured, nothing fine-tuned
    assert "widget" not in metadata  # no weights and no run whose images could be shown
    model = table(sections(card)["Model"])
    config = ClusTRConfig.from_variant(variant)
    assert model["parameters"] == f"{PARAMETERS[variant]:,}" and model["classes"] == "1000"
    assert model["depths"] == ", ".join(map(str, config.depths))
    assert model["FLOPs"].startswith(f"{COUNTED_GFLOPS[variant]:.2f} GFLOPs")
    weights = sections(card)["Weights: what has and has not been trained"]
    assert re.search(r"no pretrained weights", weights.replace("*", ""), re.I)
    check_usage(card, f"<your-namespace>/clustr-{variant}")
    requirement = re.search(r"`transformers(>=[^`]+)`", sections(card)["Usage"]).group(1)
    assert requirement == declared_requirements()["transformers"]


def test_counted_gflops_are_what_the_flops_counter_counts():
    spec = importlib.util.spec_from_file_location("flops", ROOT / "benchmarks" / "flops.py")
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    assert round(flops.count("b0", 224)["total"] / 1e9, 2) == COUNTED_GFLOPS["b0"]


def test_trained_folder_card_reports_the_measured_results_and_only_those(hub_folder):
    card = load_card(hub_folder / "README.md")
    check_card_metadata(card)
    assert card.data.datasets == [DATASET]
    results = {result.metric_name: result for result in card.data.eval_results}
    assert {name: result.metric_value for name, result in results.items()} == {
        "Top-1 accuracy": 0.75, "Top-5 accuracy": 1.0}
    assert all(result.dataset_type == DATASET and result.task_type == "image-classification"
               for result in results.values())
    assert card.data.model_name == "clustr-tiny"
    weights = sections(card)["Weights: what has and has not been trained"]
    assert table(weights) == {"metric": "value", "Top-1 accuracy": "0.7500 (75.00%)",
                              "Top-5 accuracy": "1.0000 (100.00%)"}
    assert f"`{DATASET}`" in weights and re.search(r"\b4 images\b", weights)
    # an older results file records no training settings: the card claims none for these weights
    recipe = sections(card)["Training recipe"]
    assert not table(recipe) and "learning rate 5e-4" in recipe  # only the reference recipe, as such
    parameters = sum(p.numel() for p in ClusTRForImageClassification(tiny_config(id2label=LABELS)).parameters())
    model = table(sections(card)["Model"])
    assert model["parameters"] == f"{parameters:,}" and model["classes"] == "3 (cat, coffee, rocket)"
    check_usage(card, REPO_ID)


def test_folder_without_results_gets_no_model_index(trained_folder, tmp_path):
    source = shutil.copytree(trained_folder, tmp_path / "converted", ignore=shutil.ignore_patterns("*results.json"))
    folder = assemble_hub_folder(source, tmp_path / "hub", repo_id=REPO_ID)
    card = load_card(folder / "README.md")
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict() and card.data.datasets is None
    assert not table(sections(card)["Weights: what has and has not been trained"])
    assert "all_results.json" not in {path.name for path in folder.iterdir()}


def folder_with_results(trained_folder, tmp_path, results: dict) -> Path:
    source = shutil.copytree(trained_folder, tmp_path / "run", ignore=shutil.ignore_patterns("*results.json"))
    (source / "all_results.json").write_text(json.dumps(results))
    return source


def test_card_of_a_run_on_local_folders_states_them_without_their_paths(trained_folder, tmp_path):
    source = folder_with_results(trained_folder, tmp_path, LOCAL_RUN)
    folder = assemble_hub_folder(source, tmp_path / "hub", repo_id=REPO_ID)  # no --dataset: the run recorded its data
    card = load_card(folder / "README.md")
    assert card.data.datasets is None and card.data.base_model == "test-user/clustr-b0-imagenet"
    assert {(result.dataset_type, result.dataset_name) for result in card.data.eval_results} == {
        ("imagefolder", "photos/val (local data folder)")}
    weights, recipe = sections(card)["Weights: what has and has not been trained"], sections(card)["Training recipe"]
    assert "`photos/val`" in weights and re.search(r"\b4 images\b", weights) and "photos/train" not in weights
    assert "`photos/train`" in recipe and re.search(r"\b60 images\b", recipe)
    assert "fine-tuned" in recipe and "https://huggingface.co/test-user/clustr-b0-imagenet" in recipe
    assert table(recipe) == {"setting": "value", **{name: json.dumps(value)
                                                    for name, value in LOCAL_RUN["hyperparameters"].items()}}
    assert "300 epochs" not in recipe  # the run's own recipe, not the reference one
    published = json.loads((folder / "all_results.json").read_text())
    assert "/home/someone" not in card.content and "/home/someone" not in json.dumps(published)
    assert published == {**LOCAL_RUN, "data": {**LOCAL_RUN["data"], "name": "photos/train",
                                               "validation_dir": "photos/val"}}


def test_card_of_a_run_from_scratch_on_a_hub_dataset(trained_folder, tmp_path):
    results = {**LOCAL_RUN, "data": HUB_DATA, "from_scratch": True, "base_model": None}
    source = folder_with_results(trained_folder, tmp_path, results)
    folder = assemble_hub_folder(source, tmp_path / "hub", repo_id=REPO_ID)
    card = load_card(folder / "README.md")
    check_card_metadata(card)
    assert card.data.datasets == [DATASET] and card.data.base_model is None
    assert {(result.dataset_type, result.dataset_split) for result in card.data.eval_results} == {(DATASET, "test")}
    weights, recipe = sections(card)["Weights: what has and has not been trained"], sections(card)["Training recipe"]
    assert f"`{DATASET}`" in weights and "`test`" in weights and re.search(r"\b4 images\b", weights)
    assert f"`{DATASET}`" in recipe and re.search(r"\b60 images\b", recipe)
    assert "from scratch" in recipe and "fine-tuned" not in recipe
    with pytest.raises(ValueError, match=re.escape(f"records its data as the Hub dataset `{DATASET}`, but --dataset "
                                                   f"says 'other/set'")):
        assemble_hub_folder(source, tmp_path / "hub2", repo_id=REPO_ID, dataset="other/set")
    assert not (tmp_path / "hub2").exists()


def test_a_run_from_a_configuration_is_from_scratch_and_a_local_base_is_named_with_its_data(trained_folder, tmp_path):
    from training_utils import ModelArguments, start_record

    assert start_record(ModelArguments(config_name="some/folder"))["from_scratch"] is True
    assert start_record(ModelArguments(model_name_or_path="b0"))["from_scratch"] is True
    base = tmp_path / "outputs" / "demo"
    base.mkdir(parents=True)
    (base / "all_results.json").write_text(json.dumps({"data": DIGITS_DATA}))
    record = start_record(ModelArguments(model_name_or_path=str(base)))
    assert record == {"from_scratch": False, "base_model": str(base), "base_model_is_local": True,
                      "base_model_data": DIGITS_DATA}
    source = folder_with_results(trained_folder, tmp_path, {**LOCAL_RUN, "data": HUB_DATA, **record})
    card = load_card(assemble_hub_folder(source, tmp_path / "hub", repo_id=REPO_ID) / "README.md")
    recipe = sections(card)["Training recipe"]
    assert card.data.base_model is None and str(tmp_path) not in card.content
    assert "`outputs/demo`" in recipe and "not on the Hub" in recipe and "scikit-learn digits" in recipe


def test_a_symlinked_results_file_is_refused(trained_folder, tmp_path):
    source = shutil.copytree(trained_folder, tmp_path / "run", ignore=shutil.ignore_patterns("*results.json"))
    secret = tmp_path / "elsewhere.json"
    secret.write_text(json.dumps({**MEASURED, "data": HUB_DATA, "note": "not for the Hub"}))
    (source / "all_results.json").symlink_to(secret)
    with pytest.raises(ValueError, match=re.escape(f"{source / 'all_results.json'} is a symbolic link")):
        assemble_hub_folder(source, tmp_path / "hub", repo_id=REPO_ID)
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("edit, problem", [
    # the weights hold 2 stage-4 blocks: the second would be dropped
    ({"depths": [1, 2, 1, 1]}, r"unexpected .*stages\.3\.blocks\.1\.attention\.query\.weight"),
    # the trained head would be dropped: the config is refused before any weight loads
    ({"num_labels": 0, "id2label": None, "label2id": None}, r"num_labels=0"),
])
def test_weights_that_do_not_all_load_are_an_error_naming_them(tmp_path, edit, problem):
    source = tmp_path / "model"
    ClusTRForImageClassification(tiny_config(depths=[1, 2, 1, 2], id2label=LABELS)).save_pretrained(source)
    ClusTRImageProcessor(size=64).save_pretrained(source)
    config = json.loads((source / "config.json").read_text())
    config.update(edit)
    (source / "config.json").write_text(json.dumps({key: value for key, value in config.items() if value is not None}))
    with pytest.raises(ValueError, match=problem):
        assemble_hub_folder(source, tmp_path / "hub", repo_id=REPO_ID, dataset=DATASET)
    assert not (tmp_path / "hub").exists()


def test_the_demo_run_publishes_as_it_is_and_its_card_states_its_data(tmp_path, capsys):
    """A run of examples/demo.py's flags on a slice of the digits: the folder `make demo` writes, in small."""
    import demo
    from run_image_classification_no_trainer import main
    from training_utils import DataArguments, load_image_dataset

    output = tmp_path / "outputs" / "demo"
    results = main(demo.training_flags(str(output), 1, 32) + ["--max_train_samples", "32", "--max_eval_samples", "16",
                                                                "--with_tracking", "false"])
    status = push_to_hub_cli()([str(output), "--repo-id", "me/clustr-b0-digits", "--output-dir", str(tmp_path / "X"),
                                "--dry-run"])
    assert status == 0, capsys.readouterr().err
    hub = tmp_path / "X"
    card = load_card(hub / "README.md")
    check_card_metadata(card)
    assert card.data.datasets is None  # the digits are not a Hub dataset
    [result, _] = card.data.eval_results
    assert (result.dataset_name, result.dataset_split, result.metric_value) == (
        "scikit-learn digits", "validation", results["eval_accuracy"])
    weights, recipe = sections(card)["Weights: what has and has not been trained"], sections(card)["Training recipe"]
    for text, count in ((weights, 16), (recipe, 32)):
        assert "scikit-learn digits" in text and "bundled with scikit-learn" in text and "Hub dataset" not in text
        assert re.search(rf"\b{count} images\b", text)
    assert "from scratch" in recipe and table(recipe)["drop_path_rate"] == "0.0"
    assert table(sections(card)["Model"])["variant"].startswith("b0")
    # the widget shows validation images of the run, shipped in the repository
    validation = load_image_dataset(DataArguments(dataset_name="digits", max_eval_samples=16))["validation"]
    widget = card.data.to_dict()["widget"]
    assert len(widget) == 3
    for entry in widget:
        index = int(re.fullmatch(r"example_images/validation-(\d+)\.png", entry["src"]).group(1))
        with PIL.Image.open(hub / entry["src"]) as image:
            np.testing.assert_array_equal(np.asarray(image), np.asarray(validation[index]["image"]))
        assert entry["example_title"].startswith(str(validation[index]["label"]))
    published = (hub / "all_results.json").read_text()
    assert str(tmp_path) not in published and json.loads(published)["data"] == results["data"]
    # the old hint, --dataset digits, would name a Hub dataset the run did not use
    assert push_to_hub_cli()([str(output), "--repo-id", "me/x", "--output-dir", str(tmp_path / "Y"), "--dataset",
                              "digits", "--dry-run"]) == 2
    assert "records its data as scikit-learn digits" in capsys.readouterr().err


def test_trainer_script_leaves_the_projects_card(tmp_path):
    from run_image_classification import main

    model_dir = save_tiny_classifier(tmp_path / "model")
    output = tmp_path / "trainer"
    metrics = main(["--model_name_or_path", str(model_dir), "--output_dir", str(output), "--do_train", "--do_eval",
                    "--max_train_samples", "8", "--max_eval_samples", "8", "--max_steps", "1",
                    "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu", "--save_strategy", "no"])
    card = load_card(output / "README.md")
    check_card_metadata(card)
    assert {result.metric_name: result.metric_value for result in card.data.eval_results} == {
        "Top-1 accuracy": metrics["eval_accuracy"], "Top-5 accuracy": metrics["eval_top5_accuracy"]}
    assert str(tmp_path) not in card.content and "More information needed" not in card.content
    recipe = sections(card)["Training recipe"]
    assert f"`{tmp_path.name}/model`" in recipe and "not on the Hub" in recipe and re.search(r"\b8 images\b", recipe)
    assert all((output / entry["src"]).is_file() for entry in card.data.to_dict()["widget"])


def test_reference_checkpoint_publishes_in_one_step(tmp_path):
    state = reference_state_dict(ClusTRConfig.from_variant("b0"), num_labels=7)
    torch.save({"model": state}, tmp_path / "clustr_b0.pth")
    folder = assemble_hub_folder(tmp_path / "clustr_b0.pth", tmp_path / "hub", repo_id="test-user/clustr-b0",
                                 variant="b0", dataset="ILSVRC/imagenet-1k")
    weights = load_file(folder / "model.safetensors")
    expected = convert_reference_state_dict(state)
    assert set(weights) == set(expected) and all(torch.equal(weights[name], expected[name]) for name in expected)
    card = load_card(folder / "README.md")
    assert card.data.datasets == ["ILSVRC/imagenet-1k"] and card.data.eval_results is None
    model = table(sections(card)["Model"])
    assert model["variant"].startswith("b0 ") and model["classes"] == "7"
    assert json.loads((folder / "preprocessor_config.json").read_text())["size"] == {"shortest_edge": 224}


def test_a_folder_with_a_built_in_image_processor_keeps_it(trained_folder, tmp_path):
    source = shutil.copytree(trained_folder, tmp_path / "convnext", ignore=shutil.ignore_patterns("pre*", "*.py"))
    ConvNextImageProcessor(size={"shortest_edge": 48}, crop_pct=0.875).save_pretrained(source)
    folder = assemble_hub_folder(source, tmp_path / "hub", repo_id=REPO_ID, dataset=DATASET)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "ConvNextImageProcessor" and "auto_map" not in processor
    model = table(sections(load_card(folder / "README.md"))["Model"])
    assert model["input"].startswith("48x48 RGB (ConvNextImageProcessor)") and "resized to 54" in model["input"]


def test_readme_card_excerpt_is_taken_from_the_b2_card():
    section = (ROOT / "README.md").read_text().split("## Publishing to the Hub", 1)[1]
    excerpt = re.search(r"```markdown\n(.*?)```", section, re.S).group(1)
    card = (ROOT / "model_cards" / "clustr-b2.md").read_text()
    for part in excerpt.split("...\n"):
        assert part in card, part


# --------------------------------------------------------------------------------------------------- the folder

def test_assembled_folder_holds_weights_config_code_card_and_handler(hub_folder, trained_folder):
    assert {path.name for path in hub_folder.iterdir()} == HUB_FILE_NAMES
    config = json.loads((hub_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_clustr.ClusTRConfig",
        "AutoModel": "modeling_clustr.ClusTRModel",
        "AutoModelForImageClassification": "modeling_clustr.ClusTRForImageClassification",
        "AutoBackbone": "modeling_clustr.ClusTRBackbone",
    }
    assert config["id2label"] == {str(k): v for k, v in LABELS.items()}
    processor = json.loads((hub_folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"]["AutoImageProcessor"] == {
        "torchvision": "image_processing_clustr.ClusTRImageProcessor",
        "pil": "image_processing_clustr.ClusTRImageProcessorPil",
    }
    assert processor["size"] == {"shortest_edge": 64}
    for name in ("configuration_clustr.py", "modeling_clustr.py", "clustering.py", "image_processing_clustr.py"):
        assert (hub_folder / name).read_bytes() == (ROOT / "clustr_hf" / name).read_bytes()
    assert (hub_folder / "handler.py").read_bytes() == HANDLER_PATH.read_bytes()
    assert (hub_folder / "visualization.py").read_bytes() == VISUALIZATION_PATH.read_bytes()
    assert json.loads((hub_folder / "all_results.json").read_text()) == MEASURED  # numbers only: all of them
    assert re.fullmatch(r"transformers>=5\.\d+,<6\n", (hub_folder / "requirements.txt").read_text())


# Runs through conftest.run_without_clustr_hf, which puts site-packages back as sys.argv[1].
FRESH_PROCESS = r"""
import importlib.util, re, sys
import PIL.Image
import torch
from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModelForImageClassification

folder, repo_id, results_path = sys.argv[2:5]
results = {}
image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    results["logits"] = model(**image_processor(PIL.Image.open("cat.jpg"), return_tensors="pt")).logits
results["modules"] = [type(obj).__module__ for obj in (image_processor, model, model.config)]

# The card's classifier and pipeline examples as written, but for the local folder in place of the Hub id.
examples = re.findall(r"```python\n(.*?)```", open(f"{folder}/README.md").read(), re.S)
namespace = {}
for example in examples[:2]:
    exec(example.replace(f'"{repo_id}"', repr(folder)), namespace)
results["card_logits"] = namespace["logits"]
results["card_pipeline"] = namespace["classify"]("cat.jpg")

# The card's AutoBackbone example needs the Hub (transformers 5.25 asks it whether repo_id is a repository); the card
# says so and gives the snippet for a local folder, run here as written but for this folder.
assert "AutoBackbone.from_pretrained(" in examples[2] and "get_class_from_dynamic_module" in examples[3]
exec(examples[3].replace('"clustr-local/"', repr(folder)), namespace)
with torch.no_grad():
    results["feature_maps"] = namespace["backbone"].eval()(
        **image_processor(PIL.Image.open("cat.jpg"), return_tensors="pt")).feature_maps

# The handler as Inference Endpoints load it: handler.py imported from the repository folder.
spec = importlib.util.spec_from_file_location("handler", f"{folder}/handler.py")
handler_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler_module)
results["handler"] = handler_module.EndpointHandler(folder)({"inputs": open("cat.jpg", "rb").read()})
torch.save(results, results_path)
"""


def test_assembled_folder_loads_as_remote_code_in_a_fresh_process_without_clustr_hf(
        hub_folder, reference_outputs, tmp_path):
    elsewhere = shutil.copytree(hub_folder, tmp_path / "elsewhere" / "downloaded")
    (tmp_path / "cat.jpg").write_bytes(cat_jpeg())
    results_path = tmp_path / "results.pt"
    completed = run_without_clustr_hf(FRESH_PROCESS, str(elsewhere), REPO_ID, str(results_path), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = torch.load(results_path, weights_only=False)

    assert all(module.startswith("transformers_modules.") for module in results["modules"]), results["modules"]
    logits = reference_outputs["logits"]
    torch.testing.assert_close(results["logits"], logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results["card_logits"], logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results["feature_maps"][-1], reference_outputs["stage4"], atol=1e-6, rtol=1e-5)
    assert [tuple(feature_map.shape[1:2]) for feature_map in results["feature_maps"]] == [(8,), (16,), (24,), (32,)]
    scores = logits[0].softmax(-1)
    ranked = [(LABELS[int(index)], scores[index].item()) for index in scores.argsort(descending=True)]
    for answer in (results["card_pipeline"], results["handler"]):
        assert [entry["label"] for entry in answer] == [label for label, _ in ranked]
        np.testing.assert_allclose([entry["score"] for entry in answer], [score for _, score in ranked], rtol=1e-5)


# ------------------------------------------------------------------------------------------------------ handler

@pytest.fixture(scope="module")
def endpoint_handler(hub_folder):
    return EndpointHandler(str(hub_folder))


def test_handler_classifies_a_real_photo_with_the_models_softmax(endpoint_handler, reference_outputs):
    jpeg = cat_jpeg()
    encoded = base64.b64encode(jpeg).decode()
    pixels = np.asarray(PIL.Image.open(io.BytesIO(jpeg)).convert("RGB"))
    for inputs in (bytearray(jpeg), f"data:image/jpeg;base64,{encoded}",
                   PIL.Image.open(io.BytesIO(jpeg))):  # the last is what the toolkit makes of an image/jpeg body
        np.testing.assert_array_equal(np.asarray(decode_image(inputs)), pixels)
    scores = reference_outputs["logits"][0].softmax(-1)
    expected = sorted(((LABELS[index], scores[index].item()) for index in range(3)), key=lambda pair: -pair[1])
    for inputs in (jpeg, encoded):
        answer = endpoint_handler({"inputs": inputs})
        assert [entry["label"] for entry in answer] == [label for label, _ in expected]
        np.testing.assert_allclose([entry["score"] for entry in answer], [score for _, score in expected], rtol=1e-5)
        assert all(set(entry) == {"label", "score"} and isinstance(entry["score"], float) for entry in answer)
    top_one = endpoint_handler({"inputs": jpeg, "parameters": {"top_k": 1}})
    assert [entry["label"] for entry in top_one] == [expected[0][0]]


@pytest.mark.parametrize("data, message", [
    ({"inputs": b""}, "'inputs' is empty (0 bytes)"),
    ({"inputs": ""}, "'inputs' is an empty string"),
    ({"inputs": b"this is not an image"}, "is not an image file PIL can read"),
    ({"inputs": base64.b64encode(b"%PDF-1.7 not an image").decode()}, "is not an image file PIL can read"),
    ({"inputs": "cat.jpg"}, "is a string but not base64"),
    ({"inputs": 42}, "'inputs' is a int, not an image"),
    ({"image": b"..."}, "The request has no 'inputs'"),
    ({"inputs": "data:image/png;base64,"}, "'inputs' is an empty string"),
])
def test_handler_rejects_bad_input_with_a_clear_error(endpoint_handler, data, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        endpoint_handler(data)
    assert "send the image file itself" in str(error.value)


def test_handler_rejects_bad_parameters(endpoint_handler):
    with pytest.raises(ValueError, match=re.escape("parameters.top_k=0 must be a positive integer")):
        endpoint_handler({"inputs": cat_jpeg(), "parameters": {"top_k": 0}})
    with pytest.raises(ValueError, match=re.escape("'parameters' must be an object such as {\"top_k\": 3}, got 3")):
        endpoint_handler({"inputs": cat_jpeg(), "parameters": 3})


# ------------------------------------------------------------------------------------------- errors on assembly

def test_assembly_errors_name_the_problem(trained_folder, tmp_path):
    no_weights = shutil.copytree(trained_folder, tmp_path / "no_weights",
                                 ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError, match="has a config.json but no weights"):
        assemble_hub_folder(no_weights, tmp_path / "out1", repo_id=REPO_ID, dataset=DATASET)
    other_model = shutil.copytree(trained_folder, tmp_path / "vit")
    (other_model / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="holds a 'vit' model, not a ClusTR one"):
        assemble_hub_folder(other_model, tmp_path / "out2", repo_id=REPO_ID)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a ClusTR model folder: it has no config.json"):
        assemble_hub_folder(tmp_path / "empty", tmp_path / "out3", repo_id=REPO_ID)
    with pytest.raises(ValueError, match="does not say what data they were measured on.*--dataset"):
        assemble_hub_folder(trained_folder, tmp_path / "out4", repo_id=REPO_ID)
    (tmp_path / "out5").mkdir()
    (tmp_path / "out5" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty"):
        assemble_hub_folder(trained_folder, tmp_path / "out5", repo_id=REPO_ID, dataset=DATASET)
    assert [path.name for path in (tmp_path / "out5").iterdir()] == ["keep.txt"]
    assert not any((tmp_path / f"out{i}").exists() for i in range(1, 5))


def test_assembly_failing_midway_leaves_the_output_folder_as_it_was(trained_folder, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)  # the handler is copied after weights, config and card
    (tmp_path / "empty").mkdir()
    for output_dir in (tmp_path / "new", tmp_path / "empty"):
        with pytest.raises(OSError, match="No space left on device"):
            assemble_hub_folder(trained_folder, output_dir, repo_id=REPO_ID, dataset=DATASET)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]  # no partial folder anywhere
    assert list((tmp_path / "empty").iterdir()) == []
    monkeypatch.undo()
    assemble_hub_folder(trained_folder, tmp_path / "empty", repo_id=REPO_ID, dataset=DATASET)  # retried: complete
    assert {path.name for path in (tmp_path / "empty").iterdir()} == HUB_FILE_NAMES


def test_truncated_weights_are_an_error_naming_the_file(trained_folder, tmp_path, capsys):
    source = shutil.copytree(trained_folder, tmp_path / "copied")
    weights = source / "model.safetensors"
    complete = weights.read_bytes()
    for length in (len(complete) // 2, 100, 4):
        weights.write_bytes(complete[:length])
        status = push_to_hub_cli()([str(source), "--repo-id", REPO_ID, "--output-dir", str(tmp_path / "hub"),
                                    "--dataset", DATASET, "--dry-run"])
        error = capsys.readouterr().err
        assert status == 2 and f"error: {weights} ({length:,} bytes) could not be read" in error
        assert "truncated or corrupt" in error and "Traceback" not in error
        assert not (tmp_path / "hub").exists()


# ----------------------------------------------------------------------------------------------------- the Space

def test_space_folder_runs_the_app_on_the_model_repository(tmp_path):
    folder = assemble_space_folder(APP_PATH, tmp_path / "space", space_id=SPACE_ID, repo_id=REPO_ID)
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    app = APP_PATH.read_text()
    assert (folder / "app.py").read_text() == app.replace('DEFAULT_MODEL = "outputs/demo"',
                                                          f'DEFAULT_MODEL = "{REPO_ID}"')
    metadata = SpaceCard.load(folder / "README.md", ignore_metadata_errors=False).data.to_dict()
    assert {key: metadata[key] for key in ("sdk", "sdk_version", "app_file", "models")} == {
        "sdk": "gradio", "sdk_version": importlib.metadata.version("gradio"), "app_file": "app.py",
        "models": [REPO_ID]}
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert re.fullmatch(r"transformers>=5\.\d+,<6", requirements[0])
    assert {line.split(">=")[0] for line in requirements[1:]} == {"torch", "torchvision", "scikit-image"}
    with pytest.raises(FileExistsError, match="is not empty"):
        assemble_space_folder(APP_PATH, folder, space_id=SPACE_ID, repo_id=REPO_ID)
    other_app = tmp_path / "other_app.py"
    other_app.write_text("import gradio\n")
    with pytest.raises(ValueError, match="has no line 'DEFAULT_MODEL = \"outputs/demo\"'"):
        assemble_space_folder(other_app, tmp_path / "space2", space_id=SPACE_ID, repo_id=REPO_ID)
    assert not (tmp_path / "space2").exists()


def test_dry_run_with_a_space_writes_both_folders_with_either_flag_spelling(trained_folder, tmp_path, capsys):
    status = push_to_hub_cli()([str(trained_folder), "--repo_id", REPO_ID, "--output_dir", str(tmp_path / "hub"),
                                "--dataset", DATASET, "--space", SPACE_ID, "--dry_run"])
    assert status == 0, capsys.readouterr().err
    assert {path.name for path in (tmp_path / "hub").iterdir()} == HUB_FILE_NAMES
    assert {path.name for path in (tmp_path / "hub-space").iterdir()} == {"README.md", "app.py", "requirements.txt"}
    text = " ".join((tmp_path / "hub" / "README.md").read_text().split())
    assert f"Try it in the Space [{SPACE_ID}](https://huggingface.co/spaces/{SPACE_ID})" in text
    out = capsys.readouterr().out
    assert f"Wrote the Hub folder {tmp_path / 'hub'}" in out
    assert f"Wrote the Space folder {tmp_path / 'hub-space'}" in out


# ------------------------------------------------------------------------------------------- the stand-in Hub

@pytest.fixture
def stand_in_hub(monkeypatch, tmp_path):
    """huggingface_hub pointed at a StandInHub (tests/hub_server.py): online, Xet off (plain preupload + LFS + commit),
    a token in HF_TOKEN, no token file, and the agent registry it fetches cached under tmp_path."""
    with StandInHub(tmp_path / "stand-in-hub", TOKEN) as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def push_to_hub_cli():
    """examples/push_to_hub.py's main()."""
    spec = importlib.util.spec_from_file_location("push_to_hub", ROOT / "examples" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_push_to_hub_uploads_every_file_of_the_folder(stand_in_hub, trained_folder, tmp_path, capsys):
    output_dir = tmp_path / "hub"
    status = push_to_hub_cli()([str(trained_folder), "--repo-id", REPO_ID, "--output-dir", str(output_dir),
                                "--dataset", DATASET, "--private", "--commit-message", "First ClusTR upload"])
    assert status == 0, capsys.readouterr().err
    assert stand_in_hub.repos[f"models/{REPO_ID}"].private
    assert stand_in_hub.files(REPO_ID) == folder_contents(output_dir)
    assert set(stand_in_hub.files(REPO_ID)) == HUB_FILE_NAMES
    weights = (output_dir / "model.safetensors").read_bytes()
    assert stand_in_hub.verified_lfs == {hashlib.sha256(weights).hexdigest()}  # the weights went through LFS
    assert stand_in_hub.lfs_paths(REPO_ID) == {"model.safetensors"}  # the other files as regular files
    assert stand_in_hub.unknown == []
    assert stand_in_hub.commits == [(f"models/{REPO_ID}", "main", "First ClusTR upload")]
    assert stand_in_hub.repo_calls[0] == "create" and stand_in_hub.repo_calls[-1] == "commit"
    assert {"preupload", "lfs_batch", "lfs_upload", "lfs_verify", "validate_yaml"} <= set(stand_in_hub.calls)
    assert f"Uploaded: {stand_in_hub.endpoint}/{REPO_ID}/commit/" in capsys.readouterr().out


def test_upload_to_a_revision_creates_the_branch(stand_in_hub, hub_folder):
    commit = upload_hub_folder(hub_folder, REPO_ID, revision="experiment-1")
    assert stand_in_hub.files(REPO_ID, revision="experiment-1") == folder_contents(hub_folder)
    assert stand_in_hub.files(REPO_ID) == {}
    assert not stand_in_hub.repos[f"models/{REPO_ID}"].private
    assert commit.oid in commit.commit_url and stand_in_hub.commits[0][:2] == (f"models/{REPO_ID}", "experiment-1")


@pytest.mark.parametrize("endpoint, status, message, step", [
    ("commit", 500, "Internal error while committing", "while uploading"),
    ("create", 403, "You don't have the rights to create a model under the namespace", "while creating the repository"),
    ("lfs_upload", 400, "Upload rejected by storage", "Error while uploading 'model.safetensors'"),
])
def test_failed_upload_says_what_failed_and_leaves_the_folder_intact(
        stand_in_hub, hub_folder, endpoint, status, message, step):
    before = folder_contents(hub_folder)
    stand_in_hub.failures[endpoint] = (status, message)
    with pytest.raises(PublishError) as error:
        upload_hub_folder(hub_folder, REPO_ID)
    assert step in str(error.value) and message in str(error.value) and str(status) in str(error.value)
    assert f"The assembled folder {hub_folder} is unchanged" in str(error.value)
    assert folder_contents(hub_folder) == before
    assert stand_in_hub.commits == []
    stand_in_hub.failures.clear()  # the cause is fixed: the command the error names uploads the same folder
    command = shlex.split(str(error.value).rsplit("python examples/push_to_hub.py ", 1)[1])
    assert push_to_hub_cli()(command) == 0
    assert stand_in_hub.files(REPO_ID) == before


def test_push_to_hub_with_a_space_uploads_the_model_then_the_space(stand_in_hub, trained_folder, tmp_path, capsys):
    status = push_to_hub_cli()([str(trained_folder), "--repo-id", REPO_ID, "--output-dir", str(tmp_path / "hub"),
                                "--dataset", DATASET, "--space", SPACE_ID, "--space-dir", str(tmp_path / "space")])
    assert status == 0, capsys.readouterr().err
    assert stand_in_hub.files(REPO_ID) == folder_contents(tmp_path / "hub")
    space = stand_in_hub.repos[f"spaces/{SPACE_ID}"]
    assert (space.kind, space.sdk) == ("spaces", "gradio")
    assert stand_in_hub.files(SPACE_ID, kind="spaces") == folder_contents(tmp_path / "space")
    assert [commit[0] for commit in stand_in_hub.commits] == [f"models/{REPO_ID}", f"spaces/{SPACE_ID}"]
    assert stand_in_hub.unknown == []
    assert f"Uploaded the Space: {stand_in_hub.endpoint}/spaces/{SPACE_ID}/commit/" in capsys.readouterr().out


def test_failed_space_upload_names_the_command_that_uploads_it_again(stand_in_hub, tmp_path):
    folder = assemble_space_folder(APP_PATH, tmp_path / "space", space_id=SPACE_ID, repo_id=REPO_ID)
    stand_in_hub.failures["commit"] = (500, "Internal error while committing")
    with pytest.raises(PublishError, match="Internal error while committing") as error:
        upload_space_folder(folder, SPACE_ID, repo_id=REPO_ID)
    stand_in_hub.failures.clear()
    command = shlex.split(str(error.value).rsplit("python examples/push_to_hub.py ", 1)[1])
    assert command == [str(folder), "--upload-only", "--repo-id", REPO_ID, "--space", SPACE_ID]
    assert push_to_hub_cli()(command) == 0
    assert stand_in_hub.files(SPACE_ID, kind="spaces") == folder_contents(folder)
    assert f"models/{REPO_ID}" not in stand_in_hub.repos  # --upload-only --space uploads the Space folder only


def test_no_token_is_a_clear_error_before_any_request(stand_in_hub, hub_folder, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match=re.escape("No Hugging Face token: set HF_TOKEN or run `hf auth login`")):
        upload_hub_folder(hub_folder, REPO_ID)
    assert stand_in_hub.calls == []


def test_dry_run_writes_the_folder_and_sends_nothing(stand_in_hub, trained_folder, tmp_path, capsys):
    output_dir = tmp_path / "dry"
    status = push_to_hub_cli()([str(trained_folder), "--repo-id", REPO_ID, "--output-dir", str(output_dir),
                                "--dataset", DATASET, "--dry-run"])
    assert status == 0 and {path.name for path in output_dir.iterdir()} == HUB_FILE_NAMES
    assert stand_in_hub.calls == []
    assert f"Wrote the Hub folder {output_dir}" in capsys.readouterr().out
    status = push_to_hub_cli()([str(trained_folder), "--repo-id", REPO_ID, "--output-dir", str(output_dir)])
    assert status == 2 and "is not empty" in capsys.readouterr().err
    status = push_to_hub_cli()([str(trained_folder), "--repo-id", REPO_ID, "--upload-only"])
    assert status == 2 and "is not an assembled Hub folder (missing README.md, handler.py" in capsys.readouterr().err
    assert stand_in_hub.calls == []


@pytest.mark.parametrize("name, text, problem", [
    ("config.json", "[1, 2]", "holds a JSON list, not an object"),
    ("config.json", '{"model_type": "clus', "is not valid JSON"),
    ("all_results.json", '{"eval_accuracy": 0.9', "is not valid JSON"),
])
def test_a_damaged_json_file_is_named(trained_folder, tmp_path, capsys, name, text, problem):
    folder = tmp_path / "damaged"
    shutil.copytree(trained_folder, folder)
    (folder / name).write_text(text)
    status = push_to_hub_cli()([str(folder), "--repo-id", REPO_ID, "--output-dir", str(tmp_path / "hub"), "--dry-run"])
    assert status != 0
    assert f"{folder / name} {problem}" in capsys.readouterr().err
    assert not (tmp_path / "hub").exists()
