"""How long the Gradio app (examples/app.py) takes to answer, as a visitor sees it: the app is started in its own
process, then a client uploads a real photo (scikit-image's chelsea) through the app's API: the first prediction
after start-up, then warm ones in each clustering mode. Times are the client's round trips (upload, decoding,
preprocessing, forward pass, cluster maps, PNG encoding); the app's own forward-pass line is printed beside them.

    python benchmarks/app_latency.py --model outputs/demo --warm 10
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import PIL.Image
from gradio_client import Client, handle_file
from skimage import data


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with status {process.returncode} before serving")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the app did not serve {url} within {timeout:.0f} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo", help="folder or Hub id given to the app")
    parser.add_argument("--warm", type=int, default=10, help="warm predictions per clustering mode")
    args = parser.parse_args(argv)

    photo = Path(tempfile.mkdtemp()) / "chelsea.jpg"
    PIL.Image.fromarray(data.chelsea()).save(photo, quality=90)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "examples" / "app.py"), "--model", args.model,
                                "--port", str(port)], cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL)
    try:
        wait_until_serving(url, process)
        serving = time.perf_counter() - start
        client = Client(url, verbose=False)
        start = time.perf_counter()
        answer = client.predict(handle_file(str(photo)), "exact", api_name="/classify")
        first = time.perf_counter() - start
        print(f"model {args.model}: serving {serving:.1f} s after start; first prediction {first:.2f} s "
              f"({answer[2]})")
        for mode in ("exact", "pooled"):
            times = []
            for _ in range(args.warm):
                start = time.perf_counter()
                answer = client.predict(handle_file(str(photo)), mode, api_name="/classify")
                times.append(time.perf_counter() - start)
            print(f"warm, {mode}: median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
                  f"max {max(times):.3f} s over {args.warm} predictions (last: {answer[2]})")
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
