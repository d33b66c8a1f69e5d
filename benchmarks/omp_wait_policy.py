#!/usr/bin/env python
"""Seconds per training step of the Trainer example under OpenMP's wait policies, on idle and on busy cores.

Each run is `examples/run_image_classification.py` in a fresh process (ClusTR-b0 from scratch on the digits at
64x64, batch 32, `--max_steps` steps, the demo's digit-safe augmentation) while `--busy` processes spin on the CPU, as
other jobs on a shared machine do. Policies: libgomp's own default (threads spin 300,000 times before sleeping;
set through GOMP_SPINCOUNT, which overrides the spin count any OMP_WAIT_POLICY implies), PASSIVE (sleep at once) and
ACTIVE (spin for minutes). The figure is Trainer's train_runtime / steps, so start-up is not counted.

    python benchmarks/omp_wait_policy.py --busy 0 2 --repeats 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
POLICIES = {
    "libgomp default": {"GOMP_SPINCOUNT": "300000"},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
}


def seconds_per_step(policy: dict, steps: int, output_dir: Path) -> float:
    """Train `steps` steps in a fresh process with the OpenMP environment `policy`; Trainer's seconds per step."""
    environment = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environment.update(policy, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    flags = [
        "--model_name_or_path", "b0", "--dataset_name", "digits", "--image_size", "64", "--output_dir", str(output_dir),
        "--do_train", "--max_steps", str(steps), "--per_device_train_batch_size", "32", "--learning_rate", "2e-3",
        "--crop_scale_min", "0.6", "--horizontal_flip_prob", "0", "--save_strategy", "no", "--report_to", "none",
        "--use_cpu", "--disable_tqdm", "true",
    ]
    subprocess.run([sys.executable, str(REPO / "examples" / "run_image_classification.py"), *flags],
                   env=environment, check=True, capture_output=True)
    return json.loads((output_dir / "all_results.json").read_text())["train_runtime"] / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="busy processes competing (default 0 2)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per run (default 10)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per policy and load, interleaved (default 2)")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    args = parser.parse_args(argv)

    print(f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1)
            times = {name: [] for name in args.policies}
            for _ in range(args.repeats):
                for name in args.policies:
                    with tempfile.TemporaryDirectory() as output_dir:
                        times[name].append(seconds_per_step(POLICIES[name], args.steps, Path(output_dir)))
                    print(f"  {busy} busy, {name}: {times[name][-1]:.2f} s/step", flush=True)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
        rows += [(busy, name, statistics.median(values), values) for name, values in times.items()]

    print("\n| busy processes | policy | seconds per step (median) | runs |\n|---:|---|---:|---|")
    for busy, name, median, values in rows:
        print(f"| {busy} | {name} | {median:.2f} | {', '.join(f'{value:.2f}' for value in values)} |")


if __name__ == "__main__":
    main()
