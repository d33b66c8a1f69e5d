"""How long the Gradio app (examples/app.py) takes to answer, as a visitor sees it: the app is started in its own
process, then a client uploads a real photo (scikit-image's chelsea) through the app's API: the first prediction
after start-up, then warm ones in each clustering mode. Times are the client's round trips (upload, decoding,
preprocessing, forward pass, cluster picture, PNG encoding), printed beside the median of the forward passes the app
reports. `--gradio-baseline` also times an app with the same inputs and outputs that answers at once: Gradio's own
share of a round trip.

    python benchmarks/app_latency.py --model outputs/demo --warm 10
    python benchmarks/app_latency.py --variant b2 --image-size 224   # a b2 with random weights, 224x224 inputs
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image
from gradio_client import Client, handle_file
from skimage import data


ROOT = Path(__file__).resolve().parent.parent
FORWARD_MS = re.compile(r"Forward pass: \*\*([0-9.]+) ms\*\*")
"""The forward time in the app's status line."""
EMPTY_APP = r"""
import sys
import gradio as gr

with gr.Blocks(analytics_enabled=False) as app:
    upload, mode = gr.File(type="filepath"), gr.Radio(["exact", "pooled"], value="exact")
    outputs = [gr.Label(), gr.Image(), gr.Markdown()]
    upload.change(lambda path, mode: ({"-": 1.0}, None, "Forward pass: **0 ms**"), [upload, mode], outputs,
                  api_name="classify")
app.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True, prevent_thread_lock=True)
print("Serving", flush=True)
app.block_thread()
"""
"""An app with examples/app.py's inputs and outputs that answers at once, run as `python -c EMPTY_APP PORT`."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(process: subprocess.Popen) -> None:
    """Wait for the app's "Serving ..." line, which it prints once it is ready for visitors."""
    for line in process.stdout:
        if line.startswith("Serving"):
            return
    raise SystemExit(f"the app exited with status {process.wait()} before serving")


def save_random_model(variant: str, image_size: int, folder: Path) -> str:
    """Save a classifier of `variant` with random weights (seed 0) and an image processor cropping to `image_size`
    in `folder`: as fast as a trained one, without training it."""
    import torch

    from clustr_hf import ClusTRConfig, ClusTRForImageClassification, ClusTRImageProcessor

    torch.manual_seed(0)
    ClusTRForImageClassification(ClusTRConfig.from_variant(variant, num_labels=10)).save_pretrained(folder)
    ClusTRImageProcessor(size={"shortest_edge": image_size}).save_pretrained(folder)
    return str(folder)


def forward_ms(status: str) -> float:
    """The forward time (ms) in the app's status line."""
    match = FORWARD_MS.search(status)
    if match is None:
        raise SystemExit(f"the app answered without a forward time: {status!r}")
    return float(match.group(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo", help="folder or Hub id given to the app")
    parser.add_argument("--variant", help="serve a classifier of this variant (b0..b5) with random weights instead")
    parser.add_argument("--image-size", type=int, default=224, help="crop size of --variant's image processor")
    parser.add_argument("--warm", type=int, default=10, help="warm predictions per clustering mode")
    parser.add_argument("--gradio-baseline", action="store_true", help="also time an app that answers at once")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clustr-app-latency-") as workspace:
        measure(args, Path(workspace))
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def measure(args, workspace: Path) -> None:
    """Start the app on the model of `args`, time its answers and print them; files go to `workspace`."""
    model = save_random_model(args.variant, args.image_size, workspace / "model") if args.variant else args.model
    name = f"{args.variant} (random weights) at {args.image_size}" if args.variant else args.model
    photo = workspace / "chelsea.jpg"
    PIL.Image.fromarray(data.chelsea()).save(photo, quality=90)
    port = free_port()
    time_answers([sys.executable, str(ROOT / "examples" / "app.py"), "--model", model, "--port", str(port)], port,
                 photo, args.warm, f"model {name}")
    if args.gradio_baseline:
        port = free_port()
        time_answers([sys.executable, "-c", EMPTY_APP, str(port)], port, photo, args.warm, "gradio alone")


def time_answers(command: list[str], port: int, photo: Path, warm: int, name: str) -> None:
    """Start the app `command` serving on `port`, then print how long it takes to start and to answer `photo`."""
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, text=True)
    try:
        wait_until_serving(process)
        serving = time.perf_counter() - start
        client = Client(url, verbose=False)
        start = time.perf_counter()
        answer = client.predict(handle_file(str(photo)), "exact", api_name="/classify")
        first = time.perf_counter() - start
        print(f"{name}: serving {serving:.1f} s after start; first prediction {first:.2f} s ({answer[2]})")
        for mode in ("exact", "pooled"):
            times, forwards = [], []
            for _ in range(warm):
                start = time.perf_counter()
                answer = client.predict(handle_file(str(photo)), mode, api_name="/classify")
                times.append(time.perf_counter() - start)
                forwards.append(forward_ms(answer[2]))
            print(f"warm, {mode}: round trip median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
                  f"max {max(times):.3f} s; forward median {statistics.median(forwards):.0f} ms "
                  f"over {warm} predictions")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
