"""The Gradio app (examples/app.py): served on 127.0.0.1 in this process and called through gradio_client, plain HTTP
and a real headless Chromium, and as a Space in a fresh process that loads the model by Hub id as remote code only."""

import http.client
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import run_without_clustr_hf, tiny_config
from skimage import data
from transformers import pipeline

from clustr_hf import ClusTRForImageClassification, ClusTRImageProcessor, ClusTRModel
from clustr_hf.publishing import assemble_hub_folder, assemble_space_folder
from clustr_hf.visualization import cluster_maps
from test_visualization import check_grid_picture


ROOT = Path(__file__).resolve().parent.parent
APP_PATH = ROOT / "examples" / "app.py"
SCREENSHOT = ROOT / "docs" / "app.png"
UPDATE_SCREENSHOT = bool(os.environ.get("CLUSTR_UPDATE_SCREENSHOT"))
"""CLUSTR_UPDATE_SCREENSHOT=1 saves the browser test's screenshot as docs/app.png, the README's picture of the app."""
PHOTOS = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut", "coins": "coins",
          "camera": "camera"}
"""The test model's classes and the scikit-image photo each was trained on."""
REPO_ID = "test-user/clustr-app"
SPACE_ID = "test-user/clustr-app-demo"
PICTURE_SIZE = (274, 520)
"""The test model's cluster picture: 3 stages x (coarse, fine) panels of its 64-pixel images enlarged twice, with gaps,
captions and heading."""
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,1000",
)
"""The background-networking flags keep Chromium from calling out, which hangs its connections on a closed network."""


