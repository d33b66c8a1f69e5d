"""The package metadata builds cleanly, and the lock (constraints.txt) that `make` installs from satisfies it."""

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from clustr_hf.publishing import declared_requirements


REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints.txt"


def locked_versions() -> dict[str, str]:
    pins = [line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def test_setup_metadata_builds_without_warnings():
    result = subprocess.run([sys.executable, "-W", "error", "setup.py", "--name", "--license"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["clustr_hf", "Apache-2.0"]
    assert "Warning" not in result.stderr


def test_the_lock_pins_every_package_within_the_declared_ranges():
    """Every requirement of the package and of the extras make installs is locked, at a version its range allows."""
    locked = locked_versions()
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version) for version in locked.values())
    for line in importlib.metadata.requires("clustr_hf"):
        requirement = Requirement(line)
        if requirement.marker and not any(requirement.marker.evaluate({"extra": extra}) for extra in ("dev", "app")):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in constraints.txt: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (line, locked[name])
    assert {"pip", "setuptools"} <= set(locked)


def test_the_environment_is_the_lock():
    """What runs the tests is what the lock says (make installs it; a hand-installed upgrade shows up here)."""
    locked = locked_versions()
    for name in ("torch", "transformers", "accelerate", "datasets", "huggingface-hub", "gradio", "safetensors"):
        assert importlib.metadata.version(name) == locked[name], name


def test_readme_states_the_locked_versions():
    stated = re.findall(r"`([A-Za-z0-9_.-]+)==([^`]+)`", (REPO / "README.md").read_text())
    assert len(stated) >= 5
    locked = locked_versions()
    for name, version in stated:
        assert locked.get(canonicalize_name(name)) == version, f"README says {name}=={version}; the lock says otherwise"


def setup_keyword(name: str):
    """The literal value of a keyword argument of setup() in setup.py."""
    call = next(node for node in ast.walk(ast.parse((REPO / "setup.py").read_text())) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setup")
    return ast.literal_eval(next(keyword.value for keyword in call.keywords if keyword.arg == name))


def test_published_files_state_the_ranges_setup_py_declares():
    """What cards and Space requirements say comes from setup.py, never from what happens to be installed."""
    def ranges(lines):
        return {Requirement(line).name: Requirement(line).specifier for line in lines}

    for declared, written in ((declared_requirements(), setup_keyword("install_requires")),
                              (declared_requirements("app"), setup_keyword("extras_require")["app"])):
        assert {name: SpecifierSet(spec) for name, spec in declared.items()} == ranges(written)
