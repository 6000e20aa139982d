"""Shipped detectors: the Dectris EIGER 4M and EIGER2 X 4M (module gaps as bad regions), the source paper's single
panel, a tiny test detector, and a single-panel detector from NXmx metadata."""

from __future__ import annotations

import numpy as np

from .model import Geometry
from .parts import BadRegion, GeometryError, Panel

#: Eiger 4M pixel pitch (75 um) as CrystFEL's ``res`` in pixels per metre.
EIGER_RES_PX_PER_M = 1.0 / 75e-6

#: Module gaps of the Dectris Eiger 4M (2070 x 2167 pixels): inclusive pixel ranges that record nothing.
EIGER4M_SHAPE_SS_FS = (2167, 2070)
EIGER4M_GAPS_FS = ((1030, 1039),)
EIGER4M_GAPS_SS = ((514, 550), (1065, 1101), (1616, 1652))

#: Dectris EIGER2 X 4M (2068 x 2162 pixels of 75 um): 2 x 4 modules of 1028 x 512 pixels, gaps of 12 pixels
#: along fs and 38 along ss (2 * 1028 + 12 = 2068, 4 * 512 + 3 * 38 = 2162; DECTRIS EIGER2 X specifications).
EIGER2_4M_SHAPE_SS_FS = (2162, 2068)
EIGER2_4M_GAPS_FS = ((1028, 1039),)
EIGER2_4M_GAPS_SS = ((512, 549), (1062, 1099), (1612, 1649))

#: Beam position of the source paper's simulations (raw pixel corner coordinates: corner_x = -1034, -1531).
SOURCE_BEAM_CORNER_PX = (1034.0, 1531.0)


def _single_panel(n_fs: int, n_ss: int, beam_fs: float, beam_ss: float, res: float, clen_m: float,
                  data: str = "/entry/data/data") -> Panel:
    return Panel(name="panel0", min_fs=0, max_fs=n_fs - 1, min_ss=0, max_ss=n_ss - 1,
                 corner_x=-beam_fs, corner_y=-beam_ss, res=res, clen_m=clen_m, adu_per_photon=1.0, data=data)


def _gap_regions(panel: Panel, gaps_fs, gaps_ss) -> list[BadRegion]:
    """Full-height (fs) and full-width (ss) strips of ``panel`` that record nothing; ranges are inclusive."""
    regions = [BadRegion(name=f"bad_gap_fs{i}", min_fs=a, max_fs=b, min_ss=panel.min_ss, max_ss=panel.max_ss,
                         panel=panel.name) for i, (a, b) in enumerate(gaps_fs)]
    regions += [BadRegion(name=f"bad_gap_ss{i}", min_fs=panel.min_fs, max_fs=panel.max_fs, min_ss=a, max_ss=b,
                          panel=panel.name) for i, (a, b) in enumerate(gaps_ss)]
    return regions


def eiger4m_geometry(clen_m: float = 0.15, beam_corner_px: tuple[float, float] = SOURCE_BEAM_CORNER_PX,
                     photon_energy_ev: float | None = None, bandwidth: float | None = None) -> Geometry:
    """The Dectris Eiger 4M: 2070 x 2167 pixels of 75 um, module gaps masked as bad regions.

    Dectris writes the 8 modules (2 columns x 4 rows) into one array with the inter-module gaps as pixels that
    record nothing (fs 1030-1039; ss 514-550, 1065-1101, 1616-1652), so one panel with bad regions describes
    the real pixel positions. The beam defaults to the source paper's position (corner at fs 1034, ss 1531).
    """
    panel = _single_panel(EIGER4M_SHAPE_SS_FS[1], EIGER4M_SHAPE_SS_FS[0], *beam_corner_px,
                          EIGER_RES_PX_PER_M, clen_m)
    return Geometry(panels=[panel], bad_regions=_gap_regions(panel, EIGER4M_GAPS_FS, EIGER4M_GAPS_SS),
                    photon_energy_ev=photon_energy_ev, bandwidth=bandwidth,
                    comment="Dectris Eiger 4M, 75 um pixels, module gaps masked (written by cxlspeaks)")


def eiger2_4m_geometry(clen_m: float = 0.15, beam_corner_px: tuple[float, float] = (1034.0, 1081.0),
                       photon_energy_ev: float | None = None, bandwidth: float | None = None) -> Geometry:
    """The Dectris EIGER2 X 4M: 2068 x 2162 pixels of 75 um, module gaps masked as bad regions.

    8 modules of 1028 x 512 pixels (2 columns x 4 rows) in one array, the gaps (fs 1028-1039; ss 512-549,
    1062-1099, 1612-1649) record nothing. The beam defaults to the array centre (corner at fs 1034, ss 1081).
    """
    panel = _single_panel(EIGER2_4M_SHAPE_SS_FS[1], EIGER2_4M_SHAPE_SS_FS[0], *beam_corner_px,
                          EIGER_RES_PX_PER_M, clen_m)
    return Geometry(panels=[panel], bad_regions=_gap_regions(panel, EIGER2_4M_GAPS_FS, EIGER2_4M_GAPS_SS),
                    photon_energy_ev=photon_energy_ev, bandwidth=bandwidth,
                    comment="Dectris EIGER2 X 4M, 75 um pixels, 2 x 4 modules of 1028 x 512, gaps masked "
                            "(written by cxlspeaks)")


