#!/usr/bin/env python
"""Try a ClusTR classifier in the browser: a Gradio app showing an image's top-5 labels, the clusters each clustered
stage makes of it, and the forward time, with a switch between exact and pooled clustering.

    python examples/app.py                                  # the model `make demo` trains, in outputs/demo
    python examples/app.py --model your-name/clustr-b2      # any folder written by save_pretrained, or a Hub id
    python examples/app.py --host 0.0.0.0 --port 7860       # reachable from other machines (default 127.0.0.1)

Needs the app extra: pip install -e ".[app]" (gradio, scikit-image). The same file runs as a Hugging
Face Space (examples/push_to_hub.py --space): there clustr_hf is not installed, and the model and the code that
draws its clusters load from the model repository with trust_remote_code=True.
"""

import argparse
import hashlib
import io
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path


# The app contacts nobody: no usage analytics, no version check, no telemetry (set before gradio is imported).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Idle OpenMP threads sleep instead of spinning (set before torch loads OpenMP): with other work on the cores, the
# demo model's forward pass took a median 0.6-1.2 s with spinning threads and 0.08-0.11 s without (measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr  # noqa: E402
import PIL.Image  # noqa: E402
import PIL.ImageOps  # noqa: E402
import torch  # noqa: E402
from huggingface_hub.errors import StrictDataclassError  # noqa: E402
from safetensors import SafetensorError  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402
from transformers.dynamic_module_utils import get_class_from_dynamic_module  # noqa: E402


warnings.filterwarnings("ignore", category=PIL.Image.DecompressionBombWarning)  # such uploads get a message instead

try:
    from clustr_hf import visualization  # importing clustr_hf also registers ClusTR with the Auto classes
except ModuleNotFoundError:  # on a Space: the model repository's own code (visualization.py) draws the clusters
    visualization = None

DEFAULT_MODEL = "outputs/demo"
DEMO_FOLDER = Path("outputs/demo")
"""Where `make demo` saves its model."""
EXAMPLE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
"""scikit-image's sample photos offered as examples."""
CLUSTERING_MODES = [("exact (the paper's DPC-kNN)", "exact"), ("pooled (scalable)", "pooled")]
TOP_K = 5
MAX_FILE_BYTES = 20 * 2**20
"""The largest upload: the server refuses larger ones while they arrive, before storing them."""
DELETE_CACHE = (300, 600)
"""Every 5 minutes gradio deletes the uploads and pictures it stored over 10 minutes ago, and all of them at exit."""
PNG_COMPRESS_LEVEL = 1
"""zlib level of the cluster picture: a quarter of the encoding time of PIL's default level, for a tenth more bytes."""
MAX_PIXELS = PIL.Image.MAX_IMAGE_PIXELS
"""PIL's limit against decompression bombs (about 89 megapixels); the model sees a few hundred pixels a side anyway."""
ACCEPTED = "upload a photo as a JPEG, PNG, WebP, BMP, GIF or TIFF file"
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
"""Gradio's default look with the system's fonts instead of web fonts, which would be fetched from the internet."""