def load_app():
    spec = importlib.util.spec_from_file_location("clustr_app", APP_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo(name: str) -> PIL.Image.Image:
    return PIL.Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def app_module():
    return load_app()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny ClusTR whose classifier is trained until it tells six photos apart, saved as training saves it; the
    labels name what the photos show, so the app's top label can be checked on the page. Only the head is trained
    (on the features of one forward pass): a few milliseconds instead of a minute of training the whole model."""
    torch.manual_seed(0)
    labels = list(PHOTOS)
    model = ClusTRForImageClassification(tiny_config(num_labels=len(labels), id2label=dict(enumerate(labels)))).eval()
    processor = ClusTRImageProcessor(size=64)
    pixel_values = processor([photo(name) for name in PHOTOS.values()], return_tensors="pt").pixel_values
    with torch.no_grad():
        features = model.clustr(pixel_values).pooler_output
    mean, scale = features.mean(0), 1 / features.std(0).clamp_min(1e-6)
    head = torch.nn.Linear(features.shape[-1], len(labels))  # on standardised features
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    targets = torch.arange(len(labels))
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(head((features - mean) * scale), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # the standardisation folded into the model's own classifier
        model.classifier.weight.copy_(head.weight * scale)
        model.classifier.bias.copy_(head.bias - (head.weight * scale) @ mean)
        scores = model(pixel_values).logits.softmax(-1)
    assert torch.equal(scores.argmax(-1), targets) and scores.max(-1).values.min() > 0.5, "the head did not learn"
    folder = tmp_path_factory.mktemp("app_model") / "clustr-app"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier(app_module, model_folder):
    return app_module.Classifier(str(model_folder))


@pytest.fixture(scope="module")
def gradio_folder(tmp_path_factory):
    """Where the served app's gradio stores uploads and answers (GRADIO_TEMP_DIR)."""
    return tmp_path_factory.mktemp("gradio")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Uploads: a real photo as JPEG, a text file, an empty file, a 21 MB file and a 96-megapixel PNG of a few
    kilobytes."""
    folder = tmp_path_factory.mktemp("uploads")
    photo("chelsea").save(folder / "chelsea.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "big.jpg").write_bytes(b"\xff\xd8\xff" + bytes(21 * 2**20))
    PIL.Image.new("1", (12000, 8000)).save(folder / "huge.png")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


OUTSIDE_CONNECTIONS = []
"""Connections this process tried to open to anything but this machine while the app served (refused)."""


@pytest.fixture(scope="module")
def served_app(app_module, classifier, gradio_folder):
    """The app on the test model, served on 127.0.0.1 at a free port for the whole module, storing its files in
    `gradio_folder`; meanwhile any look-up of or connection to another machine is refused and recorded (the app must
    not phone home)."""
    local = ("127.0.0.1", "::1", "localhost", None)
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in local:
            OUTSIDE_CONNECTIONS.append(address)
            raise ConnectionRefusedError(f"test: no connections to {address}")
        return connect(sock, address)

    def local_getaddrinfo(host, *args, **kwargs):
        if host not in local:
            OUTSIDE_CONNECTIONS.append(host)
            raise socket.gaierror(f"test: no look-ups of {host}")
        return getaddrinfo(host, *args, **kwargs)

    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", local_connect)
        patch.setattr(socket, "getaddrinfo", local_getaddrinfo)
        patch.setenv("GRADIO_TEMP_DIR", str(gradio_folder))
        ui = app_module.build_app(classifier)
        _, url, _ = app_module.launch(ui, "127.0.0.1", port)
        yield url
        ui.close()


@pytest.fixture(scope="module")
def client(served_app):
    from gradio_client import Client

    return Client(served_app, verbose=False)


def classify(client, path, mode="exact"):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), mode, api_name="/classify")


def test_top_5_labels_and_scores_are_the_pipelines(client, model_folder, files):
    labels, _, status = classify(client, files / "chelsea.jpg")
    expected = pipeline("image-classification", model=str(model_folder))(str(files / "chelsea.jpg"), top_k=5)
    assert [entry["label"] for entry in labels["confidences"]] == [entry["label"] for entry in expected]
    np.testing.assert_allclose([entry["confidence"] for entry in labels["confidences"]],
                               [entry["score"] for entry in expected], rtol=1e-5)
    assert labels["label"] == "cat" == expected[0]["label"]
    assert status.startswith("Forward pass: **") and "(exact clustering, CPU" in status


def test_cluster_picture_colours_each_token_of_each_clustered_stage_by_its_cluster(client, model_folder, files):
    _, picture_path, _ = classify(client, files / "chelsea.jpg")
    picture = PIL.Image.open(picture_path)
    assert picture.format == "PNG" and picture.size == PICTURE_SIZE
    # The oracle: the clusters of a forward pass of its own, of the last block of each clustered stage, over the image
    # the model saw (enlarged twice: each pixel a 2 x 2 square), checked cell by cell.
    model = ClusTRForImageClassification.from_pretrained(model_folder).eval()
    processor = ClusTRImageProcessor.from_pretrained(model_folder)
    image = PIL.Image.open(files / "chelsea.jpg").convert("RGB")
    maps = cluster_maps(model, processor(image, return_tensors="pt").pixel_values)
    last_blocks = [[block for block in maps if block.stage == stage][-1] for stage in (1, 2, 3)]
    assert [block.block for block in last_blocks] == [0, 1, 0]  # tiny config: depths 1, 2, 1 in the clustered stages
    shown = processor(image, do_normalize=False, return_tensors="pt").pixel_values[0]
    shown = (shown * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert shown.shape == (64, 64, 3)
    check_grid_picture(np.asarray(picture.convert("RGB")), shown.repeat(2, axis=0).repeat(2, axis=1), last_blocks)


def test_launch_answers_a_photo_before_serving_and_an_answer_takes_one_forward_pass(
        app_module, classifier, files, tmp_path, monkeypatch):
    """The start-up's answer spares the first visitor the model's and Gradio's first-call set-up; an answer's labels
    and clusters come from one forward pass."""
    forward, calls = ClusTRModel.forward, []  # the encoder's, which the classifier and the cluster maps run
    monkeypatch.setattr(ClusTRModel, "forward",
                        lambda model, *args, **kwargs: calls.append(kwargs) or forward(model, *args, **kwargs))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    ui = app_module.build_app(classifier)
    try:
        app_module.launch(ui, "127.0.0.1", free_port())
        assert len(calls) == 1
        assert {"chelsea.jpg", "clusters.png"} <= {path.name for path in (tmp_path / "gradio").rglob("*")}
    finally:
        ui.close()
    labels, picture, status = classifier.predict(str(files / "chelsea.jpg"), "exact")
    assert len(calls) == 2 and next(iter(labels)) == "cat" and picture.size == PICTURE_SIZE
    assert status.startswith("Forward pass: **")


@pytest.mark.parametrize("name, message", [
    ("notes.txt", "`notes.txt` is not an image file the app can read (not a format PIL knows)"),
    ("empty.png", "`empty.png` is empty (0 bytes)"),
    ("huge.png", "`huge.png` is 12000x8000 pixels (96 megapixels); the app takes up to 89 megapixels"),
])
def test_bad_upload_gets_a_readable_message(client, files, name, message):
    labels, picture, status = classify(client, files / name)
    assert status.startswith("**Could not classify the upload.** ") and message in status
    assert "Traceback" not in status and picture is None and not labels.get("confidences")


def test_file_over_the_limit_is_refused_with_its_size(classifier, files):
    """Through the server such a file never arrives (the next test); the app refuses it by itself too."""
    labels, picture, status = classifier.predict(str(files / "big.jpg"), "exact")
    assert "`big.jpg` is 21 MB; the app takes files up to 20 MB" in status and picture is None and labels is None


def post_upload(url: str, size: int, piece_bytes: int = 2**20) -> tuple[int, str]:
    """POST a multipart upload of `size` zero bytes to the upload endpoint of the app at `url`, generated piece by
    piece as it is sent; the status and body of the answer."""
    boundary = "clustr-test-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="huge.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    try:
        connection.putrequest("POST", f"{address.path.rstrip('/')}/gradio_api/upload")
        connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        connection.putheader("Content-Length", str(len(head) + size + len(tail)))
        connection.endheaders()
        piece = bytes(piece_bytes)
        try:
            connection.send(head)
            for _ in range(size // piece_bytes):
                connection.send(piece)
            connection.send(bytes(size % piece_bytes) + tail)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and hung up before the end
            pass
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_upload_over_the_limit_is_refused_by_the_server_and_not_kept(app_module, served_app, gradio_folder):
    status, body = post_upload(served_app, 300 * 2**20)
    assert status == 413 and str(app_module.MAX_FILE_BYTES) in body
    stored = [path for path in gradio_folder.rglob("*") if path.is_file()]
    assert all(path.stat().st_size < 2**20 for path in stored), [(path, path.stat().st_size) for path in stored]


def test_stored_uploads_and_pictures_are_deleted_at_exit(app_module, classifier, files, tmp_path, monkeypatch):
    """Only the empty placeholder file that gradio's File component leaves for each upload remains."""
    from gradio_client import Client

    gradio_folder = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_folder))
    ui = app_module.build_app(classifier)
    _, url, _ = app_module.launch(ui, "127.0.0.1", free_port())
    try:
        labels, _, _ = classify(Client(url, verbose=False, download_files=str(tmp_path / "client")),
                                files / "chelsea.jpg")
        assert labels["label"] == "cat"
        assert {"chelsea.jpg", "clusters.png"} <= {path.name for path in gradio_folder.rglob("*") if path.is_file()}
    finally:
        ui.close()
    assert [path for path in gradio_folder.rglob("*") if path.is_file() and path.stat().st_size] == []


