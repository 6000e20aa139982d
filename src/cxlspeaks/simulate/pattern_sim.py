"""Optional backend: simulate Bragg frames with CrystFEL's real ``pattern_sim`` (releases up to 0.10.2).

What pattern_sim computes (PHYSICS.md, "Bragg peaks" and "Driving the real tools"): for every pixel it samples
the pixel on a 4 x 4 grid of sub-pixel points (at 0, 1/4, 1/2, 3/4 of the pixel, not centred) and the spectrum at
``--sample-spectrum`` wavelengths; at each sample it evaluates the scattering vector q, the lattice transform
prod_u [sin(pi n_u u.q) / sin(pi u.q)]^2 of a crystal of n_a x n_b x n_c cells (n_u = floor(size / cell length),
so the crystal is a parallelepiped of whole cells, not a cube of ``size``), and the molecular intensity of the
*nearest* integer hkl, looked up in the reflection list over all equivalents of the point group. The average
over the samples is multiplied by (N_photons / (pi r_beam^2)) r_e^2 and the pixel's solid angle
(A cos(2 theta) / R^2). No polarisation factor is applied; Poisson noise is switched off here (``--no-noise``),
so the image is expected photons per pixel.

How it differs from the builtin engine (:mod:`cxlspeaks.simulate.bragg`): the builtin integrates each
reflection analytically (Laue integrated intensity times partiality, with a polarisation factor) and spreads it
over a Gaussian footprint (PSF and beam divergence); pattern_sim *samples* the lattice transform, so its spots
have the true shape-transform profile (fringes included) but only integrate correctly when the lattice lobe,
about lambda clen / (L pixel) pixels wide for a crystal of edge L, is wider than the 1/4-pixel sub-sampling
step and the wavelength samples are finer than the reflection's width in wavelength. For micrometre crystals on
75 um pixels its spots are randomly sampled spikes. It also models no beam divergence and no mosaicity, and its
spot centroids sit about +0.12 px high in fs and ss (the non-centred sub-pixel grid). It is slow: about 160 s
for a full Eiger 4M frame with 7 spectrum samples.

Measured against the builtin engine (CrystFEL 0.10.2, synthetic 1IC6-cell crystal, tophat 1 %, fluence, volume in
whole cells and polarisation divided out): spot centroids agree to 0.1-0.5 px with a mean bias of +0.1 px in fs
and ss; a fully excited reflection of a 1 um crystal (6 keV, 75 um pixels, 40 spectrum samples, converged) holds
0.84-0.95 (median 0.90) of the builtin's N_hkl, because the sinc^2 profile's 1/s^2 tails reach outside the band
while the builtin's Gaussian profile does not; for 0.1 um crystals, whose lobes are wider than the band, the
ratio is about 0.8. Reflections with g_z >= 0 that a small crystal's wide lobe still excites near the direct beam
appear only in pattern_sim.

Quaternion convention: pattern_sim reads one quaternion "w x y z" per image on standard input (no ``-r``) and
applies the *transpose* of its usual active rotation matrix to the crystal axes (the quaternion rotates the
frame). :meth:`cxlspeaks.crystal.Crystal.orientation_from_quaternion` follows the same convention, so a
quaternion means the same orientation for both engines; the backend returns the a*, b*, c* that pattern_sim
wrote (``/pattern_sim/astar|bstar|cstar``, 1/m, float32) as the frame's orientation.

Intensity scale: the reflection list's ``%10.2f`` column holds at most 9999999.99; larger |F|^2 are all scaled
by a power of ten (:func:`intensity_scale_for`) and the backend divides the image by the same factor, so the
returned image is expected photons for the crystal's |F|^2 in electrons^2 (up to the list's 0.01 rounding).

Versions: CrystFEL 0.10.x reads the photon energy and bandwidth from the geometry file; 0.9.x takes
``--photon-energy`` and ``--beam-bandwidth`` on the command line. For a Gaussian spectrum the beam's bandwidth
(a FWHM) is passed as CrystFEL's bandwidth, which is the Gaussian's standard deviation: FWHM / 2.3548.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import gemmi
import h5py
import numpy as np

from .. import crystfel_env
from ..constants import FWHM_PER_SIGMA
from ..crystal import Crystal
from ..geometry import Geometry
from .beam import Beam
from .bragg import BraggFrame, BraggSimulator, CrystalSample

#: Environment variable naming the pattern_sim executable (checked before PATH).
ENV_VAR = "CXLSPEAKS_PATTERN_SIM"

#: pattern_sim's intensity arrays hold indices -INDMAX..INDMAX (src/pattern_sim.h).
INDMAX = 130

#: Largest value the reflection list's ``%10.2f`` intensity column can hold.
MAX_LIST_INTENSITY = 9999999.99

#: Where the backend tells pattern_sim to write the image (the panels' ``data`` in the geometry file).
DATA_PATH = "/data/data"


class PatternSimError(RuntimeError):
    """pattern_sim is missing, failed, or wrote no usable output."""


# ---------------------------------------------------------------------- the executable
def find_pattern_sim(executable: str | None = None) -> str | None:
    """The pattern_sim executable: ``executable`` if given, else ``$CXLSPEAKS_PATTERN_SIM``, else PATH.

    ``executable`` and the environment variable may be a path or a command name. Returns an absolute path, or
    None when nothing executable is found.
    """
    candidates = [executable] if executable else [os.environ.get(ENV_VAR) or None, "pattern_sim"]
    for name in candidates:
        if not name:
            continue
        path = Path(name).expanduser()
        if os.sep in name or path.is_file():
            if path.is_file() and os.access(path, os.X_OK):
                return str(path.resolve())
            continue
        found = shutil.which(name)
        if found:
            return found
    return None


def pattern_sim_version(exe: str) -> tuple[int, ...]:
    """CrystFEL version of a pattern_sim executable, from ``pattern_sim --version`` ("CrystFEL: 0.10.2")."""
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, env=crystfel_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PatternSimError(f"cannot run {exe} --version: {exc}") from None
    text = proc.stdout + "\n" + proc.stderr
    match = re.search(r"(\d+(?:\.\d+)+)", text)
    if proc.returncode != 0 or match is None:
        raise PatternSimError(f"{exe} --version (exit {proc.returncode}) printed no version: "
                              f"{_last_line(text)!r}")
    return tuple(int(x) for x in match.group(1).split("."))


# ---------------------------------------------------------------------- cell file
def cell_file_text(crystal: Crystal) -> str:
    """The crystal's unit cell as a CrystFEL unit cell file (version 1.0)."""
    sg = crystal.spacegroup
    a, b, c, al, be, ga = crystal.cell_parameters
    system = sg.crystal_system_str()
    letter = sg.hm.strip()[0].upper()
    unique_axis = None
    if system == "trigonal":
        rhombohedral_axes = letter == "R" and not _close(ga, 120.0)
        lattice_type = "rhombohedral" if rhombohedral_axes else "hexagonal"
        centering = "R" if rhombohedral_axes else ("H" if letter == "R" else "P")
        unique_axis = None if rhombohedral_axes else "c"
    else:
        lattice_type = system
        centering = letter
        if system in ("tetragonal", "hexagonal"):
            unique_axis = "c"
        elif system == "monoclinic":
            unique_axis = _monoclinic_unique_axis(sg)
    lines = ["CrystFEL unit cell file version 1.0", "", f"lattice_type = {lattice_type}",
             f"centering = {centering}"]
    if unique_axis:
        lines.append(f"unique_axis = {unique_axis}")
    lines += [f"a = {_fmt_length(a)} A", f"b = {_fmt_length(b)} A", f"c = {_fmt_length(c)} A",
              f"al = {_fmt_angle(al)} deg", f"be = {_fmt_angle(be)} deg", f"ga = {_fmt_angle(ga)} deg"]
    return "\n".join(lines) + "\n"


