"""CrystFEL detector geometry: the detector model with per-pixel physics (:mod:`.model`, :mod:`.parts`), geometry
files in full (:mod:`.text`), data layouts and mask arrays (:mod:`.masks`) and the shipped detectors
(:mod:`.shipped`). Everything is importable from ``cxlspeaks.geometry``."""

from .model import Geometry, polarisation_factor
from .parts import (ENERGY_UNITS, LENGTH_UNITS, WAVELENGTH_UNITS, BadRegion, GeometryError, MaskSpec, Panel,
                    ValueRef)
from .model import MAX_CLEN_M
from .shipped import (EIGER2_4M_GAPS_FS, EIGER2_4M_GAPS_SS, EIGER2_4M_SHAPE_SS_FS, EIGER4M_GAPS_FS,
                      EIGER4M_GAPS_SS, EIGER4M_SHAPE_SS_FS, EIGER_RES_PX_PER_M, SOURCE_BEAM_CORNER_PX,
                      eiger2_4m_geometry, eiger4m_geometry, nxmx_geometry, shipped_geometry,
                      source_single_panel_geometry, tiny_geometry)
from .text import parse_geometry, read_geometry

__all__ = [
    "BadRegion", "EIGER2_4M_GAPS_FS", "EIGER2_4M_GAPS_SS", "EIGER2_4M_SHAPE_SS_FS", "EIGER4M_GAPS_FS",
    "EIGER4M_GAPS_SS", "EIGER4M_SHAPE_SS_FS", "EIGER_RES_PX_PER_M", "ENERGY_UNITS", "Geometry", "GeometryError",
    "LENGTH_UNITS", "MAX_CLEN_M", "MaskSpec", "Panel", "SOURCE_BEAM_CORNER_PX", "ValueRef", "WAVELENGTH_UNITS",
    "eiger2_4m_geometry", "eiger4m_geometry", "nxmx_geometry", "parse_geometry", "polarisation_factor",
    "read_geometry", "shipped_geometry", "source_single_panel_geometry", "tiny_geometry",
]
