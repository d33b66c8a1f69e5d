"""examples/push_to_hub.py against the Hub's HTTP protocol: huggingface_hub's real client, in child processes pointed at
a stand-in Hub on 127.0.0.1 (tests/hub_server.py), uploads a model repository and its Space, and the model downloads
back with snapshot_download and from_pretrained(repo_id, trust_remote_code=True)."""

import hashlib
import subprocess
import sys
import sysconfig
from pathlib import Path

import PIL.Image
import pytest
import torch
from conftest import WITHOUT_CLUSTR_HF
from hub_server import StandInHub, git_blob_id
from skimage import data
from training_helpers import EXAMPLES, save_tiny_classifier, subprocess_env
from transformers import AutoImageProcessor

from clustr_hf import ClusTRForImageClassification


TOKEN = "hf_stand_in_write_token"
REPO_ID = "user/clustr-test"
SPACE_ID = "user/clustr-test-demo"
TIMEOUT = 120
# Runs in a fresh interpreter where clustr_hf cannot be imported (conftest.WITHOUT_CLUSTR_HF), as on a user's machine.
DOWNLOAD = r"""
import PIL.Image
import torch
from huggingface_hub import snapshot_download
from transformers import AutoImageProcessor, AutoModelForImageClassification

repo_id, snapshot_cache, photo_path, results_path = sys.argv[2:6]
snapshot = snapshot_download(repo_id, cache_dir=snapshot_cache)
image_processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**image_processor(PIL.Image.open(photo_path), return_tensors="pt")).logits
torch.save({"snapshot": str(snapshot), "logits": logits, "modules": [type(model).__module__]}, results_path)
"""


def hub_environment(hub: StandInHub, home, token: str = TOKEN) -> dict:
    """A child process's environment for the stand-in Hub: online, Xet off, `token` in HF_TOKEN, its own HF_HOME."""
    return {**subprocess_env(), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint,
            "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def push_to_hub(hub: StandInHub, trained_folder, output_dir, token: str = TOKEN) -> subprocess.CompletedProcess:
    command = [sys.executable, str(EXAMPLES / "push_to_hub.py"), str(trained_folder), "--repo-id", REPO_ID,
               "--output-dir", str(output_dir), "--space", SPACE_ID, "--commit-message", "First ClusTR upload"]
    return subprocess.run(command, env=hub_environment(hub, output_dir.parent / "hf_home", token),
                          capture_output=True, text=True, timeout=TIMEOUT)


def folder_contents(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    torch.manual_seed(0)
    return save_tiny_classifier(tmp_path_factory.mktemp("trained") / "clustr-tiny")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with StandInHub(tmp_path_factory.mktemp("hub"), TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def published(hub, trained_folder, tmp_path_factory):
    """push_to_hub.py's model repository and Space on the stand-in Hub; the folder it assembled."""
    output_dir = tmp_path_factory.mktemp("publish") / "hub"
    completed = push_to_hub(hub, trained_folder, output_dir)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    return output_dir, completed.stdout


def test_push_to_hub_uploads_the_model_through_lfs_and_the_space(hub, published):
    output_dir, stdout = published
    assert hub.unknown == []
    assert hub.files(REPO_ID) == folder_contents(output_dir)
    weights = (output_dir / "model.safetensors").read_bytes()
    assert hub.lfs_paths(REPO_ID) == {"model.safetensors"}
    assert hashlib.sha256(weights).hexdigest() in hub.verified_lfs  # uploaded, checked against its sha256, verified
    assert (hub.repos[f"spaces/{SPACE_ID}"].sdk, hub.repos[f"spaces/{SPACE_ID}"].private) == ("gradio", False)
    space = hub.files(SPACE_ID, kind="spaces")
    assert set(space) == {"app.py", "requirements.txt", "README.md"}
    assert space == folder_contents(output_dir.with_name("hub-space"))
    assert set(hub.repos) == {f"models/{REPO_ID}", f"spaces/{SPACE_ID}"}
    model_commit, space_commit = (hub.repos[key].branches["main"] for key in sorted(hub.repos))
    assert f"Uploaded: {hub.endpoint}/{REPO_ID}/commit/{model_commit}" in stdout
    assert f"Uploaded the Space: {hub.endpoint}/spaces/{SPACE_ID}/commit/{space_commit}" in stdout


def test_published_model_downloads_and_classifies_as_the_local_folder(hub, published, trained_folder, tmp_path):
    output_dir, _ = published
    photo_path, results_path = tmp_path / "cat.png", tmp_path / "results.pt"
    PIL.Image.fromarray(data.chelsea()).save(photo_path)
    command = [sys.executable, "-I", "-S", "-c", WITHOUT_CLUSTR_HF + DOWNLOAD, sysconfig.get_paths()["purelib"],
               REPO_ID, str(tmp_path / "snapshot-cache"), str(photo_path), str(results_path)]
    completed = subprocess.run(command, cwd=tmp_path, env=hub_environment(hub, tmp_path / "hf_home"),
                               capture_output=True, text=True, timeout=TIMEOUT)
    assert completed.returncode == 0, completed.stderr[-6000:]
    assert hub.unknown == []
    results = torch.load(results_path, weights_only=False)

    snapshot = Path(results["snapshot"])
    commit = hub.repos[f"models/{REPO_ID}"].branches["main"]
    assert snapshot.name == commit and folder_contents(snapshot) == folder_contents(output_dir)
    # The cache names a blob by the ETag the Hub sent: the sha256 (X-Linked-Etag) for LFS, the git blob id otherwise.
    weights, readme = (output_dir / "model.safetensors").read_bytes(), (output_dir / "README.md").read_bytes()
    assert (snapshot / "model.safetensors").resolve().name == hashlib.sha256(weights).hexdigest()
    assert (snapshot / "README.md").resolve().name == git_blob_id(readme)

    # from_pretrained downloaded into its own cache (HF_HOME) and ran the repository's code.
    loaded = tmp_path / "hf_home" / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit
    assert (loaded / "model.safetensors").read_bytes() == weights
    assert results["modules"][0].startswith("transformers_modules.")
    model = ClusTRForImageClassification.from_pretrained(trained_folder).eval()
    image_processor = AutoImageProcessor.from_pretrained(trained_folder)
    with torch.no_grad():
        logits = model(**image_processor(PIL.Image.open(photo_path), return_tensors="pt")).logits
    torch.testing.assert_close(results["logits"], logits, atol=1e-6, rtol=1e-5)


def test_wrong_token_is_refused_with_a_clear_error_and_nothing_stored(trained_folder, tmp_path):
    wrong_token = "hf_not_the_users_token"
    with StandInHub(tmp_path / "hub", TOKEN) as hub:
        completed = push_to_hub(hub, trained_folder, tmp_path / "hub-folder", token=wrong_token)
    assert completed.returncode == 1
    assert "401" in completed.stderr and "HF_TOKEN" in completed.stderr
    assert wrong_token not in completed.stdout + completed.stderr
    assert hub.unknown == []
    assert hub.repo_calls == ["create", "info"]  # info: exist_ok's check
    assert hub.repos == {} and not any(hub.objects.iterdir())