def test_stopped_app_deletes_the_files_it_stored(model_folder, tmp_path):
    """`kill` (SIGTERM, as docker stop sends) closes the server as Ctrl+C does: Gradio deletes its files."""
    gradio_folder = tmp_path / "gradio"
    app = subprocess.Popen([sys.executable, str(APP_PATH), "--model", str(model_folder), "--port", str(free_port())],
                           env={**os.environ, "GRADIO_TEMP_DIR": str(gradio_folder)}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(gradio_folder.rglob("clusters.png")):  # the answer to the start-up's example photo
            assert app.poll() is None and time.monotonic() < deadline, "the app did not answer its example photo"
            time.sleep(0.2)
        app.send_signal(signal.SIGTERM)
        assert app.wait(timeout=60) == 0, app.stderr.read()[-2000:]
    finally:
        app.kill()
        app.stderr.close()
    assert [path for path in gradio_folder.rglob("*") if path.is_file() and path.stat().st_size] == []


def test_missing_demo_model_says_to_run_make_demo(app_module, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no outputs/demo here
    assert app_module.main([]) == 2
    assert "There is no model in outputs/demo yet: run `make demo` first" in capsys.readouterr().err
    assert app_module.main(["--model", str(tmp_path / "nowhere")]) == 2
    assert "Pass --model with a folder written by save_pretrained" in capsys.readouterr().err


@pytest.mark.parametrize("damage, problem", [
    ("weights", "{folder}/model.safetensors (15 bytes) could not be read"),  # from_pretrained names the file
    ("config", "its config.json holds an invalid value (Validation error for field 'hidden_sizes'"),
])
def test_broken_model_folder_gets_one_line_naming_the_folder_and_the_problem(
        app_module, model_folder, tmp_path, capsys, damage, problem):
    folder = tmp_path / "broken"
    shutil.copytree(model_folder, folder)
    if damage == "weights":
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "hidden_sizes": "wide"}))
    assert app_module.main(["--model", str(folder)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    problem = problem.format(folder=folder)
    assert len(lines) == 1 and lines[0].startswith(f"error: Could not load a classifier from '{folder}': {problem}")


def test_browser_uploads_a_photo_and_sees_labels_and_clusters(served_app, files):
    """Headless Chromium (Debian's, through its chromedriver) uses the page as a visitor does. A browser that does
    not start fails the test with the reason: `make test` installs chromium and chromium-driver as root."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.fail(f"Chromium or its driver is missing (chromium: {browser}, chromedriver: {driver_path}); install "
                    f"them with `make test` as root or `apt-get install chromium chromium-driver`.")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="clustr-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as error:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"Headless Chromium did not start: {error.msg}")
    try:
        driver.get(served_app)
        wait = WebDriverWait(driver, 60)
        file_input = (By.CSS_SELECTOR, "#upload input[type=file]")
        upload = wait.until(expected_conditions.presence_of_element_located(file_input))
        upload.send_keys(str(files / "chelsea.jpg"))
        picture = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#clusters img")))
        wait.until(lambda _: picture.get_attribute("complete") and int(picture.get_attribute("naturalWidth")) > 0)
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "Forward pass"))
        labels = driver.find_element(By.ID, "labels").text.split("\n")
        assert labels[:2] == ["Top-5 labels", "cat"] and "cat" in driver.find_element(By.TAG_NAME, "body").text
        assert int(picture.get_attribute("naturalWidth")) == PICTURE_SIZE[0]
        screenshot = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    image = PIL.Image.open(io.BytesIO(screenshot))
    assert image.size[0] >= 1000 and len(np.unique(np.asarray(image.convert("L")))) > 50  # a rendered page
    if UPDATE_SCREENSHOT:
        image.convert("RGB").quantize(128, method=PIL.Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)


def test_the_app_contacted_no_other_machine(served_app):
    """Runs after the tests above, which used the app: Gradio's analytics, version check and telemetry stay off."""
    assert OUTSIDE_CONNECTIONS == []


# Runs through conftest.run_without_clustr_hf, which puts site-packages back as sys.argv[1].
SPACE_PROCESS = r"""
import json
sys.path.insert(0, sys.argv[2])
import app  # the Space's app.py, as the Space runs it (not as __main__: no server here)

classifier = app.Classifier(app.DEFAULT_MODEL)
labels, picture, status = classifier.predict("chelsea.jpg", "exact")
app.build_app(classifier)
print(json.dumps({"model": app.DEFAULT_MODEL, "visualization": app.visualization is None, "labels": labels,
                  "picture": list(picture.size), "status": status,
                  "modules": [type(classifier.model).__module__, classifier.cluster_maps_from_outputs.__module__,
                              classifier.draw_cluster_grid.__module__]}))
"""


def assemble_space_and_cached_repo(model_folder, folder: Path) -> tuple[Path, Path]:
    """The Space's folder, and the model repository's as huggingface_hub caches a download of it in `folder`: the Space
    loads it by its Hub id, offline."""
    hub_folder = assemble_hub_folder(model_folder, folder / "hub", repo_id=REPO_ID, space_id=SPACE_ID)
    space_folder = assemble_space_folder(APP_PATH, folder / "space", space_id=SPACE_ID, repo_id=REPO_ID)
    repo_cache = folder / "hf_home" / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(hub_folder, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    return space_folder, repo_cache / "snapshots" / commit


def test_space_runs_in_a_fresh_process_with_the_model_from_the_hub_as_remote_code(model_folder, files, tmp_path):
    space_folder, _ = assemble_space_and_cached_repo(model_folder, tmp_path)
    shutil.copyfile(files / "chelsea.jpg", tmp_path / "chelsea.jpg")

    completed = run_without_clustr_hf(SPACE_PROCESS, str(space_folder), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer["model"] == REPO_ID and answer["visualization"]
    assert all(module.startswith("transformers_modules.") for module in answer["modules"]), answer["modules"]
    expected = pipeline("image-classification", model=str(model_folder))(str(files / "chelsea.jpg"), top_k=5)
    assert list(answer["labels"]) == [entry["label"] for entry in expected]
    np.testing.assert_allclose(list(answer["labels"].values()), [entry["score"] for entry in expected], rtol=1e-5)
    assert answer["picture"] == list(PICTURE_SIZE) and answer["status"].startswith("Forward pass: **")


OLD_REPOSITORY_PROCESS = r"""
sys.path.insert(0, sys.argv[2])
import app

try:
    app.Classifier(app.DEFAULT_MODEL)
except app.ModelLoadError as error:
    print(error)
"""


def test_space_on_a_repository_without_the_pictures_code_says_to_publish_it_again(model_folder, tmp_path):
    space_folder, snapshot = assemble_space_and_cached_repo(model_folder, tmp_path)
    visualization = snapshot / "visualization.py"  # as published by a version of clustr_hf without draw_cluster_grid
    visualization.write_text(visualization.read_text().replace("def draw_cluster_grid(", "def another_name("))
    completed = run_without_clustr_hf(OLD_REPOSITORY_PROCESS, str(space_folder), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"'{REPO_ID}' has no visualization.py to draw the clusters with" in completed.stdout
    assert "publish it again with examples/push_to_hub.py" in completed.stdout
