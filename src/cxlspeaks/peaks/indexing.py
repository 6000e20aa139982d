"""Indexing the peak finders' peaks with CrystFEL's indexamajig, and checking the solutions against the truth.

The workflow's ``index`` stage (workflow/rules/index.smk) takes, per dataset, the first
``peaks.index.frames_per_dataset`` crystal frames of the peak split's test frames and, for every finder (and a
``truth`` finder: the true reflections of >= ``truth_min_photons`` expected photons), writes

* ``{finder}/{dataset}.cxi``: the finder's peaks as a CXI peak list (:func:`cxlspeaks.cxi.write_cxi_peaks`, raw
  convention, row r = frame r of the dataset) with /entry/data/data an external link to the dataset's frames;
* ``{finder}/{dataset}.lst`` (``/abs/path.cxi //frame`` per frame) and ``{finder}/{dataset}.geom`` (the dataset's
  detector with ``peak_list = /entry_1/result_1``, ``peak_list_type = cxi``);
* ``crystal.cell``: the structure's unit cell (:func:`cxlspeaks.simulate.pattern_sim.cell_file_text`);

runs ``indexamajig -i X.lst -g X.geom -p crystal.cell --peaks=cxi --indexing=asdf,taketwo -j N -o X.stream``
(CrystFEL 0.10-0.12 options; HDF5_PLUGIN_PATH from :func:`cxlspeaks.crystfel_env` for the bitshuffle frames),
parses the stream (:func:`cxlspeaks.peaks.stream.parse_stream`) and checks each solution (:func:`check_orientation`).

**Right indexing.** The stream's astar, bstar, cstar (nm^-1, lab frame, CrystFEL's convention, as pattern_sim and
the frames file's /entry/crystal/astar|bstar|cstar in 1/m) are compared with the frame's true reciprocal basis
B (columns a*, b*, c*; from /entry/crystal/astar.., else M(q)^T A*_crystal of /entry/crystal/quaternion). A basis
B P with P an integer unimodular matrix that preserves the lattice metric (P^T G P = G, G = B^T B) indexes the same
lattice points with the same cell: for a tetragonal cell these are the 16 operations of 4/mmm (the 8 proper
rotations of 422 and their products with the inversion h -> -h, which Friedel's law leaves invisible to spot
positions). A solution is **correct** when, for one such P, every indexed axis is within ``length_tol`` (1 %)
of the length and ``angle_tol_deg`` (1 degree) of the direction of the matching column of B P; any other solution
is **wrong** (a wrong cell, or the right cell in a wrong orientation).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .stream import StreamChunk, parse_stream

SKIPPED_NOT_FOUND = "skipped: indexamajig not found"
SKIPPED_DISABLED = "skipped: disabled (peaks.index.enabled: false)"
FRAME_COLUMNS = ("finder", "dataset", "frame", "flux", "n_peaks", "indexed_by", "indexed", "correct", "wrong",
                 "a_nm", "b_nm", "c_nm", "al_deg", "be_deg", "ga_deg", "axis_error_deg", "status")
SUMMARY_COLUMNS = ("finder", "dataset", "flux", "frames", "indexed", "correct", "wrong", "indexing_rate",
                   "correct_rate", "wrong_rate", "mean_peaks", "methods", "indexamajig", "status")


# ---------------------------------------------------------------------- finding the program
def find_indexamajig(configured: str | None = None, environ=None) -> str | None:
    """The indexamajig to run: ``configured`` (a path or a command name), else $CXLSPEAKS_INDEXAMAJIG, else the one
    on PATH; None when there is none (or the configured one is not an executable file)."""
    environ = os.environ if environ is None else environ
    for candidate in (configured, environ.get("CXLSPEAKS_INDEXAMAJIG"), "indexamajig"):
        if not candidate:
            continue
        found = shutil.which(str(candidate), path=environ.get("PATH"))
        if found:
            return str(Path(found).resolve())
        if configured and candidate == configured:
            return None           # a configured program that is not there: do not fall back silently
    return None


def indexamajig_version(program: str) -> str:
    """``indexamajig --version``'s first line (e.g. "CrystFEL: 0.10.2"), or "" when it does not answer."""
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def indexamajig_command(program: str, lst: str | Path, geom: str | Path, cell: str | Path, stream: str | Path,
                        methods: Sequence[str] = ("asdf", "taketwo"), threads: int = 1,
                        extra: Sequence[str] = (), temp_dir: str | Path | None = None) -> list[str]:
    """The indexamajig command line (CrystFEL 0.10-0.12): CXI peaks from the files the geometry names."""
    cmd = [str(program), "-i", str(lst), "-g", str(geom), "-p", str(cell), "-o", str(stream), "--peaks=cxi",
           f"--indexing={','.join(methods)}", "-j", str(int(threads))]
    if temp_dir is not None:
        cmd.append(f"--temp-dir={temp_dir}")
    return cmd + [str(e) for e in extra]


