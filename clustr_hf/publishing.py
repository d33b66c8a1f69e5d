"""Publishing to the Hugging Face Hub: assemble a ClusTR classifier into a Hub repository folder (weights, config with
the complete auto_map, the model code, image processor, model card, Inference Endpoints handler) and upload it; and
assemble a Gradio Space that runs examples/app.py on that repository.

    python examples/push_to_hub.py trained-folder/ --repo-id you/clustr-b2 --output-dir hub/clustr-b2 [--dry-run]
    python -m clustr_hf.publishing model_cards/     # regenerate the per-variant cards from the template
"""

import importlib.metadata
import json
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, SpaceCard, SpaceCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, StrictDataclassError
from packaging.requirements import Requirement
from transformers import AutoImageProcessor
from transformers.image_utils import PILImageResampling

from .atomic import atomic_folder
from .configuration_clustr import VARIANTS, ClusTRConfig
from .convert_reference_checkpoint import convert_checkpoint
from .image_processing_clustr import ClusTRImageProcessor
from .modeling_clustr import REMOTE_CODE_AUTO_MAP, ClusTRForImageClassification


TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
HANDLER_PATH = Path(__file__).with_name("handler.py")
VISUALIZATION_PATH = Path(__file__).with_name("visualization.py")
"""Shipped with the model code, so that the Space's app draws cluster maps with the repository's own code."""
RESULTS_FILES = ("all_results.json", "eval_results.json")
"""Where a trained folder's measured figures are read from (our training script's, then Trainer's name)."""
RECIPE_DATASET = "ILSVRC/imagenet-1k"
LICENSE = "apache-2.0"
TAGS = ["vision", "image-classification", "clustr", "custom_code"]
ARCHITECTURE_FIELDS = (
    "hidden_sizes", "num_attention_heads", "depths", "mlp_ratios", "cluster_reduction_ratios", "cluster_scales",
)
PAPER_GFLOPS = {"b1": 2.15, "b2": 4.8, "b3": 7.48}
"""The paper's GFLOPs at 224x224, which count no clustering and only the coarse-scale attention products."""

COUNTED_GFLOPS = {"b0": 1.41, "b1": 3.03, "b2": 7.39, "b3": 10.13}
"""Multiply-adds (G) of one 224x224 image as the model runs, both attention scales and the exact clustering included,
counted on a real photo by `benchmarks/flops.py` (its "total" column; tests/test_publish.py keeps b0's in step)."""
VARIANT_NOTES = {
    "b0": "clustr_hf's own small variant for demos and CPU work; not in the paper",
    "b1": "released configuration",
    "b2": 'released configuration, "ClusTR small" in the paper',
    "b3": "released configuration",
}
HUB_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "handler.py",
             "requirements.txt")
SPACE_FILES = ("app.py", "requirements.txt", "README.md")
PUBLIC_RECORD_KEYS = ("data", "from_scratch", "base_model", "base_model_is_local", "base_model_data",
                      "hyperparameters", "example_images")
"""The run record's entries a published results file keeps besides the numbers (local paths shortened)."""
APP_MODEL_LINE = 'DEFAULT_MODEL = "outputs/demo"'
"""The line of examples/app.py that names its model; a Space's copy names the model repository there."""


class PublishError(RuntimeError):
    """Publishing failed after the folder was assembled (no token, or the Hub refused a step); the folder is intact."""


def variant_of(config: ClusTRConfig) -> str | None:
    """The name of the variant whose architecture `config` has, or None for a custom one."""
    for name, spec in VARIANTS.items():
        if all(list(getattr(config, field)) == list(spec[field]) for field in ARCHITECTURE_FIELDS):
            return name
    return None