class UploadError(ValueError):
    """An upload that cannot be classified; the message is shown in the page."""


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to pass instead."""


def read_upload(path) -> PIL.Image.Image:
    """The RGB image in an uploaded file (orientation from its EXIF data applied, as the pipeline does), or an
    UploadError saying what is wrong with the file and what to upload instead."""
    if path is None:
        raise UploadError(f"No image yet: {ACCEPTED}, or pick one of the example photos.")
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"`{path.name}` is empty (0 bytes): {ACCEPTED}.")
    if size > MAX_FILE_BYTES:
        raise UploadError(f"`{path.name}` is {size / 2**20:.0f} MB; the app takes files up to "
                          f"{MAX_FILE_BYTES // 2**20} MB: scale the photo down or {ACCEPTED}.")
    try:
        with PIL.Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise UploadError(f"`{path.name}` is {image.width}x{image.height} pixels "
                                  f"({image.width * image.height / 1e6:.0f} megapixels); the app takes up to "
                                  f"{MAX_PIXELS / 1e6:.0f} megapixels: scale it down first.")
            return PIL.ImageOps.exif_transpose(image).convert("RGB")
    except PIL.Image.DecompressionBombError as error:
        raise UploadError(f"`{path.name}` is too large to decode safely ({error}): scale it down first.") from error
    except PIL.UnidentifiedImageError as error:
        raise UploadError(f"`{path.name}` is not an image file the app can read (not a format PIL knows): "
                          f"{ACCEPTED}.") from error
    except (OSError, SyntaxError) as error:  # PIL's errors for damaged or truncated files
        raise UploadError(f"`{path.name}` could not be read as an image ({error}): {ACCEPTED}.") from error


def load_classifier(source: str):
    """The ClusTR classifier in `source` (a folder written by save_pretrained, or a Hub id), its image processor,
    and the cluster_maps_from_outputs and draw_cluster_grid functions of the same code (clustr_hf's, or the
    repository's)."""
    if source == str(DEMO_FOLDER) and not DEMO_FOLDER.is_dir():
        raise ModelLoadError(f"There is no model in {DEMO_FOLDER} yet: run `make demo` first (it trains the demo "
                             f"model there, about 5 minutes on 2 CPU cores), or pass --model with a folder written "
                             f"by save_pretrained or a Hub id.")
    remote_code = visualization is None
    try:
        model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=remote_code).eval()
        image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=remote_code)
    except (OSError, ValueError, RuntimeError, SafetensorError, StrictDataclassError) as error:
        problem = " ".join(str(error).split()).rstrip(".!")  # on one line: some of these messages span several
        if isinstance(error, SafetensorError):
            problem = f"its weights file is damaged or not a safetensors file ({problem})"
        elif isinstance(error, StrictDataclassError):
            problem = f"its config.json holds an invalid value ({problem})"
        raise ModelLoadError(f"Could not load a classifier from {source!r}: {problem}. Pass --model with a folder "
                             f"written by save_pretrained (such as {DEMO_FOLDER}, written by `make demo`) or the Hub "
                             f"id of a ClusTR classifier.") from error
    if model.config.model_type != "clustr":
        raise ModelLoadError(f"{source!r} holds a {model.config.model_type!r} model; the app draws ClusTR's clusters "
                             f"and needs a ClusTR classifier.")
    if remote_code:
        try:
            return model, image_processor, *(
                get_class_from_dynamic_module(f"visualization.{name}", source)
                for name in ("cluster_maps_from_outputs", "draw_cluster_grid"))
        except (OSError, AttributeError) as error:  # AttributeError: the visualization.py of an older clustr_hf
            raise ModelLoadError(f"{source!r} has no visualization.py to draw the clusters with, or an older one "
                                 f"({error}); publish it again with examples/push_to_hub.py of clustr_hf.") from error
    return model, image_processor, visualization.cluster_maps_from_outputs, visualization.draw_cluster_grid


class Classifier:
    """The model behind the app: classifies an image with the chosen clustering mode, draws its clusters, and
    times the forward pass. One request at a time (the clustering mode is a setting of the shared model)."""

    def __init__(self, source: str):
        self.source = source
        self.model, self.image_processor, self.cluster_maps_from_outputs, self.draw_cluster_grid = load_classifier(
            source)
        self.lock = threading.Lock()

    def classify(self, image: PIL.Image.Image, clustering_mode: str):
        """The top-5 {label: softmax score}, the cluster picture and the forward pass's time in seconds; one forward
        pass gives both the labels and the clusters."""
        pixel_values = self.image_processor(image, return_tensors="pt").pixel_values
        with self.lock, torch.inference_mode():
            self.model.config.clustering_mode = clustering_mode
            start = time.perf_counter()
            outputs = self.model(pixel_values=pixel_values, output_hidden_states=True, output_cluster_assignments=True)
            seconds = time.perf_counter() - start
        maps = self.cluster_maps_from_outputs(self.model.config, outputs)
        scores = outputs.logits[0].softmax(-1)
        best = scores.topk(min(TOP_K, scores.numel()))
        id2label = self.model.config.id2label
        labels = {id2label[index]: score for score, index in zip(best.values.tolist(), best.indices.tolist())}
        return labels, self.cluster_picture(image, maps, clustering_mode), seconds

    def cluster_picture(self, image: PIL.Image.Image, maps, clustering_mode: str) -> PIL.Image.Image | None:
        """The clusters of the last block of each clustered stage over the image as the model saw it (resized and
        cropped by the image processor), coarse and fine scale side by side."""
        stages = sorted({clusters.stage for clusters in maps})
        if not stages:  # every stage attends fully: nothing is clustered
            return None
        last_blocks = [[clusters for clusters in maps if clusters.stage == stage][-1] for stage in stages]
        shown = self.image_processor(image, do_normalize=False, return_tensors="pt").pixel_values[0]
        shown = (shown.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return self.draw_cluster_grid(shown, last_blocks, note=f"{clustering_mode} clustering")

    def predict(self, upload, clustering_mode: str):
        """The page's answer to an upload: labels, cluster picture and a status line, or a message saying what is
        wrong with the upload (never a traceback)."""
        if clustering_mode not in dict(CLUSTERING_MODES).values():
            return None, None, f"Unknown clustering mode {clustering_mode!r}: choose exact or pooled."
        try:
            image = read_upload(upload)
        except UploadError as error:
            return None, None, f"**Could not classify the upload.** {error}"
        try:
            labels, picture, seconds = self.classify(image, clustering_mode)
        except Exception as error:  # shown in the page: a traceback would tell a visitor nothing
            return None, None, f"**The model could not classify this image** ({type(error).__name__}: {error})."
        return labels, picture, (f"Forward pass: **{1000 * seconds:.1f} ms** ({clustering_mode} clustering, CPU, "
                                 f"{torch.get_num_threads()} threads)")


def save_png(picture: PIL.Image.Image, folder) -> str:
    """Write the picture as a PNG file in a subfolder of `folder` named by its content (as gradio names the files of
    its cache) and return its path; a low zlib level keeps the encoding far below the forward pass's time."""
    buffer = io.BytesIO()
    picture.save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL)
    path = Path(folder) / hashlib.sha256(buffer.getvalue()).hexdigest() / "clusters.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return str(path)


