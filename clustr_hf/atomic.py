"""Folders written whole or not at all: converted and published model folders, training checkpoints, saved data."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_folder(output_dir, *, merge: bool = False, sync: bool = False, staging=None) -> Iterator[Path]:
    """A folder beside `output_dir` to write into, moved into place only when the block ends without an error; on an
    error it is deleted and `output_dir` stays as it was. So a failure midway (a full disk, an interrupt) never leaves
    a half-written folder, or new files beside old ones.

    `output_dir` must be absent or empty (FileExistsError otherwise), unless `merge`: then the written files and
    folders replace those of the same names in it, and its others are kept. `sync` flushes the written files and the
    move to disk, so that they survive a crash. `staging` names the folder to write into, beside `output_dir` (a name
    other processes know, to write into too; a leftover of a stopped write is removed first); by default a new one.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} is a file; the output must be a folder (new or existing).")
    if not merge and output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; give a new or empty folder (nothing is overwritten).")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    if staging is None:
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    else:
        staging = Path(staging)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    try:
        yield staging
        if sync:
            for path in [*staging.rglob("*"), staging]:
                fsync(path)
        if output_dir.exists() and not merge:
            output_dir.rmdir()  # empty, checked above
        if not output_dir.exists():
            os.rename(staging, output_dir)
        else:
            for path in sorted(staging.iterdir()):  # renames only: nothing left to write that could fail for space
                if path.is_dir() and (output_dir / path.name).is_dir():
                    shutil.rmtree(output_dir / path.name)
                os.replace(path, output_dir / path.name)
        if sync:
            fsync(output_dir)  # the renames themselves
            fsync(output_dir.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
