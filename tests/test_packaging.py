"""The package metadata builds without setuptools' deprecation warnings (a user reads them as trouble)."""

import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_setup_metadata_builds_without_warnings():
    result = subprocess.run([sys.executable, "-W", "error", "setup.py", "--name", "--license"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["clustr_hf", "Apache-2.0"]
    assert "Warning" not in result.stderr
