"""CrystFEL detector geometry: parse and write ``.geom`` files, and per-pixel physics maps.

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

All panels are assumed to lie in one 2-D array (``dim0 = %``, ``dim1 = ss``, ``dim2 = fs``), as in Eiger HDF5
stacks; the image shape is (max ss + 1, max fs + 1) over the panels.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .constants import wavelength_m

#: Eiger 4M pixel pitch (75 um) as CrystFEL's ``res`` in pixels per metre.
EIGER_RES_PX_PER_M = 1.0 / 75e-6

#: Module gaps of the Dectris Eiger 4M (2070 x 2167 pixels): inclusive pixel ranges that record nothing.
EIGER4M_SHAPE_SS_FS = (2167, 2070)
EIGER4M_GAPS_FS = ((1030, 1039),)
EIGER4M_GAPS_SS = ((514, 550), (1065, 1101), (1616, 1652))

#: Beam position of the source paper's simulations (raw pixel corner coordinates: corner_x = -1034, -1531).
SOURCE_BEAM_CORNER_PX = (1034.0, 1531.0)

_PANEL_INT_KEYS = ("min_fs", "max_fs", "min_ss", "max_ss")
_VECTOR_RE = re.compile(r"([+-]?\s*[0-9.eE+-]*)\s*([xyz])")


class GeometryError(ValueError):
    """A geometry file or geometry parameter that cannot describe a detector."""


@dataclass
class Panel:
    """One rectangular detector panel (CrystFEL semantics; lengths in pixels unless named)."""

    name: str
    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int
    corner_x: float
    corner_y: float
    res: float
    clen_m: float
    fs_vec: tuple[float, float, float] = (1.0, 0.0, 0.0)
    ss_vec: tuple[float, float, float] = (0.0, 1.0, 0.0)
    coffset_m: float = 0.0
    adu_per_photon: float | None = None
    data: str | None = None
    dims: tuple[str, ...] = ("%", "ss", "fs")
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def n_fs(self) -> int:
        return self.max_fs - self.min_fs + 1

    @property
    def n_ss(self) -> int:
        return self.max_ss - self.min_ss + 1

    @property
    def distance_m(self) -> float:
        """Distance of the panel origin plane from the crystal along z: clen + coffset."""
        return self.clen_m + self.coffset_m

    def corner_m(self) -> np.ndarray:
        """Lab position (m) of the first pixel's corner."""
        return np.array([self.corner_x / self.res, self.corner_y / self.res, self.distance_m])

    def fs_m(self) -> np.ndarray:
        """Lab displacement (m) of one pixel step along fs."""
        return np.asarray(self.fs_vec, dtype=float) / self.res

    def ss_m(self) -> np.ndarray:
        """Lab displacement (m) of one pixel step along ss."""
        return np.asarray(self.ss_vec, dtype=float) / self.res


@dataclass
class BadRegion:
    """A region that records nothing: a pixel range (optionally on one panel) or a lab x/y range in pixels."""

    name: str
    min_fs: int | None = None
    max_fs: int | None = None
    min_ss: int | None = None
    max_ss: int | None = None
    min_x: float | None = None
    max_x: float | None = None
    min_y: float | None = None
    max_y: float | None = None
    panel: str | None = None

    @property
    def in_pixels(self) -> bool:
        return self.min_x is None