def declared_requirements(extra: str | None = None) -> dict[str, str]:
    """The version ranges clustr_hf declares (setup.py's install_requires, or those of one extra), as
    {name: ">=low,<high"}: what published files state, whatever versions happen to be installed."""
    try:
        declared = importlib.metadata.requires("clustr_hf") or []
    except importlib.metadata.PackageNotFoundError as error:
        raise ImportError("Publishing states the requirements clustr_hf declares: install it (pip install -e .)"
                          ) from error
    environment = {"extra": extra or ""}
    ranges = {}
    for line in declared:
        requirement = Requirement(line)
        in_extra = requirement.marker is not None and requirement.marker.evaluate(environment)
        if (requirement.marker is None and extra is None) or (extra is not None and in_extra):
            ranges[requirement.name] = ",".join(sorted(map(str, requirement.specifier), key=lambda s: s[0] != ">"))
    return ranges


def space_requirements() -> list[str]:
    """requirements.txt of a Space: the model's torch, torchvision and transformers ranges and the app's extras
    (gradio comes from the Space's sdk_version)."""
    model, app = declared_requirements(), declared_requirements("app")
    return [f"{name}{model[name]}" for name in ("transformers", "torch", "torchvision")] + [
        f"{name}{spec}" for name, spec in app.items() if name != "gradio"]


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; a file that is not valid JSON, or holds something else, is an error naming it."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it is truncated or damaged: write it again.") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; write it again.")
    return value


def read_measured_results(folder: Path) -> tuple[str, dict] | tuple[None, None]:
    """The first results file in `folder` (see RESULTS_FILES) and its contents, or (None, None). Only a regular file
    is read: a symbolic link could publish any file of the machine."""
    for name in RESULTS_FILES:
        path = folder / name
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link (to {path.readlink()}); publishing reads only regular files "
                             f"of the folder. Replace the link with a copy of the file.")
        if path.is_file():
            return name, read_json_object(path)
    return None, None


