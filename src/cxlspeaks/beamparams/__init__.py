"""Photon energy and camera length from the frames: water-ring fits, a learned regressor, a known-cell peak
refinement, and the oracle bound they are measured against."""