def write_cell_file(crystal: Crystal, path: str | Path) -> Path:
    """Write :func:`cell_file_text` to ``path``."""
    path = Path(path)
    path.write_text(cell_file_text(crystal))
    return path


def _monoclinic_unique_axis(sg: gemmi.SpaceGroup) -> str:
    for op in sg.operations().sym_ops:
        rot = np.array(op.rot, dtype=np.int64) // op.DEN
        proper = rot * int(round(np.linalg.det(rot)))
        if np.trace(proper) == -1:                       # a two-fold axis (or the normal of a mirror)
            return "abc"[int(np.flatnonzero(np.diag(proper) == 1)[0])]
    return "b"


def _close(x: float, y: float) -> bool:
    return abs(x - y) < 1e-6


def _fmt_length(x: float) -> str:
    text = f"{x:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _fmt_angle(x: float) -> str:
    return f"{x:.2f}" if abs(x - round(x, 2)) < 1e-9 else _fmt_length(x)


# ---------------------------------------------------------------------- reflection list
def point_group_rotations(crystal: Crystal, point_group: str | None = None) -> list[np.ndarray]:
    """Integer 3 x 3 rotations R of a point group, acting on Miller indices as hkl @ R (gemmi's operations).

    The crystal's own point group uses its space group's operations (rotation parts); another point group
    (e.g. the Laue class '4/mmm') uses the first space group in gemmi's table that has it.
    """
    point_group = point_group or crystal.point_group
    if point_group == crystal.point_group:
        sg = crystal.spacegroup
    else:
        sg = next((s for s in gemmi.spacegroup_table() if s.point_group_hm() == point_group), None)
        if sg is None:
            raise ValueError(f"unknown point group {point_group!r} (use Hermann-Mauguin, e.g. '422', '4/mmm')")
    return [np.array(op.rot, dtype=np.int64) // op.DEN for op in sg.operations().sym_ops]


def asymmetric_unit(hkl: np.ndarray, rotations: list[np.ndarray]) -> np.ndarray:
    """Indices into ``hkl`` of one representative per set of symmetry equivalents under ``rotations``.

    The representative of a set is its lexicographically largest member when that is in ``hkl``, else the first
    listed member; the result is sorted by (h, k, l).
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    if len(hkl) == 0:
        return np.zeros(0, dtype=np.int64)
    images = np.stack([hkl @ r for r in rotations])                  # (n_ops, N, 3)
    span = int(np.abs(images).max()) + 1

    def code(v: np.ndarray) -> np.ndarray:                              # order-preserving integer code
        return ((v[..., 0] + span) * (2 * span + 1) + v[..., 1] + span) * (2 * span + 1) + v[..., 2] + span

    key = code(images).max(axis=0)                                      # the set's largest member
    is_key = code(hkl) == key
    order = np.lexsort((~is_key, key))                                  # key members first within a set
    _, first = np.unique(key[order], return_index=True)
    chosen = order[first]
    return chosen[np.lexsort((hkl[chosen, 2], hkl[chosen, 1], hkl[chosen, 0]))]


def intensity_scale_for(max_intensity: float) -> float:
    """The power of ten (<= 1) by which intensities are multiplied to fit ``%10.2f`` (9999999.99)."""
    scale = 1.0
    while max_intensity * scale > MAX_LIST_INTENSITY:
        scale /= 10.0
    return scale


def reflection_list_text(crystal: Crystal, point_group: str | None = None,
                         scale: float | None = None) -> tuple[str, float]:
    """A CrystFEL reflection list (version 2.0) with one reflection per set of equivalents; (text, scale).

    Intensities are |F|^2 * ``scale`` (default :func:`intensity_scale_for` of the largest one). Reflections
    beyond pattern_sim's index range (|h|, |k| or |l| > 130) are left out.
    """
    point_group = point_group or crystal.point_group
    hkl = np.asarray(crystal.hkl, dtype=np.int64)
    intensity = np.asarray(crystal.intensity, dtype=np.float64)
    inside = np.all(np.abs(hkl) <= INDMAX, axis=1)
    hkl, intensity = hkl[inside], intensity[inside]
    if scale is None:
        scale = intensity_scale_for(float(intensity.max()) if len(intensity) else 0.0)
    rows = asymmetric_unit(hkl, point_group_rotations(crystal, point_group))
    lines = ["CrystFEL reflection list version 2.0", f"Symmetry: {point_group}",
             "   h    k    l          I    phase   sigma(I)   nmeas"]
    lines += [f"{h:4d} {k:4d} {l:4d} {i:10.2f} {'-':>8s} {0.0:10.2f} {1:7d}"
              for (h, k, l), i in zip(hkl[rows].tolist(), (intensity[rows] * scale).tolist())]
    lines.append("End of reflections")
    return "\n".join(lines) + "\n", scale


def write_reflection_list(crystal: Crystal, path: str | Path, point_group: str | None = None,
                          scale: float | None = None) -> float:
    """Write :func:`reflection_list_text` to ``path``; returns the intensity scale factor used."""
    text, scale = reflection_list_text(crystal, point_group, scale)
    Path(path).write_text(text)
    return scale


# ---------------------------------------------------------------------- geometry
def geometry_for_pattern_sim(geometry: Geometry, beam: Beam, version: tuple[int, ...]) -> Geometry:
    """The geometry as pattern_sim should read it: 2-D output at /data/data in photons, beam values if >= 0.10."""
    bandwidth = crystfel_bandwidth(beam)
    if version >= (0, 10):
        geometry = geometry.with_beam(beam.photon_energy_ev, bandwidth)
    else:
        geometry = geometry.with_beam(None, None)
    return geometry.replace_panels(data=DATA_PATH, dims=("ss", "fs"), adu_per_photon=1.0, extra={})


def crystfel_bandwidth(beam: Beam) -> float:
    """CrystFEL's bandwidth: the tophat's full width, or the Gaussian's standard deviation (FWHM / 2.3548)."""
    return beam.bandwidth if beam.spectrum == "tophat" else beam.bandwidth / FWHM_PER_SIGMA


# ---------------------------------------------------------------------- the backend
class PatternSimBackend:
    """Simulate Bragg frames with CrystFEL pattern_sim, one process per frame.

    The geometry, cell and reflection list are written once into ``workdir`` (a private temporary directory,
    removed by :meth:`close` or when the backend is garbage-collected, if None). :meth:`simulate` returns a
    :class:`BraggFrame` whose image is pattern_sim's expected photons (masked pixels 0) and whose peak list is
    the builtin simulator's for the orientation pattern_sim used (so labels stay available).
    """

    def __init__(self, geometry: Geometry, crystal: Crystal, beam: Beam, sample: CrystalSample = CrystalSample(),
                 executable: str | None = None, spectrum_samples: int = 7, workdir: str | Path | None = None,
                 timeout_s: float | None = None):
        if beam.spectrum not in ("tophat", "gaussian"):
            raise ValueError(f"pattern_sim draws a tophat or a Gaussian spectrum, not {beam.spectrum!r}; "
                             "use the builtin Bragg backend for a spectrum table")
        exe = find_pattern_sim(executable)
        if exe is None:
            where = repr(executable) if executable else f"${ENV_VAR} or PATH"
            raise PatternSimError(f"pattern_sim not found ({where}); install CrystFEL <= 0.10.2 or name it")
        if int(spectrum_samples) < 1:
            raise ValueError(f"spectrum_samples must be >= 1, got {spectrum_samples}")
        self.executable = exe
        self.version = pattern_sim_version(exe)
        self.geometry = geometry
        self.crystal = crystal
        self.beam = beam
        self.sample = sample
        self.spectrum_samples = int(spectrum_samples)
        self.timeout_s = timeout_s
        self.point_group = crystal.point_group
        if workdir is None:
            self._tmp = tempfile.mkdtemp(prefix="cxlspeaks-pattern_sim-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, True)
            self.workdir = Path(self._tmp)
        else:
            self._finalizer = None
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.geom_path = self.workdir / "det.geom"
        self.cell_path = self.workdir / "crystal.cell"
        self.hkl_path = self.workdir / "crystal.hkl"
        self.output_path = self.workdir / "out.h5"
        self.geom_path.write_text(geometry_for_pattern_sim(geometry, beam, self.version).to_geom_text())
        write_cell_file(crystal, self.cell_path)
        #: Factor applied to |F|^2 in the reflection list; the image is divided by it.
        self.intensity_scale = write_reflection_list(crystal, self.hkl_path, self.point_group)
        self._builtin = BraggSimulator(geometry, crystal, beam, sample)

    # -------------------------------------------------------------- process
    def command(self) -> list[str]:
        """The pattern_sim command line (the quaternion goes to standard input)."""
        size_nm = f"{self.sample.size_m * 1e9:.6g}"
        cmd = [self.executable, "-g", str(self.geom_path), "-p", str(self.cell_path), "-i", str(self.hkl_path),
               "-y", self.point_group, "-n", "1", "-o", str(self.output_path),
               f"--nphotons={self.beam.n_photons:.9g}", f"--beam-radius={self.beam.beam_radius_m:.9g}",
               f"--min-size={size_nm}", f"--max-size={size_nm}", f"--spectrum={self.beam.spectrum}",
               f"--sample-spectrum={self.spectrum_samples}", "--no-noise"]
        if self.version < (0, 10):
            cmd += [f"--photon-energy={self.beam.photon_energy_ev:.9g}",
                    f"--beam-bandwidth={crystfel_bandwidth(self.beam):.9g}"]
        return cmd

    def run(self, quaternion_wxyz) -> dict[str, np.ndarray]:
        """Run pattern_sim for one quaternion (w, x, y, z); the raw datasets it wrote (image in list units)."""
        q = np.asarray(quaternion_wxyz, dtype=float)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or not np.linalg.norm(q) > 0:
            raise ValueError(f"a quaternion needs 4 finite numbers w x y z, not all zero; got {quaternion_wxyz!r}")
        q = q / np.linalg.norm(q)
        cmd = self.command()
        cmd_text = shlex.join(cmd)
        self.output_path.unlink(missing_ok=True)
        try:
            proc = subprocess.run(cmd, input="{:.9f} {:.9f} {:.9f} {:.9f}\n".format(*q), capture_output=True,
                                  text=True, cwd=self.workdir, timeout=self.timeout_s,
                                  env=crystfel_env())  # HDF5_PLUGIN_PATH for this child only
        except subprocess.TimeoutExpired:
            raise PatternSimError(f"pattern_sim timed out after {self.timeout_s} s: {cmd_text}") from None
        except OSError as exc:
            raise PatternSimError(f"cannot run pattern_sim ({exc.strerror}): {cmd_text}") from None
        if proc.returncode != 0:
            raise PatternSimError(f"pattern_sim failed (exit {proc.returncode}): {cmd_text}: "
                                  f"{_last_line(proc.stderr)}")
        if not self.output_path.is_file():
            raise PatternSimError(f"pattern_sim exited 0 but wrote no {self.output_path.name}: {cmd_text}: "
                                  f"{_last_line(proc.stderr)}")
        try:
            with h5py.File(self.output_path, "r") as f:
                out = {"image": np.asarray(f[DATA_PATH], dtype=np.float32),
                       "astar": np.asarray(f["/pattern_sim/astar"], dtype=float),
                       "bstar": np.asarray(f["/pattern_sim/bstar"], dtype=float),
                       "cstar": np.asarray(f["/pattern_sim/cstar"], dtype=float),
                       "quaternion": np.asarray(f["/pattern_sim/quaternion"], dtype=float)}
                if "/wavelength" in f:
                    out["wavelength_m"] = np.asarray(f["/wavelength"], dtype=float)
        except (OSError, KeyError) as exc:
            raise PatternSimError(f"cannot read pattern_sim output {self.output_path} ({exc}): {cmd_text}") \
                from None
        finally:
            self.output_path.unlink(missing_ok=True)
        return out

    def simulate(self, quaternion_wxyz) -> BraggFrame:
        """One frame: pattern_sim's expected photons per pixel and the builtin's true peaks, same orientation."""
        out = self.run(quaternion_wxyz)
        image = out["image"]
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.shape != self.geometry.shape:
            raise PatternSimError(f"pattern_sim wrote an image of shape {image.shape}, expected "
                                  f"{self.geometry.shape} (ss, fs)")
        image = image / np.float32(self.intensity_scale) if self.intensity_scale != 1.0 else image.copy()
        image[~self.geometry.mask] = 0.0
        astar_bstar_cstar = np.column_stack([out["astar"], out["bstar"], out["cstar"]])
        peaks = self._builtin.simulate(astar_bstar_cstar).peaks
        return BraggFrame(image=image.astype(np.float32, copy=False), peaks=peaks,
                          astar_bstar_cstar=astar_bstar_cstar)

    # -------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Remove the private temporary directory (a given ``workdir`` is left in place)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "PatternSimBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _last_line(text: str) -> str:
    lines = [s.strip() for s in re.split(r"[\r\n]+", text or "") if s.strip()]
    return lines[-1] if lines else "(no output)"
