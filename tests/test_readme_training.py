"""The README's training and set-up instructions: the fine-tuning command parses with the Trainer script's flags and
uses augmentation fit for small, orientation-sensitive images; one demo accuracy; installs that exist."""

import ast
import re
import shlex
import subprocess

from training_helpers import REPO
from training_utils import DataArguments, ModelArguments, RecipeArguments, parse_arguments


README = (REPO / "README.md").read_text()


def test_fine_tuning_command_parses_and_keeps_small_images_whole_and_unflipped():
    from transformers import TrainingArguments

    section = README.split("### Fine-tuning with Trainer", 1)[1].split("\n### ", 1)[0]
    command = shlex.split(re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " "))
    assert command[:2] == ["python", "examples/run_image_classification.py"]
    model, data, recipe, _ = parse_arguments([ModelArguments, DataArguments, RecipeArguments, TrainingArguments],
                                             command[2:])
    assert (data.dataset_name, model.image_size) == ("fashion_mnist", 64)  # 28x28 images, upsampled
    assert recipe.crop_scale_min >= 0.5 and recipe.horizontal_flip_prob == 0  # not ImageNet's 0.08 and 0.5
    assert "--crop_scale_min" in section.split("```", 2)[2] and "--horizontal_flip_prob" in section.split("```", 2)[2]


def test_one_demo_accuracy_is_quoted():
    figures = set(re.findall(r"(\d+(?:\.\d+)?)%\s+validation top-1", README))
    assert len(figures) == 1, f"the README quotes the demo at {sorted(figures)}"


def test_pip_installs_name_packages_that_exist():
    """clustr_hf is not on PyPI: the README installs it from the clone, with extras setup.py defines."""
    setup = ast.parse((REPO / "setup.py").read_text())
    extras_require = next(keyword.value for node in ast.walk(setup) if isinstance(node, ast.Call)
                          for keyword in node.keywords if keyword.arg == "extras_require")
    extras = {key.value for key in extras_require.keys}
    installs = re.findall(r"pip install ([^`\n]+)", README)
    assert installs
    for arguments in installs:
        assert not re.search(r"(?<![\w.-])clustr_hf", arguments), f"pip install {arguments}: not on PyPI"
        assert set(re.findall(r'-e "\.\[(\w+)\]"', arguments)) <= extras, arguments


def test_only_make_test_installs_chromium(tmp_path):
    """The set-up paragraph: `make test` installs the browser test's Chromium as root, `make demo` and `make app` do
    not; `make -n -B` prints every command a target would run from scratch, running none."""
    plans = {target: subprocess.run(["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO, check=True,
                                    capture_output=True, text=True).stdout for target in ("demo", "test", "app")}
    installs_chromium = "apt-get install -y -qq chromium chromium-driver"
    assert installs_chromium in plans["test"] and 'if [ "$(id -u)" = 0 ]' in plans["test"]
    assert installs_chromium not in plans["demo"] and installs_chromium not in plans["app"]