def nxmx_geometry(shape_ss_fs: tuple[int, int], beam_center_px: tuple[float, float], pixel_size_m: float,
                  distance_m: float, gap_pixels: np.ndarray | None = None, data: str = "/entry/data/data",
                  photon_energy_ev: float | None = None, comment: str = "") -> Geometry:
    """A single-panel detector from NXmx metadata (DECTRIS master files).

    Args:
        shape_ss_fs: (ss, fs) pixels of one image.
        beam_center_px: (beam_center_x, beam_center_y) in pixels, NXmx: where the direct beam meets the detector,
            measured from the first pixel's corner along fs (x) and ss (y); the pixel whose centre is at zero
            scattering angle is (fs, ss) = (beam_center_x - 0.5, beam_center_y - 0.5) in the raw convention.
        pixel_size_m: x_pixel_size (square pixels assumed; the y size is checked by the caller).
        distance_m: detector_distance, sample to the beam centre on the detector.
        gap_pixels: optional bool (ss, fs), True for module-gap pixels (pixel mask bit 0); whole gap columns and
            rows become bad regions, as in the shipped Eiger geometries.
    Fast scan runs along +x and slow scan along +y, as in the shipped Eiger geometries (NXmx module
    transformations are not read).
    """
    if not pixel_size_m > 0:
        raise GeometryError(f"pixel size must be positive, got {pixel_size_m} m")
    panel = _single_panel(shape_ss_fs[1], shape_ss_fs[0], beam_center_px[0], beam_center_px[1],
                          1.0 / pixel_size_m, distance_m, data=data)
    regions: list[BadRegion] = []
    if gap_pixels is not None and gap_pixels.any():
        regions = _gap_regions(panel, _runs(np.flatnonzero(gap_pixels.all(axis=0))),
                               _runs(np.flatnonzero(gap_pixels.all(axis=1))))
    return Geometry(panels=[panel], bad_regions=regions, photon_energy_ev=photon_energy_ev, comment=comment)


def _runs(indices: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Inclusive (first, last) ranges of consecutive integers."""
    if len(indices) == 0:
        return ()
    breaks = np.flatnonzero(np.diff(indices) > 1)
    starts = np.r_[indices[0], indices[breaks + 1]]
    ends = np.r_[indices[breaks], indices[-1]]
    return tuple((int(a), int(b)) for a, b in zip(starts, ends))


def source_single_panel_geometry(clen_m: float = 0.15, photon_energy_ev: float | None = None,
                                 bandwidth: float | None = None) -> Geometry:
    """The single 2069 x 2163 panel without gaps that the source paper's simulations used (beam at 1034, 1531)."""
    panel = _single_panel(2069, 2163, *SOURCE_BEAM_CORNER_PX, EIGER_RES_PX_PER_M, clen_m)
    return Geometry(panels=[panel], photon_energy_ev=photon_energy_ev, bandwidth=bandwidth,
                    comment="Single-panel Eiger 4M layout of the CXLS source simulations (written by cxlspeaks)")


def tiny_geometry(n_fs: int = 128, n_ss: int = 128, pixel_size_m: float = 1.2e-3, clen_m: float = 0.15,
                  gap_width_px: int = 2, photon_energy_ev: float | None = None,
                  bandwidth: float | None = None) -> Geometry:
    """A small detector for tests: an Eiger-like panel binned to big pixels (default 128 x 128 of 1.2 mm).

    It covers about the same scattering angles as the full Eiger 4M at the same camera length, with the beam
    at the centre and one horizontal and one vertical gap of ``gap_width_px`` pixels masked (none if 0).
    """
    panel = _single_panel(n_fs, n_ss, n_fs / 2, n_ss / 2 + n_ss / 8, 1.0 / pixel_size_m, clen_m)
    gaps_fs = ((n_fs // 2 + n_fs // 4, n_fs // 2 + n_fs // 4 + gap_width_px - 1),) if gap_width_px else ()
    gaps_ss = ((n_ss // 4, n_ss // 4 + gap_width_px - 1),) if gap_width_px else ()
    return Geometry(panels=[panel], bad_regions=_gap_regions(panel, gaps_fs, gaps_ss),
                    photon_energy_ev=photon_energy_ev, bandwidth=bandwidth,
                    comment=f"Tiny {n_fs} x {n_ss} test detector, {pixel_size_m * 1e3:g} mm pixels (cxlspeaks)")


def shipped_geometry(name: str, clen_m: float = 0.15) -> Geometry:
    """A shipped detector by name: ``eiger4m``, ``eiger2_4m``, ``source_single_panel`` or ``tiny``."""
    factories = {"eiger4m": eiger4m_geometry, "eiger2_4m": eiger2_4m_geometry,
                 "source_single_panel": source_single_panel_geometry, "tiny": tiny_geometry}
    if name not in factories:
        raise GeometryError(f"unknown detector {name!r}; choose one of {', '.join(factories)}")
    return factories[name](clen_m=clen_m)