def accuracy_results(results: dict, results_file: str) -> list[dict]:
    """The accuracies in a results dict (`eval_accuracy`, `eval_top5_accuracy`, ...) as card rows, top-1 first."""
    rows = []
    for key, value in results.items():
        match = re.fullmatch(r"eval_(?:top(\d+)_)?accuracy", key)
        if not match:
            continue
        k = int(match.group(1) or 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{results_file}: {key}={value!r} is not an accuracy in [0, 1].")
        rows.append({"k": k, "name": f"Top-{k} accuracy", "value": float(value),
                     "metric_type": "accuracy" if k == 1 else f"top_{k}_accuracy"})
    return sorted(rows, key=lambda row: row["k"])


def describe_input(image_processor) -> tuple[tuple[int, int], str]:
    """The (height, width) the image processor produces and the card's description of how."""
    size, crop_pct = image_processor.size, getattr(image_processor, "crop_pct", None)
    name = type(image_processor).__name__
    if size.get("shortest_edge") and crop_pct:
        crop = size["shortest_edge"]
        resample = PILImageResampling(int(image_processor.resample)).name.lower()
        return (crop, crop), (f"{crop}x{crop} RGB ({name}): shorter side resized to {int(crop / crop_pct)} "
                              f"({resample}), centre crop, mean {list(image_processor.image_mean)}, "
                              f"std {list(image_processor.image_std)}")
    height, width = (size["shortest_edge"],) * 2 if size.get("shortest_edge") else (size["height"], size["width"])
    return (height, width), f"{height}x{width} RGB ({name}, see preprocessor_config.json)"


def describe_flops(image_size: tuple[int, int], variant: str | None) -> str:
    """The card's FLOPs entry: the honest count, and the paper's figure for comparison where there is one."""
    height, width = image_size
    if variant in COUNTED_GFLOPS and image_size == (224, 224):
        counted = (f"{COUNTED_GFLOPS[variant]:.2f} GFLOPs (multiply-adds) at 224x224: both attention scales and the "
                   f"clustering included, counted by benchmarks/flops.py")
    else:
        counted = f"not counted at {height}x{width} for this configuration (benchmarks/flops.py counts the variants)"
    if variant in PAPER_GFLOPS:
        counted += (f"; the paper reports {PAPER_GFLOPS[variant]} GFLOPs at 224x224, counting no clustering and only "
                    f"the coarse-scale attention products")
    return counted


def local_folder_name(path: str) -> str:
    """A local folder as the card names it: its last two path parts (the machine's absolute path says nothing to a
    reader and may say too much about the publisher)."""
    return "/".join(Path(path).parts[-2:])


def public_data(data: dict | None) -> dict | None:
    """A data record (see examples/training_utils.py, data_record) with its local folders by their last two parts."""
    if not data:
        return data
    data = dict(data)
    if data.get("kind") == "local" and data.get("name"):
        data["name"] = local_folder_name(data["name"])
    if data.get("validation_dir"):
        data["validation_dir"] = local_folder_name(data["validation_dir"])
    return data


def public_results(results: dict) -> dict:
    """The results file as published: its numbers and the run record (PUBLIC_RECORD_KEYS), with local folders by
    their last two parts; other entries, which may hold local paths, are left out."""
    public = {key: value for key, value in results.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    for key in PUBLIC_RECORD_KEYS:
        if key in results:
            public[key] = results[key]
    public["data"] = public_data(results.get("data"))
    public["base_model_data"] = public_data(results.get("base_model_data"))
    if results.get("base_model_is_local") and results.get("base_model"):
        public["base_model"] = local_folder_name(results["base_model"])
    return {key: value for key, value in public.items() if key in results}


def describe_data(data: dict) -> dict:
    """The card's words for a data record: `source` (what the data is and where it comes from), `evaluation` (the
    images evaluated on) and `training` (the images trained on)."""
    data = public_data(data)
    if data["kind"] == "hub":
        source = f"the Hub dataset `{data['name']}`" + (f" (configuration `{data['config']}`)" if data.get("config")
                                                         else "")
    elif data["kind"] == "bundled":
        source = f"{data['name']} ({data['about']})"
    else:
        source = f"the local data folder `{data['name']}`, which is not on the Hub"
    held_out = data.get("held_out_fraction")
    if data.get("validation_dir"):
        evaluation = f"the local image folder `{data['validation_dir']}`, which is not on the Hub"
    elif data.get("evaluation_split"):
        evaluation = f"the `{data['evaluation_split']}` split of {source}"
    elif held_out:
        evaluation = f"a random {held_out:.0%} of the `train` split of {source}, held out from training"
    else:
        evaluation = f"{source} (which split was not recorded)"
    if data["kind"] == "local":
        training = source + (f", less the {held_out:.0%} held out" if held_out and not data.get("evaluation_split")
                             else "")
    else:
        training = f"the `train` split of {source}" + (", less the part held out" if held_out else "")
    return {"source": source, "evaluation": evaluation, "training": training}


def eval_dataset_fields(data: dict) -> tuple[str, str, str | None]:
    """The model-index's dataset (type, name, split) of a data record: the Hub id for Hub data, otherwise a type
    that names no Hub dataset falsely ('imagefolder' for local folders, the bundled set's name as a slug)."""
    data = public_data(data)
    split = data.get("evaluation_split") if not data.get("validation_dir") else None
    if data["kind"] == "hub":
        return data["name"], data["name"], split
    if data["kind"] == "bundled":
        return re.sub(r"[^a-z0-9]+", "-", data["name"].lower()).strip("-"), data["name"], split
    return "imagefolder", f"{data.get('validation_dir') or data['name']} (local data folder)", split


def training_record(results: dict, variant: str | None) -> dict:
    """What the card says about how the weights were trained and evaluated, from the run record the training scripts
    write into all_results.json (data, sample counts, start, hyperparameters; absent in other results files)."""
    data = results.get("data")
    if "from_scratch" not in results:
        start = None
    elif results["from_scratch"]:
        start = "trained from scratch (randomly initialised" + (f", the {variant} architecture)" if variant else ")")
    elif results.get("base_model_is_local"):
        start = (f"fine-tuned from a model in a local folder (`{local_folder_name(results['base_model'])}`) that is "
                 f"not on the Hub")
        if results.get("base_model_data"):
            start += f", itself trained on {describe_data(results['base_model_data'])['training']}"
    else:
        start = f"fine-tuned from [`{results['base_model']}`](https://huggingface.co/{results['base_model']})"
    hyperparameters = results.get("hyperparameters") or {}
    return {
        "data": describe_data(data) if data else None,
        "eval_samples": results.get("eval_samples"),
        "train_samples": results.get("train_samples"),
        "start": start,
        "hyperparameters": [(name, json.dumps(value)) for name, value in hyperparameters.items()
                            if value is not None],
    }


def hub_base_model(results: dict) -> str | None:
    """The base model for the card's metadata: only a Hub repository id (a local folder is named in the text only)."""
    if results.get("from_scratch") is False and not results.get("base_model_is_local"):
        return results.get("base_model")
    return None


def example_images(source: Path, results: dict) -> list[dict]:
    """The run's example images (all_results.json's `example_images`: files of the validation data the training
    script saved in the folder), checked to be regular files inside `source`."""
    examples = results.get("example_images") or []
    for example in examples:
        path = source / example["file"]
        if Path(example["file"]).is_absolute() or ".." in Path(example["file"]).parts or path.is_symlink() or \
                not path.is_file():
            raise ValueError(f"{path}, an example image all_results.json names, is not a regular file inside {source};"
                             f" restore it, or remove its entry from `example_images`.")
    return examples


def render_card(config: ClusTRConfig, image_processor, *, card_kind: str, repo_id: str, num_parameters: int,
                dataset: str | None = None, results: list[dict] = (), results_file: str | None = None,
                measured: dict | None = None, examples: list[dict] = (), space_id: str | None = None) -> ModelCard:
    """The model card from the packaged template (model_cards/TEMPLATE.md links to it): metadata plus text;
    `results` become the model-index, `measured` (the results file with its run record) says how they were obtained
    and what the weights were trained on (else `dataset`, a Hub id the publisher names), `examples` (images of the
    run's validation data in the repository) become the widget, `space_id` names the Space that runs the model."""
    variant = variant_of(config)
    model_name = repo_id.split("/")[-1]
    image_size, input_description = describe_input(image_processor)
    measured = measured or {}
    training = training_record(measured, variant)
    data = measured.get("data")
    eval_results = []
    if results:
        dataset_type, dataset_name, split = eval_dataset_fields(data)
        eval_results = [
            EvalResult(task_type="image-classification", task_name="Image Classification", dataset_type=dataset_type,
                       dataset_name=dataset_name, dataset_split=split, metric_type=row["metric_type"],
                       metric_name=row["name"], metric_value=row["value"])
            for row in results
        ]
    hub_dataset = data["name"] if data and data["kind"] == "hub" else None if data else dataset
    widget = [{"src": example["file"], "example_title": f"{example['label']} (validation image)"}
              for example in examples]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="image-classification", license=LICENSE, tags=TAGS,
        datasets=[hub_dataset] if hub_dataset else None, metrics=["accuracy"], base_model=hub_base_model(measured),
        model_name=model_name if eval_results else None, eval_results=eval_results or None, widget=widget or None,
    )
    labels = [config.id2label[index] for index in sorted(config.id2label)]
    named = not all(label == f"LABEL_{index}" for index, label in enumerate(labels))
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE_PATH),
        title=f"ClusTR-{variant}" if card_kind == "variant" else model_name,
        card_kind=card_kind, repo_id=repo_id, config=config, variant=variant,
        variant_description=f"{variant} ({VARIANT_NOTES[variant]})" if variant else "custom (no released variant)",
        num_labels=config.num_labels,
        label_examples=", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "") if named else "",
        num_parameters=f"{num_parameters:,}", flops_description=describe_flops(image_size, variant),
        conversion_variant=variant if variant in PAPER_GFLOPS else "b2", hub_dataset=hub_dataset,
        input_description=input_description, training=training, examples=examples,
        results=[dict(row, value=f"{row['value']:.4f} ({100 * row['value']:.2f}%)") for row in results],
        results_file=results_file, space_id=space_id,
        transformers_requirement=declared_requirements()["transformers"],
    )


