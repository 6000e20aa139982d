"""Shared fixtures: a tiny detector, the synthetic 1IC6-cell crystal, and the optional ../shared reference files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxlspeaks.crystal import load_crystal
from cxlspeaks.geometry import tiny_geometry

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_file(*parts: str) -> Path:
    """A file under ../shared, or skip the test when it is absent (the project must work without it)."""
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"reference file {path} is absent")
    return path


@pytest.fixture(scope="session")
def tiny():
    """128 x 128 pixels of 1.2 mm at 0.15 m, beam near the centre, one gap each way."""
    return tiny_geometry()


@pytest.fixture(scope="session")
def synthetic_crystal(tiny):
    """Random-atom structure in the 1IC6 cell and space group, |F|^2 to the tiny detector's corner at 6 keV."""
    return load_crystal(None, d_min_A=tiny.d_min_A(6000.0, 0.01))


def copy_checkout(destination: Path) -> Path:
    """The repository's files (tracked and new, not ignored) copied to ``destination``, as a user's fresh clone:
    no results/, no .snakemake/, no installed egg-info. Symbolic links (the ``slurm`` profile link) stay links."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        else:
            shutil.copy2(source, target)
    return destination


#: The README's tiny run, exactly as a user types it from the repository root.
TINY_RUN_COMMAND = "snakemake --cores 2 --configfile config/test.yaml"


@pytest.fixture(scope="session")
def tiny_run_checkout(tmp_path_factory):
    """A fresh copy of the repository in which the README's tiny-run command ran, verbatim, from its root.

    Shared by the workflow tests (its results) and the README tests (the command works as typed)."""
    import subprocess

    root = copy_checkout(tmp_path_factory.mktemp("checkout"))
    result = subprocess.run(["bash", "-c", TINY_RUN_COMMAND], cwd=root, capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise AssertionError(f"`{TINY_RUN_COMMAND}` failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return root