def example_files() -> list[str]:
    """scikit-image's sample photos written as JPEG files, for the page's examples (the same folder at every start)."""
    from skimage import data

    folder = Path(tempfile.gettempdir()) / "clustr-app-examples"
    folder.mkdir(exist_ok=True)
    paths = []
    for name in EXAMPLE_PHOTOS:
        path = folder / f"{name}.jpg"
        PIL.Image.fromarray(getattr(data, name)()).convert("RGB").save(path, quality=90)
        paths.append(str(path))
    return paths


def build_app(classifier: Classifier) -> gr.Blocks:
    """The page: upload and examples, clustering switch, top-5 labels, status line with the forward time, clusters."""
    config = classifier.model.config
    name = Path(classifier.source).name if Path(classifier.source).is_dir() else classifier.source
    with gr.Blocks(title=f"ClusTR: {name}", analytics_enabled=False, delete_cache=DELETE_CACHE) as app:
        gr.Markdown(
            f"# ClusTR: `{name}`\n"
            f"Upload an image or pick an example photo. The classifier ({config.num_labels} classes) shows its "
            f"top-5 labels and how long its forward pass took here, and beside them the clusters that the last "
            f"block of each clustered stage makes of the image as the model saw it (coloured regions, white dots the "
            f"cluster centres; coarse and fine scale side by side). *Exact* is the paper's DPC-kNN clustering over "
            f"all tokens; *pooled* is the scalable mode for large images."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image file", type="filepath", height=120, elem_id="upload")
                gr.Examples([[path] for path in example_files()], inputs=[upload], label="Example photos "
                            "(scikit-image)", cache_examples=False)
                mode = gr.Radio(CLUSTERING_MODES, value=config.clustering_mode, label="Clustering",
                                elem_id="clustering-mode")
                status = gr.Markdown(elem_id="status")
                labels = gr.Label(num_top_classes=TOP_K, label="Top-5 labels", elem_id="labels")
            with gr.Column():
                clusters = gr.Image(label="Clusters per stage", show_label=False, type="pil", format="png",
                                    interactive=False, elem_id="clusters")

        def answer(upload_path, clustering_mode):
            """`Classifier.predict` with the picture written to gradio's cache as a quickly encoded PNG file."""
            found, picture, line = classifier.predict(upload_path, clustering_mode)
            return found, None if picture is None else save_png(picture, clusters.GRADIO_CACHE), line

        outputs = [labels, clusters, status]
        upload.change(answer, [upload, mode], outputs, api_name="classify", concurrency_id="model")
        mode.change(answer, [upload, mode], outputs, api_name=False, concurrency_id="model")
    return app.queue(default_concurrency_limit=1)


def launch(app: gr.Blocks, host: str, port: int):
    """Serve the app on host:port (in a thread; app.close() stops it) and classify an example photo through the
    server once before returning, so that the first visitor does not wait for the model's and Gradio's first-call
    set-up. Uploads over MAX_FILE_BYTES are refused as they arrive."""
    from gradio_client import Client, handle_file

    served = app.launch(server_name=host, server_port=port, theme=THEME, prevent_thread_lock=True, quiet=True,
                        footer_links=["api"], max_file_size=MAX_FILE_BYTES)
    Client(served[1], verbose=False, download_files=False).predict(
        handle_file(example_files()[0]), CLUSTERING_MODES[0][1], api_name="/classify")
    return served


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="folder written by save_pretrained, or a Hub id "
                                                               f"(default {DEFAULT_MODEL})")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to serve on (default 7860)")
    args = parser.parse_args(argv)
    try:
        classifier = Classifier(args.model)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = build_app(classifier)
    launch(app, args.host, args.port)
    print(f"Serving {args.model} on http://{args.host}:{args.port} (Ctrl+C stops)", flush=True)
    # A stop (kill, docker stop) closes the server as Ctrl+C does, and Gradio deletes the files it stored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