@dataclass
class Geometry:
    """A detector: panels, bad regions and the beam values a CrystFEL geometry file may carry."""

    panels: list[Panel]
    bad_regions: list[BadRegion] = field(default_factory=list)
    photon_energy_ev: float | None = None
    bandwidth: float | None = None
    header: dict[str, str] = field(default_factory=dict)
    comment: str = ""

    def __post_init__(self) -> None:
        if not self.panels:
            raise GeometryError("geometry has no panels")
        for p in self.panels:
            if p.max_fs < p.min_fs or p.max_ss < p.min_ss:
                raise GeometryError(f"panel {p.name}: max_fs/max_ss below min_fs/min_ss")
            if not p.res > 0:
                raise GeometryError(f"panel {p.name}: res must be positive, got {p.res}")
            if not p.distance_m > 0:
                raise GeometryError(f"panel {p.name}: clen + coffset must be positive, got {p.distance_m} m")

    # ------------------------------------------------------------------ shape and masks
    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (ss, fs) of the 2-D array holding every panel."""
        return (max(p.max_ss for p in self.panels) + 1, max(p.max_fs for p in self.panels) + 1)

    @property
    def clen_m(self) -> float:
        """Camera length of the first panel (all shipped geometries have one clen)."""
        return self.panels[0].clen_m

    def with_clen(self, clen_m: float) -> "Geometry":
        """A copy with every panel's camera length set to ``clen_m``."""
        return self.replace_panels(clen_m=clen_m)

    def with_beam(self, photon_energy_ev: float | None, bandwidth: float | None) -> "Geometry":
        """A copy carrying the photon energy and bandwidth (CrystFEL 0.10 reads them from the file)."""
        return dataclasses.replace(self, photon_energy_ev=photon_energy_ev, bandwidth=bandwidth,
                                   panels=[dataclasses.replace(p) for p in self.panels])

    def replace_panels(self, **changes) -> "Geometry":
        return dataclasses.replace(self, panels=[dataclasses.replace(p, **changes) for p in self.panels])

    @cached_property
    def mask(self) -> np.ndarray:
        """Boolean (ss, fs) image: True where a pixel belongs to a panel and to no bad region."""
        good = np.zeros(self.shape, dtype=bool)
        for p in self.panels:
            good[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = True
        pos = None
        for region in self.bad_regions:
            if region.in_pixels:
                panels = [p for p in self.panels if region.panel in (None, p.name)]
                for p in panels:
                    fs0 = max(p.min_fs, region.min_fs if region.min_fs is not None else p.min_fs)
                    fs1 = min(p.max_fs, region.max_fs if region.max_fs is not None else p.max_fs)
                    ss0 = max(p.min_ss, region.min_ss if region.min_ss is not None else p.min_ss)
                    ss1 = min(p.max_ss, region.max_ss if region.max_ss is not None else p.max_ss)
                    if fs0 <= fs1 and ss0 <= ss1:
                        good[ss0:ss1 + 1, fs0:fs1 + 1] = False
            else:
                if pos is None:
                    pos = self.pixel_positions_m
                res = self.panels[0].res
                x_px, y_px = pos[..., 0] * res, pos[..., 1] * res
                good &= ~((x_px >= region.min_x) & (x_px <= region.max_x)
                          & (y_px >= region.min_y) & (y_px <= region.max_y))
        good.flags.writeable = False
        return good

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
        lines = [f"; {line}" if line else ";" for line in self.comment.splitlines()]
        if self.photon_energy_ev is not None:
            lines.append(f"photon_energy = {_fmt(self.photon_energy_ev)}")
        if self.bandwidth is not None:
            lines.append(f"bandwidth = {_fmt(self.bandwidth)}")
        lines += [f"{k} = {v}" for k, v in self.header.items()]
        for p in self.panels:
            lines.append("")
            values = {
                "min_fs": p.min_fs, "max_fs": p.max_fs, "min_ss": p.min_ss, "max_ss": p.max_ss,
                "corner_x": _fmt(p.corner_x), "corner_y": _fmt(p.corner_y),
                "fs": _vector_text(p.fs_vec), "ss": _vector_text(p.ss_vec),
                "res": _fmt(p.res), "clen": _fmt(p.clen_m), "coffset": _fmt(p.coffset_m),
            }
            if p.adu_per_photon is not None:
                values["adu_per_photon"] = _fmt(p.adu_per_photon)
            if p.data is not None:
                values["data"] = p.data
            for i, dim in enumerate(p.dims):
                values[f"dim{i}"] = dim
            values.update(p.extra)
            lines += [f"{p.name}/{k} = {v}" for k, v in values.items()]
        for b in self.bad_regions:
            lines.append("")
            for k in ("min_fs", "max_fs", "min_ss", "max_ss", "min_x", "max_x", "min_y", "max_y", "panel"):
                value = getattr(b, k)
                if value is not None:
                    lines.append(f"{b.name}/{k} = {_fmt(value) if isinstance(value, float) else value}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        """Write the geometry file atomically (temporary file renamed into place)."""
        from .io import atomic_write_text

        atomic_write_text(path, self.to_geom_text())


def polarisation_factor(vectors: np.ndarray, polarisation_fraction: float = 1.0) -> np.ndarray:
    """Thomson polarisation factor of scattering along ``vectors`` (..., 3) for a beam polarised along x."""
    s = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    f = polarisation_fraction
    return f * (1 - s[..., 0] ** 2) + (1 - f) * (1 - s[..., 1] ** 2)


# ---------------------------------------------------------------------- parsing
def read_geometry(path: str | Path) -> Geometry:
    """Read a CrystFEL geometry file; errors name the file and the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GeometryError(f"{path}: cannot read geometry file ({exc.strerror})") from None
    try:
        return parse_geometry(text)
    except GeometryError as exc:
        raise GeometryError(f"{path}: {exc}") from None


def parse_geometry(text: str) -> Geometry:
    """Parse CrystFEL geometry text. Top-level values are defaults for the panels that follow them."""
    defaults: dict[str, str] = {}
    panel_values: dict[str, dict[str, str]] = {}
    bad_values: dict[str, dict[str, str]] = {}
    header: dict[str, str] = {}
    comment_lines: list[str] = []
    seen_content = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line, _, comment = raw.partition(";")
        line = line.strip()
        if not line:
            if not seen_content and raw.strip().startswith(";"):
                comment_lines.append(comment.strip())
            continue
        seen_content = True
        if "=" not in line:
            raise GeometryError(f"line {lineno}: expected 'key = value', got {line!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        if "/" in key:
            owner, sub = key.split("/", 1)
            if owner.startswith("bad"):
                bad_values.setdefault(owner, {})[sub] = value
            elif owner.startswith("rigid_group") or owner.startswith("rigid_group_collection"):
                header[key] = value
            else:
                if owner not in panel_values:
                    panel_values[owner] = dict(defaults)
                panel_values[owner][sub] = value
        else:
            defaults[key] = value
            if key not in _PANEL_KEYS:
                header[key] = value
    photon_energy = header.pop("photon_energy", None)
    bandwidth = header.pop("bandwidth", None)
    panels = [_make_panel(name, values) for name, values in panel_values.items()]
    bad_regions = [_make_bad_region(name, values) for name, values in bad_values.items()]
    return Geometry(panels=panels, bad_regions=bad_regions,
                    photon_energy_ev=_to_float("photon_energy", photon_energy) if photon_energy else None,
                    bandwidth=_to_float("bandwidth", bandwidth) if bandwidth else None,
                    header=header, comment="\n".join(comment_lines).strip())


_PANEL_KEYS = {"min_fs", "max_fs", "min_ss", "max_ss", "corner_x", "corner_y", "fs", "ss", "res", "clen",
               "coffset", "adu_per_photon", "data", "dim0", "dim1", "dim2", "dim3", "max_adu", "adu_per_eV",
               "mask", "mask_file", "mask_good", "mask_bad", "no_index", "satmap", "satmap_file"}


def _make_panel(name: str, values: dict[str, str]) -> Panel:
    def need(key: str) -> str:
        if key not in values:
            raise GeometryError(f"panel {name}: missing {key}")
        return values[key]

    ints = {k: _to_int(f"{name}/{k}", need(k)) for k in _PANEL_INT_KEYS}
    clen_text = need("clen")
    dims = []
    i = 0
    while f"dim{i}" in values:
        dims.append(values[f"dim{i}"])
        i += 1
    known = {"corner_x", "corner_y", "fs", "ss", "res", "clen", "coffset", "adu_per_photon", "data",
             *_PANEL_INT_KEYS, *(f"dim{j}" for j in range(i))}
    extra = {k: v for k, v in values.items() if k not in known and k in _PANEL_KEYS}
    return Panel(
        name=name, **ints,
        corner_x=_to_float(f"{name}/corner_x", need("corner_x")),
        corner_y=_to_float(f"{name}/corner_y", need("corner_y")),
        res=_to_float(f"{name}/res", need("res")),
        clen_m=_to_float(f"{name}/clen", clen_text),
        fs_vec=_parse_vector(f"{name}/fs", values.get("fs", "+1.0x")),
        ss_vec=_parse_vector(f"{name}/ss", values.get("ss", "+1.0y")),
        coffset_m=_to_float(f"{name}/coffset", values.get("coffset", "0")),
        adu_per_photon=_to_float(f"{name}/adu_per_photon", values["adu_per_photon"])
        if "adu_per_photon" in values else None,
        data=values.get("data"),
        dims=tuple(dims) if dims else ("%", "ss", "fs"),
        extra=extra,
    )


def _make_bad_region(name: str, values: dict[str, str]) -> BadRegion:
    kwargs: dict = {}
    for k, v in values.items():
        if k in ("min_fs", "max_fs", "min_ss", "max_ss"):
            kwargs[k] = _to_int(f"{name}/{k}", v)
        elif k in ("min_x", "max_x", "min_y", "max_y"):
            kwargs[k] = _to_float(f"{name}/{k}", v)
        elif k == "panel":
            kwargs[k] = v
        else:
            raise GeometryError(f"{name}: unknown bad-region key {k!r}")
    region = BadRegion(name=name, **kwargs)
    pixel_keys = [kwargs.get(k) for k in ("min_fs", "max_fs", "min_ss", "max_ss")]
    xy_keys = [kwargs.get(k) for k in ("min_x", "max_x", "min_y", "max_y")]
    if all(k is None for k in pixel_keys) and any(k is None for k in xy_keys):
        raise GeometryError(f"{name}: a bad region needs min/max fs/ss or all of min/max x/y")
    return region


def _to_float(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GeometryError(f"{key}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise GeometryError(f"{key}: expected a finite number, got {text!r}")
    return value


def _to_int(key: str, text: str) -> int:
    value = _to_float(key, text)
    if value != int(value):
        raise GeometryError(f"{key}: expected an integer, got {text!r}")
    return int(value)


def _parse_vector(key: str, text: str) -> tuple[float, float, float]:
    vec = {"x": 0.0, "y": 0.0, "z": 0.0}
    matches = _VECTOR_RE.findall(text.replace(" ", ""))
    if not matches or "".join(c + a for c, a in matches) != text.replace(" ", ""):
        raise GeometryError(f"{key}: cannot read vector {text!r} (expected e.g. '+1.0x -0.0y')")
    for coeff, axis in matches:
        coeff = coeff or "+1"
        if coeff in ("+", "-"):
            coeff += "1"
        vec[axis] += _to_float(key, coeff)
    if vec == {"x": 0.0, "y": 0.0, "z": 0.0}:
        raise GeometryError(f"{key}: zero vector")
    return (vec["x"], vec["y"], vec["z"])


def _vector_text(vec: tuple[float, float, float]) -> str:
    return " ".join(f"{c:+.6f}{axis}" for c, axis in zip(vec, "xyz"))


def _fmt(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{value:.1f}"


# ---------------------------------------------------------------------- shipped detectors
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
    """A shipped detector by name: ``eiger4m``, ``source_single_panel`` or ``tiny``."""
    factories = {"eiger4m": eiger4m_geometry, "source_single_panel": source_single_panel_geometry,
                 "tiny": tiny_geometry}
    if name not in factories:
        raise GeometryError(f"unknown detector {name!r}; choose one of {', '.join(factories)}")
    return factories[name](clen_m=clen_m)