# ---------------------------------------------------------------------- the orientation check
def lattice_symmetry_ops(basis: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """Integer unimodular 3 x 3 matrices P (entries -1, 0, 1) with P^T G P = G (G = basis^T basis, relative
    tolerance ``tol``): the operations of the lattice's holohedry in this basis (16 for a tetragonal cell)."""
    basis = np.asarray(basis, np.float64)
    g = basis.T @ basis
    scale = np.abs(g).max()
    candidates = np.array(list(itertools.product((-1, 0, 1), repeat=9)), np.int64).reshape(-1, 3, 3)
    det = np.rint(np.linalg.det(candidates.astype(np.float64)))
    candidates = candidates[np.abs(det) == 1]
    metric = np.einsum("nji,jk,nkl->nil", candidates, g, candidates)
    keep = np.all(np.abs(metric - g) <= tol * scale, axis=(1, 2))
    return candidates[keep]


def axis_errors(indexed: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: relative length difference |len_i / len_r - 1| and angle (degrees) between the vectors."""
    li = np.linalg.norm(indexed, axis=0)
    lr = np.linalg.norm(reference, axis=0)
    sin = np.linalg.norm(np.cross(indexed.T, reference.T), axis=1)
    cos = np.sum(indexed * reference, axis=0)
    return np.abs(li / lr - 1.0), np.degrees(np.arctan2(sin, cos))


def check_orientation(indexed: np.ndarray, true: np.ndarray, ops: np.ndarray | None = None,
                      length_tol: float = 0.01, angle_tol_deg: float = 1.0) -> tuple[bool, float]:
    """(correct, error): correct when some lattice symmetry P makes every column of ``indexed`` (a*, b*, c*, any
    common unit) within ``length_tol`` relative length and ``angle_tol_deg`` of the column of ``true @ P``;
    error = the smallest over P of the largest axis angle (degrees), for the record."""
    indexed = np.asarray(indexed, np.float64)
    true = np.asarray(true, np.float64)
    if not (np.all(np.isfinite(indexed)) and np.all(np.isfinite(true))):
        return False, float("nan")
    if ops is None:
        ops = lattice_symmetry_ops(true)
    best = np.inf
    correct = False
    for p in ops:
        dlen, angle = axis_errors(indexed, true @ p)
        best = min(best, float(angle.max()))
        if np.all(dlen <= length_tol) and np.all(angle <= angle_tol_deg):
            correct = True
    return correct, best


def true_bases(frames_path: str | Path, frames: Sequence[int], crystal=None) -> np.ndarray:
    """True reciprocal bases (n, 3, 3) in 1/m, columns a*, b*, c*, lab frame: /entry/crystal/astar|bstar|cstar, or
    from /entry/crystal/quaternion and ``crystal`` (:class:`cxlspeaks.crystal.Crystal`) when those are absent."""
    from ..io import open_h5

    rows = np.asarray(frames, np.int64)
    with open_h5(frames_path) as h5:
        if all(f"/entry/crystal/{a}" in h5 for a in ("astar", "bstar", "cstar")):
            axes = [h5[f"/entry/crystal/{a}"][()][rows] for a in ("astar", "bstar", "cstar")]
            return np.stack(axes, axis=2)
        quaternions = h5["/entry/crystal/quaternion"][()][rows]
    if crystal is None:
        raise ValueError(f"{frames_path}: no /entry/crystal/astar; give the crystal to use the quaternions")
    return np.stack([crystal.orientation_from_quaternion(q) for q in quaternions])


# ---------------------------------------------------------------------- the stage
def index_frames(split: pd.DataFrame, manifests: dict[str, pd.DataFrame],
                 frames_per_dataset: int) -> pd.DataFrame:
    """The frames to index: per dataset, the first ``frames_per_dataset`` crystal test frames of the split
    (dataset, frame, flux)."""
    test = split[split["subset"] == "test"][["dataset", "frame"]]
    parts = []
    for dataset, manifest in manifests.items():
        crystal = manifest[manifest["kind"] != "empty"] if "kind" in manifest else manifest[manifest["has_peaks"]]
        chosen = test[test["dataset"] == dataset].merge(crystal[["frame", "flux"]], on="frame")
        parts.append(chosen.sort_values("frame").head(int(frames_per_dataset)).assign(dataset=dataset))
    columns = ["dataset", "frame", "flux"]
    return (pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns))


def write_finder_inputs(workdir: Path, finder: str, dataset: str, frames_path: str | Path, geometry_text: str,
                        tables: Sequence[pd.DataFrame], frames: Sequence[int]) -> tuple[Path, Path]:
    """``{workdir}/{finder}/{dataset}.cxi`` (linked to the frames), ``.lst`` and ``.geom``; returns (lst, geom)."""
    from ..cxi import geometry_with_peak_list, write_cxi_peaks, write_event_list
    from ..io import atomic_write_text

    folder = workdir / finder
    folder.mkdir(parents=True, exist_ok=True)
    cxi = folder / f"{dataset}.cxi"
    write_cxi_peaks(cxi, list(tables), data_file=frames_path, frames=list(frames))
    write_event_list(cxi.with_suffix(".lst"), cxi.resolve(), list(frames))
    atomic_write_text(cxi.with_suffix(".geom"), geometry_with_peak_list(geometry_text))
    return cxi.with_suffix(".lst"), cxi.with_suffix(".geom")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def run_indexamajig(program: str, lst: Path, geom: Path, cell: Path, stream: Path, methods: Sequence[str],
                    threads: int, extra: Sequence[str], timeout_s: float, log=None) -> str:
    """Run indexamajig; "ok" or "failed: <why>" (the stage goes on with the other finders and datasets)."""
    from .. import crystfel_env

    temp = stream.parent / f".{stream.stem}.tmp"
    temp.mkdir(parents=True, exist_ok=True)
    cmd = indexamajig_command(program, lst, geom, cell, stream, methods, threads, extra, temp_dir=temp)
    if log is not None:
        print(" ".join(cmd), file=log, flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=crystfel_env(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"failed: indexamajig ran past {timeout_s:g} s"
    except OSError as exc:
        return f"failed: {exc}"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    if log is not None:
        log.write(out.stderr[-4000:])
        log.flush()
    if out.returncode != 0 or not stream.exists():
        return f"failed: indexamajig exit {out.returncode}: {_last_line(out.stderr)}"
    return "ok"


def evaluate_stream(chunks: Sequence[StreamChunk], frames: Sequence[int], true: np.ndarray,
                    length_tol: float = 0.01, angle_tol_deg: float = 1.0) -> pd.DataFrame:
    """One row per frame: n_peaks, indexed_by, indexed, correct, wrong, cell (first crystal), axis_error_deg.
    A frame is correct when any of its crystals matches the truth, wrong when indexed but none matches; a frame
    missing from the stream counts as not indexed."""
    by_frame = {c.frame: c for c in chunks}
    ops = lattice_symmetry_ops(true[0]) if len(true) else None
    rows = []
    for frame, basis in zip(frames, true):
        chunk = by_frame.get(int(frame))
        row = {"frame": int(frame), "n_peaks": np.nan, "indexed_by": "none", "indexed": False, "correct": False,
               "wrong": False, "a_nm": np.nan, "b_nm": np.nan, "c_nm": np.nan, "al_deg": np.nan, "be_deg": np.nan,
               "ga_deg": np.nan, "axis_error_deg": np.nan}
        if chunk is not None:
            row["n_peaks"] = chunk.num_peaks if chunk.num_peaks is not None else np.nan
            row["indexed_by"] = chunk.indexed_by
            crystals = [c for c in chunk.crystals if c.astar is not None and c.bstar is not None
                        and c.cstar is not None]
            if crystals:
                row["indexed"] = True
                results = [check_orientation(c.basis_per_m(), basis, ops, length_tol, angle_tol_deg)
                           for c in crystals]
                row["correct"] = any(ok for ok, _ in results)
                row["wrong"] = not row["correct"]
                row["axis_error_deg"] = min(err for _, err in results)
                if crystals[0].cell is not None:
                    for key, value in zip(("a_nm", "b_nm", "c_nm", "al_deg", "be_deg", "ga_deg"), crystals[0].cell):
                        row[key] = value
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(frames_table: pd.DataFrame, methods: Sequence[str], version: str) -> pd.DataFrame:
    """indexing.csv: per finder, dataset and flux, then per finder and flux (dataset "all")."""
    def rows_of(group: pd.DataFrame, finder, dataset, flux) -> dict:
        n = len(group)
        statuses = [s for s in dict.fromkeys(group["status"]) if s != "ok"]
        skipped = any(str(s).startswith("skipped") for s in statuses)
        indexed, correct, wrong = (int(group[c].sum()) for c in ("indexed", "correct", "wrong"))
        rate = (lambda k: np.nan if skipped or n == 0 else k / n)
        return {"finder": finder, "dataset": dataset, "flux": flux, "frames": n,
                "indexed": np.nan if skipped else indexed, "correct": np.nan if skipped else correct,
                "wrong": np.nan if skipped else wrong, "indexing_rate": rate(indexed), "correct_rate": rate(correct),
                "wrong_rate": rate(wrong), "mean_peaks": float(group["n_peaks"].mean()) if n else np.nan,
                "methods": ",".join(methods), "indexamajig": version,
                "status": "; ".join(statuses) if statuses else "ok"}

    out = []
    for (finder, dataset, flux), group in frames_table.groupby(["finder", "dataset", "flux"], sort=False):
        out.append(rows_of(group, finder, dataset, flux))
    for (finder, flux), group in frames_table.groupby(["finder", "flux"], sort=False):
        out.append(rows_of(group, finder, "all", flux))
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def index_stage(peaks: dict[str, str | Path], frames: dict[str, str | Path], geometries: dict[str, str | Path],
                manifests: dict[str, str | Path], split_path: str | Path, reflections: str | Path,
                workdir: str | Path, frames_output: str | Path, summary_output: str | Path,
                settings: dict, log=None) -> pd.DataFrame:
    """The whole stage: choose the frames, write the CrystFEL inputs, run indexamajig per finder and dataset,
    check every solution, write the per-frame table and indexing.csv. Without indexamajig it writes the same
    tables with status "skipped: indexamajig not found" and says so in one line of ``log``.

    ``peaks``: finder -> its peaks CSV (dataset, frame, fs, ss, ...); the finder "truth" needs no file (the true
    reflections of >= settings["truth_min_photons"] photons). ``settings``: the config's peaks.index.
    """
    from ..crystal import read_crystal
    from ..dataset import read_manifest, read_split
    from ..io import atomic_path, atomic_write_text
    from .truth import read_true_peaks
    from ..simulate.pattern_sim import cell_file_text

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    split = read_split(split_path)
    manifest_tables = {d: read_manifest(p, d) for d, p in manifests.items()}
    chosen = index_frames(split, manifest_tables, settings.get("frames_per_dataset", 20))
    methods = list(settings.get("methods", ["asdf", "taketwo"]))
    finders = list(peaks) + (["truth"] if settings.get("truth", True) else [])

    enabled = settings.get("enabled", True)
    program = find_indexamajig(settings.get("indexamajig")) if enabled else None
    if program is None:
        where = settings.get("indexamajig")
        status = (SKIPPED_DISABLED if not enabled else SKIPPED_NOT_FOUND
                  + (f" at {where}" if where else " (not on PATH, CXLSPEAKS_INDEXAMAJIG unset)"))
        if log is not None:
            print(f"index: {status}", file=log, flush=True)
        version = ""
    else:
        version = indexamajig_version(program)
        status = None
        crystal = read_crystal(reflections)
        cell = workdir / "crystal.cell"
        atomic_write_text(cell, cell_file_text(crystal))

    per_frame = []
    for finder in finders:
        table = None if finder == "truth" else pd.read_csv(peaks[finder], dtype={"dataset": str})
        for dataset, group in chosen.groupby("dataset", sort=True):
            frame_list = group["frame"].to_numpy(np.int64)
            base = group[["dataset", "frame", "flux"]].reset_index(drop=True).assign(finder=finder)
            if program is None:
                result = pd.DataFrame({"frame": frame_list, "indexed": False, "correct": False, "wrong": False,
                                       "n_peaks": np.nan, "indexed_by": "none"})
                per_frame.append(base.merge(result, on="frame").assign(status=status))
                continue
            if finder == "truth":
                tables = [t[t["photons"] >= settings.get("truth_min_photons", 3.0)]
                          for t in read_true_peaks(frames[dataset], frame_list)]
            else:
                mine = table[table["dataset"] == dataset]
                grouped = {f: g for f, g in mine.groupby("frame")}
                tables = [grouped.get(int(f), mine.iloc[:0]) for f in frame_list]
            geometry_text = Path(geometries[dataset]).read_text()
            lst, geom = write_finder_inputs(workdir, finder, dataset, frames[dataset], geometry_text, tables,
                                            frame_list)
            stream = lst.with_suffix(".stream")
            if stream.exists():
                stream.unlink()
            run_status = run_indexamajig(program, lst, geom, cell, stream, methods, settings.get("threads", 2),
                                         settings.get("extra_args", []), settings.get("timeout_s", 3600), log)
            chunks = parse_stream(stream.read_text()) if run_status == "ok" else []
            if run_status == "ok" and len({c.frame for c in chunks} & set(frame_list.tolist())) < len(frame_list):
                run_status = (f"failed: the stream holds {len(chunks)} of {len(frame_list)} frames (does "
                              "indexamajig read the frames? HDF5_PLUGIN_PATH, see the log)")
            true = true_bases(frames[dataset], frame_list, crystal)
            result = evaluate_stream(chunks, frame_list, true, settings.get("length_tol", 0.01),
                                     settings.get("angle_tol_deg", 1.0))
            if run_status == "ok":
                result["n_peaks"] = result["n_peaks"].fillna(pd.Series([len(t) for t in tables]))
            else:
                result["n_peaks"] = [len(t) for t in tables]
            per_frame.append(base.merge(result, on="frame").assign(status=run_status))
            if log is not None:
                print(f"index: {finder} {dataset}: {run_status}, {int(result['indexed'].sum())}/{len(result)} "
                      f"indexed, {int(result['correct'].sum())} correct", file=log, flush=True)
    frames_table = (pd.concat(per_frame, ignore_index=True) if per_frame else pd.DataFrame(columns=FRAME_COLUMNS))
    for column in FRAME_COLUMNS:
        if column not in frames_table:
            frames_table[column] = np.nan
    frames_table = frames_table[list(FRAME_COLUMNS)]
    with atomic_path(frames_output) as tmp:
        frames_table.to_csv(tmp, index=False)
    summary = summarise(frames_table, methods, version)
    if summary.empty:      # no frame to index (or no finder): still one line that says so
        summary = pd.DataFrame([{"finder": "", "dataset": "all", "flux": "", "frames": 0, "methods": ",".join(methods),
                                 "indexamajig": version, "status": status or "no frames to index"}],
                               columns=list(SUMMARY_COLUMNS))
    with atomic_path(summary_output) as tmp:
        summary.to_csv(tmp, index=False)
    return summary