def variant_card(variant: str) -> ModelCard:
    """The card of a released (or our b0) variant with 1000 ImageNet classes: architecture, no measured results and
    no widget examples (there are no weights and no run whose images they could be)."""
    config = ClusTRConfig.from_variant(variant, num_labels=1000)
    with torch.device("meta"):  # shapes only: counting needs no memory and no initialisation
        num_parameters = sum(parameter.numel() for parameter in ClusTRForImageClassification(config).parameters())
    return render_card(config, ClusTRImageProcessor(), card_kind="variant",
                       repo_id=f"<your-namespace>/clustr-{variant}", num_parameters=num_parameters,
                       dataset=RECIPE_DATASET)


def write_variant_cards(directory) -> list[Path]:
    """Write model_cards/clustr-{variant}.md for every variant; returns the paths."""
    directory = Path(directory)
    paths = []
    for variant in VARIANTS:
        path = directory / f"clustr-{variant}.md"
        variant_card(variant).save(path)
        paths.append(path)
    return paths


def check_weight_shards(source: Path) -> None:
    """Fail, naming the file, if a shard that `source`'s model.safetensors.index.json lists is missing (from_pretrained
    names a truncated or damaged weights file itself)."""
    index = source / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as error:
        raise ValueError(f"{index} is not a safetensors index (JSON with a weight_map): {error!r}; save the "
                         f"model again.") from error
    for name in names:
        if not (source / name).is_file():
            raise FileNotFoundError(f"{source / name} is missing; {index.name} lists it as a weights shard. Copy the "
                                    f"complete folder.")


