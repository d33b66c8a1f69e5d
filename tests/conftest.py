"""Shared test fixtures: offline mode, tiny configurations and real photos from scikit-image."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # the oracle and helpers next to the tests
torch.set_num_threads(2)

from clustr_hf.testing_utils import photo, photo_batch  # noqa: E402, F401  (the tests import them from here)


def tiny_config(**overrides):
    """A ClusTR configuration small enough for unit tests, with every stage clustered but the last."""
    from clustr_hf import ClusTRConfig

    settings = dict(
        hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4], depths=[1, 2, 1, 1], mlp_ratios=[2, 2, 2, 2],
        num_labels=3,
    )
    return ClusTRConfig(**{**settings, **overrides})


WITHOUT_CLUSTR_HF = r"""
import sys
sys.path.append(sys.argv[1])
try:
    import clustr_hf
except ModuleNotFoundError:
    pass
else:
    raise SystemExit(f"clustr_hf is importable from {clustr_hf.__file__}; the test would not test remote code")
"""


def run_without_clustr_hf(script: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `script` offline in a fresh interpreter where clustr_hf cannot be imported, as on a user's machine.

    -I ignores PYTHONPATH, the user site and the working directory, -S skips site-packages' .pth files (among them
    clustr_hf's editable install); only the bare site-packages folder comes back, as sys.argv[1] (`args` follow).
    """
    environment = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf_home"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-I", "-S", "-c", WITHOUT_CLUSTR_HF + script, sysconfig.get_paths()["purelib"], *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def config():
    return tiny_config()


collect_ignore = ["transformers_tests"]  # transformers' shared test files, run through test_transformers_common.py


def pytest_configure(config):
    """The marks transformers' shared test files use (registered in transformers' own conftest)."""
    for mark in ("slow", "accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test"):
        config.addinivalue_line("markers", f"{mark}: transformers' shared tests")
