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