def load_classifier(source: Path) -> tuple[ClusTRForImageClassification, object]:
    """The classifier and image processor of a trained or converted folder, with clear errors for anything else."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder; give the output folder of training or of "
                                f"python -m clustr_hf.convert_reference_checkpoint (or a reference .pth file).")
    config_path = source / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{source} is not a ClusTR model folder: it has no config.json. Give a folder written by "
                         f"save_pretrained (training output or converted reference checkpoint).")
    model_type = read_json_object(config_path).get("model_type")
    if model_type != ClusTRConfig.model_type:
        raise ValueError(f"{source} holds a {model_type!r} model, not a ClusTR one (model_type 'clustr'); "
                         f"this tool publishes ClusTR classifiers only.")
    if not any((source / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise FileNotFoundError(f"{source} has a config.json but no weights (model.safetensors); train or convert "
                                f"a checkpoint into it first, or point to the folder that holds them.")
    check_weight_shards(source)
    try:
        config = ClusTRConfig.from_pretrained(source)
    except StrictDataclassError as error:  # huggingface_hub wraps the config's own ValueError
        raise ValueError(f"{config_path}: {error.__cause__ or error}") from error
    if "ClusTRForImageClassification" not in (config.architectures or []):
        raise ValueError(f"{source} holds a {', '.join(config.architectures or ['model'])} without a classification "
                         f"head; the Hub folder, card and handler are for image classification "
                         f"(ClusTRForImageClassification).")
    model, loading = ClusTRForImageClassification.from_pretrained(source, output_loading_info=True)
    problems = {kind: sorted(str(key) for key in loading[f"{kind}_keys"]) for kind in ("missing", "unexpected",
                                                                                        "mismatched")}
    if any(problems.values()):
        raise ValueError(f"The weights in {source} do not fit its config.json (every weight must load, none may be "
                         f"dropped): " + "; ".join(f"{kind} {keys}" for kind, keys in problems.items() if keys) +
                         ". Publish the folder the weights were saved with, or correct config.json (depths, "
                         "num_labels, widths) to the weights.")
    if (source / "preprocessor_config.json").is_file():
        image_processor = AutoImageProcessor.from_pretrained(source)
    else:  # a converted reference checkpoint: the reference's evaluation transform
        image_processor = ClusTRImageProcessor()
    return model.eval(), image_processor


def check_remote_code(folder: Path) -> None:
    """Fail if the folder would not load as remote code: a missing auto_map entry or a code file it names."""
    config = json.loads((folder / "config.json").read_text())
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    missing = set(REMOTE_CODE_AUTO_MAP) - set(config.get("auto_map", {}))
    processor_classes = (processor.get("auto_map") or {}).get("AutoImageProcessor", {})
    if processor["image_processor_type"].startswith("ClusTR") and not processor_classes:
        missing.add("AutoImageProcessor")
    if missing:
        raise RuntimeError(f"save_pretrained wrote no auto_map entry for {sorted(missing)} in {folder}; the folder "
                           f"would not load with trust_remote_code.")
    references = list(config["auto_map"].values()) + list(processor_classes.values())
    for reference in references:
        module = reference.split(".")[0]
        if not (folder / f"{module}.py").is_file():
            raise RuntimeError(f"{folder} names {reference} in its auto_map but has no {module}.py.")


def require_new_folder(output_dir: Path) -> None:
    """Fail unless `output_dir` is absent or empty: publishing overwrites nothing."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; give a new or empty --output-dir (nothing is overwritten).")


