"""Extract transformers' shared test files (`tests/test_*_common.py`) of the installed version into this folder.

They come from the version's source distribution on PyPI (`pip download --no-binary :all:`); the wheel has no tests.
Run by `make install`; does nothing when the files of the installed version are already here.
"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers


FOLDER = Path(__file__).parent
FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_backbone_common.py",
         "test_image_processing_common.py")
STAMP = FOLDER / "VERSION"
"""The transformers version the extracted files come from."""


def fetch(version: str) -> None:
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary", ":all:", "--no-deps",
             "--quiet", "--dest", download],
            check=True,
        )
        (sdist,) = Path(download).glob("transformers-*.tar.gz")
        with tarfile.open(sdist) as archive:
            for name in FILES:
                member = archive.getmember(f"transformers-{version}/tests/{name}")
                (FOLDER / name).write_bytes(archive.extractfile(member).read())
    STAMP.write_text(version + "\n")


if __name__ == "__main__":
    installed = transformers.__version__
    if not STAMP.is_file() or STAMP.read_text().strip() != installed or not all((FOLDER / n).is_file() for n in FILES):
        fetch(installed)
    STAMP.touch()  # newer than the install, for make
    print(f"transformers {installed} shared tests in {FOLDER}")
