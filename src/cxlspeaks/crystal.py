"""The crystal: unit cell, space group, |F_hkl|^2 from an atomic model (gemmi), and orientations.

Structure factors: gemmi places every atom's X-ray form factor (International Tables, Waasmaier-Kirfel
coefficients) with its B-factor on a grid, applies the space-group symmetry and Fourier-transforms the density
(``DensityCalculatorX`` + ``transform_map_to_f_phi``); the artificial blur gemmi adds for sampling is divided out,
F_hkl = F_blurred exp(B_blur / (4 d^2)). The result equals direct summation to ~1e-5 (tested). Systematic
absences are excluded; the unique reflections are expanded to the full sphere with the point group's rotations
and Friedel's law (no anomalous scattering), so symmetry-equivalent reflections carry equal |F|^2.

Orientation convention (CrystFEL): the crystal-frame Cartesian axes put a along x and b in the xy plane (PDB
orthogonalisation; for 1IC6, a || x, b || y, c || z). A crystal orientation is the matrix of the reciprocal axes in
the lab frame, ``astar_bstar_cstar`` (3 x 3, columns a*, b*, c*, 1/m), so g = A* h. A CrystFEL quaternion
q = (w, x, y, z), as pattern_sim reads it, rotates the *frame*: the crystal turns by its conjugate, i.e.
A*_lab = M(q)^T A*_crystal with M(q) the usual active rotation matrix (PHYSICS.md: q = (1, 0, 0, 0) leaves
a || +x; q = (cos 22.5 deg, sin 22.5 deg, 0, 0) turns the crystal by -45 degrees about x).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np
from scipy.spatial.transform import Rotation

from .io import atomic_path

#: The source paper's protein: proteinase K, P 43 21 2, a = b = 67.288 A, c = 106.582 A.
DEFAULT_PDB_ID = "1IC6"
CELL_1IC6_A = (67.288, 67.288, 106.582, 90.0, 90.0, 90.0)
SPACEGROUP_1IC6 = "P 43 21 2"
RCSB_URL = "https://files.rcsb.org/download/{pdb_id}.pdb"


class StructureError(ValueError):
    """A structure that cannot be read or fetched."""


@dataclass(frozen=True)
class Crystal:
    """A crystal form: cell, space group and the full-sphere list of non-absent reflections with |F|^2.

    ``hkl`` is (N, 3) int, ``intensity`` (N,) |F_hkl|^2 in electrons^2 per unit cell, ``d_min_A`` the
    resolution limit of the list.
    """

    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    hkl: np.ndarray
    intensity: np.ndarray
    d_min_A: float
    source: str

    @property
    def cell_parameters(self) -> tuple[float, float, float, float, float, float]:
        """(a, b, c in angstrom; alpha, beta, gamma in degrees)."""
        c = self.cell
        return (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)

    @property
    def volume_m3(self) -> float:
        """Unit-cell volume in m^3."""
        return self.cell.volume * 1e-30

    @property
    def point_group(self) -> str:
        """Point group (Hermann-Mauguin, e.g. '422'), as CrystFEL's ``-y`` expects it."""
        return self.spacegroup.point_group_hm()

    @property
    def laue_group(self) -> str:
        return self.spacegroup.laue_str()

    def real_basis_m(self) -> np.ndarray:
        """Crystal-frame real axes (columns a, b, c) in metres (a || x, b in the xy plane)."""
        return np.array(self.cell.orth.mat.tolist()) * 1e-10

    def reciprocal_basis_m(self) -> np.ndarray:
        """Crystal-frame reciprocal axes (columns a*, b*, c*) in 1/m: inverse transpose of the real basis."""
        return np.linalg.inv(self.real_basis_m()).T

    def d_spacings_A(self) -> np.ndarray:
        """d = 1 / |g| (angstrom) of every reflection in the list."""
        return 1.0 / np.linalg.norm(self.hkl @ (self.reciprocal_basis_m().T * 1e-10), axis=1)

    def orientation_from_quaternion(self, quaternion_wxyz) -> np.ndarray:
        """Lab-frame reciprocal axes (columns a*, b*, c*, 1/m) for a CrystFEL quaternion (w, x, y, z)."""
        return rotation_from_quaternion(quaternion_wxyz) @ self.reciprocal_basis_m()

    def quaternion_from_orientation(self, astar_bstar_cstar: np.ndarray) -> np.ndarray:
        """The CrystFEL quaternion (w, x, y, z; w >= 0) of lab-frame reciprocal axes (the inverse of the above)."""
        rotation = np.asarray(astar_bstar_cstar) @ np.linalg.inv(self.reciprocal_basis_m())
        q = Rotation.from_matrix(rotation.T).as_quat(scalar_first=True)
        return q if q[0] >= 0 else -q

    def random_orientations(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` orientations uniform on SO(3): (quaternions (n, 4) w x y z, reciprocal axes (n, 3, 3))."""
        q = random_quaternions(rng, n)
        return q, np.stack([self.orientation_from_quaternion(qi) for qi in q])


def rotation_from_quaternion(quaternion_wxyz) -> np.ndarray:
    """The rotation that CrystFEL applies to the crystal for quaternion q: the transpose of q's active matrix."""
    q = np.asarray(quaternion_wxyz, dtype=float)
    if q.shape != (4,) or not np.all(np.isfinite(q)) or not np.linalg.norm(q) > 0:
        raise ValueError(f"a quaternion needs 4 finite numbers w x y z, not all zero; got {quaternion_wxyz!r}")
    return Rotation.from_quat(q / np.linalg.norm(q), scalar_first=True).as_matrix().T


def random_quaternions(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unit quaternions (w, x, y, z; w >= 0) uniform on SO(3): four normal deviates normalised."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    return q


# ---------------------------------------------------------------------- structures
def read_structure(path: str | Path, keep_waters: bool = False, keep_ligands: bool = False,
                   keep_hydrogens: bool = False) -> gemmi.Structure:
    """Read a PDB/mmCIF model; by default protein atoms only (no waters, ligands or hydrogens).

    The default matches the reference |F|^2 of PHYSICS.md (1IC6 protein atoms: |F(13, 8, -6)|^2 = 7.63e5 e^2).
    """
    path = Path(path)
    if not path.is_file():
        raise StructureError(f"{path}: structure file not found")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as exc:
        raise StructureError(f"{path}: cannot read structure ({exc})") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise StructureError(f"{path}: structure has no atoms")
    if st.cell.volume <= 1 or st.find_spacegroup() is None:
        raise StructureError(f"{path}: structure has no unit cell or space group (CRYST1 record)")
    st.setup_entities()
    if not keep_ligands:
        st.remove_ligands_and_waters() if not keep_waters else _remove_ligands_only(st)
    elif not keep_waters:
        st.remove_waters()
    if not keep_hydrogens:
        st.remove_hydrogens()
    st.remove_empty_chains()
    return st


def _remove_ligands_only(st: gemmi.Structure) -> None:
    for model in st:
        for chain in model:
            for i in reversed(range(len(chain))):
                res = chain[i]
                if res.het_flag == "H" and not res.is_water():
                    del chain[i]


def synthetic_structure(cell_parameters=CELL_1IC6_A, spacegroup: str = SPACEGROUP_1IC6, n_atoms: int = 2031,
                        b_factor_A2: float = 15.0, seed: int = 0) -> gemmi.Structure:
    """A random-atom structure: ``n_atoms`` C/N/O/S atoms per asymmetric unit at uniform random positions.

    Random atoms give Wilson statistics (acentric |F|^2 exponentially distributed about sum_j f_j^2). The defaults
    put as many atoms as 1IC6's protein model (2031 non-hydrogen atoms) into the 1IC6 cell, so intensities have
    the right scale; it needs no file and no network.
    """
    rng = np.random.default_rng(seed)
    st = gemmi.Structure()
    st.cell = gemmi.UnitCell(*cell_parameters)
    st.spacegroup_hm = spacegroup
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    elements = rng.choice(["C", "N", "O", "S"], size=n_atoms, p=[0.63, 0.17, 0.19, 0.01])
    fractional = rng.random((n_atoms, 3))
    for i, (el, frac) in enumerate(zip(elements, fractional)):
        res = gemmi.Residue()
        res.name = "UNK"
        res.seqid = gemmi.SeqId(i + 1, " ")
        atom = gemmi.Atom()
        atom.name = el
        atom.element = gemmi.Element(el)
        atom.pos = st.cell.orthogonalize(gemmi.Fractional(*frac))
        atom.b_iso = b_factor_A2
        atom.occ = 1.0
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_cell_images()
    return st


#: PDB entries shipped inside the package (gzipped PDB format, package data ``cxlspeaks/data``): the default run
#: needs no network. PDB entries are CC0 (wwPDB policy). 1IC6: proteinase K, 0.98 A (Betzel et al., Biochemistry
#: 40:3080, 2001), byte-identical to the RCSB file the CXLS hit-finder paper simulated (sha256 of the unzipped
#: file edd50d6f...a445d609).
EMBEDDED_PDB = {"1IC6": "1IC6.pdb.gz"}


def embedded_pdb_path(pdb_id: str) -> Path | None:
    """The gzipped PDB file of ``pdb_id`` shipped in the package, or None when the package has none."""
    name = EMBEDDED_PDB.get(pdb_id.upper())
    return None if name is None else Path(__file__).with_name("data") / name


def fetch_structure(pdb_id: str, path: str | Path, timeout_s: float = 30.0) -> Path:
    """Write PDB entry ``pdb_id`` to ``path`` (atomically): the copy shipped in the package when there is one (no
    network; see :data:`EMBEDDED_PDB`), else a download from the RCSB (:func:`download_pdb`).

    Raises:
        StructureError: one line, when the entry is not shipped and cannot be downloaded.
    """
    embedded = embedded_pdb_path(pdb_id)
    if embedded is not None:
        import gzip

        with atomic_path(path) as tmp:
            tmp.write_bytes(gzip.decompress(embedded.read_bytes()))
        return Path(path)
    return download_pdb(pdb_id, path, timeout_s)


def download_pdb(pdb_id: str, path: str | Path, timeout_s: float = 30.0) -> Path:
    """Fetch a PDB entry from the RCSB into ``path`` (atomically); a one-line error if that is impossible."""
    url = RCSB_URL.format(pdb_id=pdb_id.upper())
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise StructureError(
            f"cannot download PDB {pdb_id} from {url} ({getattr(exc, 'reason', exc)}); put the file at {path} "
            f"or set the structure's 'file' in the config") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(text)
    return Path(path)


# ---------------------------------------------------------------------- structure factors
def structure_factors_asu(structure: gemmi.Structure, d_min_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique (ASU) reflections to ``d_min_A`` and |F_hkl|^2 (e^2) of the first model, absences excluded."""
    if not d_min_A > 0:
        raise ValueError(f"d_min must be positive, got {d_min_A} A")
    dc = gemmi.DensityCalculatorX()
    dc.d_min = d_min_A
    dc.rate = 2.0
    dc.set_refmac_compatible_blur(structure[0])
    dc.grid.setup_from(structure)
    dc.put_model_density_on_grid(structure[0])
    f_phi = gemmi.transform_map_to_f_phi(dc.grid)
    asu = f_phi.prepare_asu_data(dmin=d_min_A, with_000=False, with_sys_abs=False)
    hkl = np.array(asu.miller_array, dtype=np.int32)
    f = np.asarray(asu.value_array) * np.exp(dc.blur * 0.25 * np.asarray(asu.make_1_d2_array()))
    return hkl, (np.abs(f) ** 2).astype(np.float64)


def expand_to_sphere(spacegroup: gemmi.SpaceGroup, hkl_asu: np.ndarray,
                     values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All symmetry equivalents (point-group rotations, plus Friedel mates) of ``hkl_asu``, each with its value."""
    rotations = [np.array(op.rot, dtype=np.int64) // op.DEN for op in spacegroup.operations().sym_ops]
    images = [hkl_asu.astype(np.int64) @ r for r in rotations]
    all_hkl = np.concatenate(images + [-im for im in images])
    all_values = np.tile(values, 2 * len(rotations))
    unique_hkl, first = np.unique(all_hkl, axis=0, return_index=True)
    return unique_hkl.astype(np.int32), all_values[first]


def crystal_from_structure(structure: gemmi.Structure, d_min_A: float, source: str = "") -> Crystal:
    """A :class:`Crystal` with the full-sphere |F|^2 of ``structure`` to ``d_min_A``."""
    spacegroup = structure.find_spacegroup()
    hkl_asu, f2 = structure_factors_asu(structure, d_min_A)
    hkl, intensity = expand_to_sphere(spacegroup, hkl_asu, f2)
    return Crystal(cell=structure.cell, spacegroup=spacegroup, hkl=hkl, intensity=intensity,
                   d_min_A=d_min_A, source=source)


def load_crystal(structure_file: str | Path | None, d_min_A: float, synthetic_seed: int = 0) -> Crystal:
    """The crystal from a PDB/mmCIF file, or the synthetic random-atom 1IC6-cell crystal when ``None``."""
    if structure_file is None:
        return crystal_from_structure(synthetic_structure(seed=synthetic_seed), d_min_A,
                                      source=f"synthetic:seed={synthetic_seed}")
    return crystal_from_structure(read_structure(structure_file), d_min_A, source=str(structure_file))


def build_reflections(structure_file: str | Path | None, output: str | Path, d_min_A: float,
                      synthetic: bool = False, synthetic_seed: int = 0, keep_waters: bool = False,
                      keep_ligands: bool = False, keep_hydrogens: bool = False, **_ignored) -> None:
    """Compute the full-sphere |F|^2 list of a structure file (or the synthetic crystal) and save it to HDF5."""
    if synthetic:
        crystal = load_crystal(None, d_min_A, synthetic_seed=synthetic_seed)
    else:
        structure = read_structure(structure_file, keep_waters=keep_waters, keep_ligands=keep_ligands,
                                   keep_hydrogens=keep_hydrogens)
        crystal = crystal_from_structure(structure, d_min_A, source=str(structure_file))
    save_crystal(crystal, output)


# ---------------------------------------------------------------------- reflection files
def save_crystal(crystal: Crystal, path: str | Path) -> None:
    """Write the reflection list and its crystal (cell, space group, d_min, source) to HDF5, atomically."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("hkl", data=crystal.hkl.astype(np.int32))
        h5.create_dataset("intensity", data=crystal.intensity.astype(np.float64))
        h5["intensity"].attrs["units"] = "electrons^2 per unit cell (|F_hkl|^2)"
        h5.attrs["cell_A_deg"] = np.array(crystal.cell_parameters)
        h5.attrs["spacegroup"] = crystal.spacegroup.hm
        h5.attrs["d_min_A"] = crystal.d_min_A
        h5.attrs["source"] = crystal.source


def read_crystal(path: str | Path) -> Crystal:
    """Read a reflection file written by :func:`save_crystal`."""
    from .io import DataFileError, open_h5

    with open_h5(path) as h5:
        try:
            return Crystal(cell=gemmi.UnitCell(*h5.attrs["cell_A_deg"]),
                           spacegroup=gemmi.SpaceGroup(str(h5.attrs["spacegroup"])),
                           hkl=h5["hkl"][()], intensity=h5["intensity"][()], d_min_A=float(h5.attrs["d_min_A"]),
                           source=str(h5.attrs["source"]))
        except KeyError as exc:
            raise DataFileError(f"{path}: not a cxlspeaks reflection file (missing {exc})") from None