def with_recorded_data(results: dict, dataset: str | None, results_path: Path) -> dict:
    """`results` with the data its accuracies were measured on: the run record's `data`, or for results files without
    one (Trainer's eval_results.json, older folders) the Hub dataset `dataset` (--dataset). Fails when the two
    disagree, or when accuracies were measured on data nobody named."""
    recorded = results.get("data")
    if recorded and dataset and (recorded["kind"], recorded["name"]) != ("hub", dataset):
        raise ValueError(f"{results_path} records its data as {describe_data(recorded)['source']}, but --dataset says "
                         f"{dataset!r}; drop --dataset (the recorded data is stated) or correct it.")
    if not recorded and dataset:
        results = {**results, "data": {"kind": "hub", "name": dataset, "config": None, "about": None,
                                       "validation_dir": None, "evaluation_split": None, "held_out_fraction": None}}
    if accuracy_results(results, results_path.name) and not results.get("data"):
        raise ValueError(f"{results_path} holds measured accuracies but does not say what data they were measured "
                         f"on (the training scripts of clustr_hf record it); if it was a Hub dataset, name it (e.g. "
                         f"--dataset ILSVRC/imagenet-1k) so that the card can state it.")
    return results


def folder_card(source: Path, repo_id: str, *, dataset: str | None = None, space_id: str | None = None):
    """The classifier in `source`, its image processor, its card, and what the Hub folder publishes beside them: the
    results file's name and cleaned contents (`public_results`) and the example images."""
    model, image_processor = load_classifier(source)
    results_file, recorded = read_measured_results(source)
    results = with_recorded_data(recorded, dataset, source / results_file) if results_file else {}
    examples = example_images(source, results)
    card = render_card(
        model.config, image_processor, card_kind="folder", repo_id=repo_id,
        num_parameters=sum(parameter.numel() for parameter in model.parameters()), dataset=dataset,
        results=accuracy_results(results, results_file), results_file=results_file, measured=results,
        examples=examples, space_id=space_id,
    )
    return model, image_processor, card, results_file, public_results(recorded or {}), examples


def write_run_card(folder, repo_id: str) -> Path:
    """Write the card of a training run's output folder into its README.md (what the training scripts leave there,
    and what a Hub repository of the folder shows); returns the path."""
    folder = Path(folder)
    card = folder_card(folder, repo_id)[2]
    card.save(folder / "README.md")
    return folder / "README.md"


