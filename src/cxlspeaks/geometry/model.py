"""The detector model: panels, bad regions, masks and per-frame value references, with per-pixel physics maps.

Conventions (CrystFEL, see ``man crystfel_geometry``): lab frame with +z along the beam and +y up; the crystal
sits at the origin. A panel's pixels are addressed by fast-scan (fs) and slow-scan (ss) indices. ``corner_x`` and
``corner_y`` give the position, in pixels, of the panel's first pixel *corner* relative to the beam, ``res`` is
pixels per metre and ``clen + coffset`` the distance of the panel plane along z, in metres. Pixel (fs, ss) spans
[fs, fs + 1) x [ss, ss + 1) in continuous panel coordinates, so its centre is at

    r = ((corner_x + (fs - min_fs + 0.5) fs_x + (ss - min_ss + 0.5) ss_x) / res,
         (corner_y + (fs - min_fs + 0.5) fs_y + (ss - min_ss + 0.5) ss_y) / res,
         clen + coffset + ((fs - min_fs + 0.5) fs_z + (ss - min_ss + 0.5) ss_z) / res).

Positions this package returns for spots and peaks use the *raw* convention of CXI peak lists (Cheetah, OnDA):
the centre of pixel ``i`` is at the number ``i``; CrystFEL adds 0.5 when it reads such lists.

Every panel lives in one 2-D (ss, fs) *slab*, the image shape is (max ss + 1, max fs + 1) over the panels. Data
laid out as ``dim0 = %, dim1 = ss, dim2 = fs`` (Eiger stacks, Cheetah CXI slabs) is that slab; multi-module
arrays (``dim1 = 0``, ``dim1 = 1`` ... module placeholders, e.g. ``[N, module, ss, fs]``) are stacked along ss
in the slab, module k at rows ``k * (max data ss + 1)`` (``Panel.slab_offset_ss``; sources assemble the slab
with :func:`cxlspeaks.geometry.masks.to_slab`).

Values a geometry may take from the data files per frame (``clen = /LCLS/detector_1/EncoderValue``,
``photon_energy = /LCLS/photon_energy_eV``, ``coffset = /path``) are held as :class:`ValueRef` references
(``Geometry.clen_path``, ``Geometry.photon_energy_path``); a geometry holding one is *unresolved* (camera length
NaN) until a source calls :meth:`Geometry.resolve` with the frame's values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..constants import wavelength_m
from .parts import BadRegion, GeometryError, Panel, ValueRef
from .writer import geometry_text


#: Camera lengths above this many metres are refused (a number without unit is metres: ``clen = 150``).
MAX_CLEN_M = 10.0


@dataclass
class Geometry:
    """A detector: panels, bad regions, rigid groups and the beam values a CrystFEL geometry file may carry.

    ``photon_energy_ref`` holds a per-frame photon energy (or wavelength) location; ``rigid_groups``,
    ``rigid_group_collections`` and ``groups`` (CrystFEL 0.11 ``group_``) map a name to its members, written back
    as read. ``source_path`` is the geometry file read (relative mask files are looked up beside it).
    """

    panels: list[Panel]
    bad_regions: list[BadRegion] = field(default_factory=list)
    photon_energy_ev: float | None = None
    bandwidth: float | None = None
    header: dict[str, str] = field(default_factory=dict)
    comment: str = ""
    photon_energy_ref: ValueRef | None = None
    rigid_groups: dict[str, list[str]] = field(default_factory=dict)
    rigid_group_collections: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    source_path: str | None = None

    def __post_init__(self) -> None:
        if not self.panels:
            raise GeometryError("geometry has no panels")
        for p in self.panels:
            if p.max_fs < p.min_fs or p.max_ss < p.min_ss:
                raise GeometryError(f"panel {p.name}: max_fs/max_ss below min_fs/min_ss")
            if not p.res > 0:
                raise GeometryError(f"panel {p.name}: res must be positive, got {p.res}")
            if p.clen_ref is None and p.coffset_ref is None:
                if not p.distance_m > 0:
                    raise GeometryError(f"panel {p.name}: clen + coffset must be positive, got {p.distance_m} m")
                if p.clen_m > MAX_CLEN_M:
                    raise GeometryError(f"panel {p.name}: clen = {p.clen_m:g} m is implausible (> {MAX_CLEN_M:g} m);"
                                        f" a number without unit is metres: write 'clen = {p.clen_m:g} mm' for mm")

    # ------------------------------------------------------------------ per-frame values
    @property
    def clen_path(self) -> str | None:
        """HDF5 path of the per-frame camera length (``clen = /path``), None for a literal clen."""
        refs = [p.clen_ref for p in self.panels if p.clen_ref is not None]
        return refs[0].path if refs else None

    @property
    def photon_energy_path(self) -> str | None:
        """HDF5 path of the per-frame photon energy or wavelength, None when literal or absent."""
        return self.photon_energy_ref.path if self.photon_energy_ref else None

    @property
    def references(self) -> list[ValueRef]:
        """Every value the data file must supply per frame (unique)."""
        refs = [r for p in self.panels for r in (p.clen_ref, p.coffset_ref) if r is not None]
        if self.photon_energy_ref is not None:
            refs.append(self.photon_energy_ref)
        return list(dict.fromkeys(refs))

    @property
    def is_resolved(self) -> bool:
        return not self.references

    def resolve(self, values: dict[ValueRef, float]) -> "Geometry":
        """A copy with the referenced values (SI: m, eV, from :meth:`ValueRef.to_si`) filled in.

        Raises GeometryError (one line) when a reference has no value or the value is implausible.
        """
        missing = [r.text() for r in self.references if r not in values]
        if missing:
            raise GeometryError(f"no value for {', '.join(missing)}")
        panels = []
        for p in self.panels:
            changes: dict = {"clen_ref": None, "coffset_ref": None}
            if p.clen_ref is not None:
                changes["clen_m"] = float(values[p.clen_ref])
            if p.coffset_ref is not None:
                changes["coffset_m"] = float(values[p.coffset_ref])
            panels.append(dataclasses.replace(p, **changes))
        energy = self.photon_energy_ev
        if self.photon_energy_ref is not None:
            energy = float(values[self.photon_energy_ref])
            if not energy > 0:
                raise GeometryError(f"{self.photon_energy_ref.path}: photon energy must be positive, got {energy} eV")
        return dataclasses.replace(self, panels=panels, photon_energy_ev=energy, photon_energy_ref=None)

    # ------------------------------------------------------------------ shape and masks
    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (ss, fs) of the 2-D slab holding every panel."""
        return (max(p.max_ss for p in self.panels) + 1, max(p.max_fs for p in self.panels) + 1)

    @property
    def has_modules(self) -> bool:
        """True when the data is a multi-module array (numeric ``dimN`` placeholders)."""
        return any(p.module_index for p in self.panels)

    @property
    def clen_m(self) -> float:
        """Camera length of the first panel (all shipped geometries have one clen); NaN while unresolved."""
        return self.panels[0].clen_m

    def with_clen(self, clen_m: float) -> "Geometry":
        """A copy with every panel's camera length set to ``clen_m`` (a per-frame clen reference dropped)."""
        return self.replace_panels(clen_m=clen_m, clen_ref=None)

    def with_beam(self, photon_energy_ev: float | None, bandwidth: float | None) -> "Geometry":
        """A copy carrying the photon energy and bandwidth (CrystFEL 0.10 reads them from the file)."""
        return dataclasses.replace(self, photon_energy_ev=photon_energy_ev, bandwidth=bandwidth,
                                   photon_energy_ref=None, panels=[dataclasses.replace(p) for p in self.panels])

    def replace_panels(self, **changes) -> "Geometry":
        return dataclasses.replace(self, panels=[dataclasses.replace(p, **changes) for p in self.panels])

    @cached_property
    def mask(self) -> np.ndarray:
        """Boolean (ss, fs) image: True where a pixel belongs to a panel that is not ``no_index``, lies at least
        ``mask_edge_pixels`` from its panel's edge and belongs to no bad region. Mask arrays and value flags are
        per source and frame (:mod:`cxlspeaks.geometry.masks`)."""
        good = np.zeros(self.shape, dtype=bool)
        for p in self.panels:
            if p.no_index:
                continue
            e = p.mask_edge_pixels
            if 2 * e < p.n_ss and 2 * e < p.n_fs:
                good[p.min_ss + e:p.max_ss + 1 - e, p.min_fs + e:p.max_fs + 1 - e] = True
        pos = None
        for region in self.bad_regions:
            if region.in_pixels:
                panels = [p for p in self.panels if region.panel in (None, p.name)]
                for p in panels:
                    # bad-region ss ranges are data rows of the panel's module
                    off = p.slab_offset_ss
                    fs0 = max(p.min_fs, region.min_fs if region.min_fs is not None else p.min_fs)
                    fs1 = min(p.max_fs, region.max_fs if region.max_fs is not None else p.max_fs)
                    ss0 = max(p.min_ss, region.min_ss + off if region.min_ss is not None else p.min_ss)
                    ss1 = min(p.max_ss, region.max_ss + off if region.max_ss is not None else p.max_ss)
                    if fs0 <= fs1 and ss0 <= ss1:
                        good[ss0:ss1 + 1, fs0:fs1 + 1] = False
            else:
                if pos is None:
                    pos = self._xy_pixels()
                x_px, y_px = pos
                good &= ~((x_px >= region.min_x) & (x_px <= region.max_x)
                          & (y_px >= region.min_y) & (y_px <= region.max_y))
        good.flags.writeable = False
        return good

    def _xy_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Lab x, y of every pixel centre in pixels of its panel (independent of clen, so usable unresolved)."""
        x = np.full(self.shape, np.nan)
        y = np.full(self.shape, np.nan)
        for p in self.panels:
            u = np.arange(p.n_fs) + 0.5
            v = np.arange(p.n_ss) + 0.5
            rows, cols = slice(p.min_ss, p.max_ss + 1), slice(p.min_fs, p.max_fs + 1)
            x[rows, cols] = p.corner_x + u[None, :] * p.fs_vec[0] + v[:, None] * p.ss_vec[0]
            y[rows, cols] = p.corner_y + u[None, :] * p.fs_vec[1] + v[:, None] * p.ss_vec[1]
        return x, y

    # ------------------------------------------------------------------ per-pixel physics
    @cached_property
    def pixel_positions_m(self) -> np.ndarray:
        """Lab position (m) of every pixel centre, shape (ss, fs, 3); NaN outside every panel."""
        pos = np.full(self.shape + (3,), np.nan)
        for p in self.panels:
            u = np.arange(p.n_fs) + 0.5
            v = np.arange(p.n_ss) + 0.5
            pos[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = (
                p.corner_m() + u[None, :, None] * p.fs_m() + v[:, None, None] * p.ss_m())
        pos.flags.writeable = False
        return pos

    @cached_property
    def pixel_normals(self) -> np.ndarray:
        """Unit normal of the panel surface at every pixel, shape (ss, fs, 3), pointing away from the sample."""
        normals = np.full(self.shape + (3,), np.nan)
        for p in self.panels:
            n = np.cross(p.fs_vec, p.ss_vec)
            n = n / np.linalg.norm(n)
            if np.dot(n, p.corner_m()) < 0:
                n = -n
            normals[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = n
        return normals

    @cached_property
    def solid_angles_sr(self) -> np.ndarray:
        """Solid angle (sr) of every pixel seen from the crystal: dOmega = A cos(alpha) / R^2.

        A is the pixel area |fs x ss| / res^2 and alpha the angle between the ray and the panel normal
        (flat-pixel approximation, exact to O((pixel / R)^2)). Zero outside panels.
        """
        area = np.zeros(self.shape)
        for p in self.panels:
            area[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = np.linalg.norm(np.cross(p.fs_m(), p.ss_m()))
        pos = self.pixel_positions_m
        r2 = np.einsum("...i,...i->...", pos, pos)
        cos_alpha = np.abs(np.einsum("...i,...i->...", pos, self.pixel_normals)) / np.sqrt(r2)
        omega = np.nan_to_num(area * cos_alpha / r2)
        omega.flags.writeable = False
        return omega

    @cached_property
    def two_theta_rad(self) -> np.ndarray:
        """Scattering angle 2 theta (rad) of every pixel centre (angle between the ray and +z)."""
        pos = self.pixel_positions_m
        return np.arctan2(np.hypot(pos[..., 0], pos[..., 1]), pos[..., 2])

    def polarisation_factors(self, polarisation_fraction: float = 1.0) -> np.ndarray:
        """Polarisation factor P of every pixel for a beam polarised along x by ``polarisation_fraction``.

        P = f (1 - s_x^2) + (1 - f) (1 - s_y^2), with s the unit vector to the pixel (Thomson scattering;
        f = 1 is reborn's default of a beam polarised along x, f = 0.5 an unpolarised beam).
        """
        if not 0.0 <= polarisation_fraction <= 1.0:
            raise GeometryError(f"polarisation_fraction must be in [0, 1], got {polarisation_fraction}")
        return polarisation_factor(self.pixel_positions_m, polarisation_fraction)

    def q_per_A(self, photon_energy_ev: float) -> np.ndarray:
        """Momentum transfer q = 4 pi sin(theta) / lambda (1/angstrom) of every pixel centre."""
        lam_A = wavelength_m(photon_energy_ev) * 1e10
        return 4 * np.pi * np.sin(self.two_theta_rad / 2) / lam_A

    def max_two_theta_rad(self) -> float:
        """Largest scattering angle reached by any panel corner (rad)."""
        best = 0.0
        for p in self.panels:
            for u in (0, p.n_fs):
                for v in (0, p.n_ss):
                    r = p.corner_m() + u * p.fs_m() + v * p.ss_m()
                    best = max(best, math.atan2(math.hypot(r[0], r[1]), r[2]))
        return best

    def d_min_A(self, photon_energy_ev: float, bandwidth: float = 0.0) -> float:
        """Finest d spacing (angstrom) the detector corner reaches over the band: lambda_min / (2 sin theta_max)."""
        lam_min_A = wavelength_m(photon_energy_ev) * 1e10 * (1 - bandwidth)
        return lam_min_A / (2 * math.sin(self.max_two_theta_rad() / 2))

    # ------------------------------------------------------------------ rays
    def ray_to_pixel(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where rays from the crystal along ``directions`` (N, 3) meet the panels.

        Solves t d = corner + u fs + v ss for (t, u, v) per panel. Returns (fs, ss, panel_index) in the raw
        convention (pixel centre at the integer index); rays that meet no panel get NaN and panel index -1.
        """
        d = np.atleast_2d(np.asarray(directions, dtype=float))
        fs = np.full(len(d), np.nan)
        ss = np.full(len(d), np.nan)
        panel_index = np.full(len(d), -1)
        for i, p in enumerate(self.panels):
            m = np.empty((len(d), 3, 3))
            m[:, :, 0] = d
            m[:, :, 1] = -p.fs_m()
            m[:, :, 2] = -p.ss_m()
            det = np.linalg.det(m)
            ok = np.abs(det) > 1e-30
            sol = np.full((len(d), 3), np.nan)
            if ok.any():
                sol[ok] = np.linalg.solve(m[ok], np.broadcast_to(p.corner_m(), (ok.sum(), 3))[..., None])[..., 0]
            t, u, v = sol.T
            hit = ok & (t > 0) & (u >= 0) & (u < p.n_fs) & (v >= 0) & (v < p.n_ss) & (panel_index < 0)
            fs[hit] = p.min_fs + u[hit] - 0.5
            ss[hit] = p.min_ss + v[hit] - 0.5
            panel_index[hit] = i
        return fs, ss, panel_index

    # ------------------------------------------------------------------ file format
    def to_geom_text(self) -> str:
        """The geometry as a CrystFEL geometry file (every panel value written explicitly)."""
        return geometry_text(self)

    def write(self, path: str | Path) -> None:
        """Write the geometry file atomically (temporary file renamed into place)."""
        from ..io import atomic_write_text

        atomic_write_text(path, self.to_geom_text())


def polarisation_factor(vectors: np.ndarray, polarisation_fraction: float = 1.0) -> np.ndarray:
    """Thomson polarisation factor of scattering along ``vectors`` (..., 3) for a beam polarised along x."""
    s = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    f = polarisation_fraction
    return f * (1 - s[..., 0] ** 2) + (1 - f) * (1 - s[..., 1] ** 2)