def assemble_hub_folder(source, output_dir, *, repo_id: str, dataset: str | None = None,
                        variant: str | None = None, space_id: str | None = None) -> Path:
    """Write the Hub repository folder for the ClusTR classifier in `source` into `output_dir` and return it.

    `source` is a folder written by save_pretrained (training output, or a converted reference checkpoint) or a
    reference .pth file (converted on the way, checked against `variant` if given). A trained folder's measured
    accuracies (all_results.json / eval_results.json) go into the card and its model-index with the data they were
    measured on (recorded by the training scripts, else `dataset`); the results file is published without local
    paths, with the run's example images. `space_id` names the Space the card points to. The folder is written beside
    `output_dir` and moved there when complete.
    """
    source, output_dir = Path(source), Path(output_dir)
    require_new_folder(output_dir)  # before the slow part
    if source.is_file() and source.suffix in (".pth", ".pt"):
        with tempfile.TemporaryDirectory() as converted:
            convert_checkpoint(source, converted, variant)
            return assemble_hub_folder(converted, output_dir, repo_id=repo_id, dataset=dataset, space_id=space_id)
    model, image_processor, card, results_file, results, examples = folder_card(
        source, repo_id, dataset=dataset, space_id=space_id)
    with atomic_folder(output_dir) as staging:
        model.save_pretrained(staging)  # with the .py files and the complete auto_map (importing clustr_hf registers)
        image_processor.save_pretrained(staging)
        card.save(staging / "README.md")
        shutil.copyfile(HANDLER_PATH, staging / "handler.py")
        shutil.copyfile(VISUALIZATION_PATH, staging / "visualization.py")
        (staging / "requirements.txt").write_text(f"transformers{declared_requirements()['transformers']}\n")
        if results_file:
            (staging / results_file).write_text(json.dumps(results, indent=2) + "\n")
        for example in examples:
            (staging / example["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / example["file"], staging / example["file"])
        check_remote_code(staging)
    return output_dir


def publish_run(folder, repo_id: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None):
    """--push_to_hub of the training scripts: assemble the Hub folder of a finished run beside it (`<folder>-hub`,
    kept for --upload-only after a failed upload) and upload it; returns huggingface_hub's CommitInfo."""
    folder = Path(folder)
    hub_folder = assemble_hub_folder(folder, folder.with_name(f"{folder.name}-hub"), repo_id=repo_id)
    return upload_hub_folder(hub_folder, repo_id, private=private, revision=revision, token=token)


def assemble_space_folder(app_path, output_dir, *, space_id: str, repo_id: str) -> Path:
    """Write a Gradio Space into `output_dir` that runs the app in `app_path` (examples/app.py) on the Hub model
    `repo_id`, loaded as remote code: app.py (naming `repo_id` as its model), requirements.txt and a README.md with
    the Space's metadata. Written beside `output_dir` and moved there when complete."""
    app_path, output_dir = Path(app_path), Path(output_dir)
    require_new_folder(output_dir)
    app = app_path.read_text()
    if app.count(APP_MODEL_LINE) != 1:
        raise ValueError(f"{app_path} has no line {APP_MODEL_LINE!r} to name the Space's model in; give "
                         f"examples/app.py of this version of clustr_hf.")
    try:
        gradio_version = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError as error:
        raise ImportError('Assembling a Space needs gradio, the version the Space will run: pip install -e ".[app]"'
                          ) from error
    card = SpaceCard.from_template(
        SpaceCardData(title=f"ClusTR: {repo_id.split('/')[-1]}", sdk="gradio", sdk_version=gradio_version,
                      python_version="{}.{}".format(*sys.version_info[:2]), app_file="app.py", models=[repo_id],
                      license=LICENSE, tags=["clustr", "image-classification"], emoji="🧩", colorFrom="indigo",
                      colorTo="green", pinned=False),
        template_str=(
            "---\n{{ card_data }}\n---\n\n# {{ title }}\n\nTry the ClusTR classifier "
            "[{{ repo_id }}](https://huggingface.co/{{ repo_id }}) in the browser: upload a photo (or pick an example) "
            "to see its top-5 labels, the clusters each clustered stage makes of it, and the forward time; switch "
            "between the paper's exact clustering and the scalable pooled mode. The model and its code load from "
            "the model repository (`trust_remote_code=True`); this Space holds only the app "
            "(`examples/app.py` of clustr_hf).\n"
        ),
        title=f"ClusTR: {repo_id.split('/')[-1]}", repo_id=repo_id,
    )
    with atomic_folder(output_dir) as staging:
        (staging / "app.py").write_text(app.replace(APP_MODEL_LINE, f"DEFAULT_MODEL = {json.dumps(repo_id)}"))
        (staging / "requirements.txt").write_text(
            "\n".join(space_requirements()) + "\n")
        card.save(staging / "README.md")
    return output_dir


def upload_hub_folder(folder, repo_id: str, *, private: bool = False, revision: str | None = None,
                      commit_message: str | None = None, token: str | None = None):
    """Create the Hub repository (if needed) and the branch `revision` (if given), then upload the assembled folder
    in one commit; returns huggingface_hub's CommitInfo. Raises PublishError naming the step that failed."""
    upload_again = ["python", "examples/push_to_hub.py", str(folder), "--upload-only", "--repo-id", repo_id]
    upload_again += ["--private"] * private + ["--revision", revision] * (revision is not None)
    return upload_folder(folder, repo_id, repo_type="model", required=HUB_FILES, upload_again=upload_again,
                         private=private, revision=revision, commit_message=commit_message, token=token)


def upload_space_folder(folder, space_id: str, *, repo_id: str, private: bool = False, token: str | None = None):
    """Create the Gradio Space `space_id` (if needed) and upload the Space folder for the model `repo_id` in one
    commit; returns huggingface_hub's CommitInfo. Raises PublishError naming the step that failed."""
    upload_again = ["python", "examples/push_to_hub.py", str(folder), "--upload-only", "--repo-id", repo_id,
                    "--space", space_id] + ["--private"] * private
    return upload_folder(folder, space_id, repo_type="space", required=SPACE_FILES, upload_again=upload_again,
                         private=private, token=token)


def upload_folder(folder, repo_id: str, *, repo_type: str, required, upload_again: list[str], private: bool = False,
                  revision: str | None = None, commit_message: str | None = None, token: str | None = None):
    """Upload an assembled model or Space folder (see upload_hub_folder); `upload_again` is the command the errors
    name for retrying."""
    folder, upload_again = Path(folder), shlex.join(upload_again)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not an assembled {'Space' if repo_type == 'space' else 'Hub'} folder "
                                f"(missing {', '.join(missing)}); build it with examples/push_to_hub.py --dry-run "
                                f"first.")
    token = token or get_token()
    if not token:
        raise PublishError(f"No Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access), "
                           f"then upload the assembled folder, which is ready and unchanged: {upload_again}")
    api = HfApi(token=token)
    step = f"creating the {'Space' if repo_type == 'space' else 'repository'} {repo_id}"
    try:
        repo_id = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                                  space_sdk="gradio" if repo_type == "space" else None).repo_id
        if revision not in (None, "main"):
            step = f"creating the branch {revision!r} of {repo_id}"
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        step = f"uploading {folder} to {repo_id}"
        return api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder, revision=revision,
                                 commit_message=commit_message or f"Upload {folder.name} with clustr_hf")
    except Exception as error:
        causes, cause, refused = [], error, False
        while cause is not None:  # huggingface_hub wraps some HTTP errors; their text says what the Hub answered
            causes.append(str(cause))
            refused |= isinstance(cause, HfHubHTTPError) and cause.response.status_code == 401
            cause = cause.__cause__
        fix = ("the Hub refused the token (401): set HF_TOKEN to a valid token with write access, or log in with "
               "`hf auth login`, then upload it again" if refused else "fix the cause, then upload it again")
        raise PublishError(f"Publishing failed while {step}: {' <- '.join(causes)}\nThe assembled folder {folder} is "
                           f"unchanged; {fix}: {upload_again}") from error


if __name__ == "__main__":
    for written in write_variant_cards(sys.argv[1] if len(sys.argv) > 1 else "model_cards"):
        print(f"wrote {written}")
