"""The checks ``cxlspeaks run`` makes before any frame is scored: output paths (not an input, not each other,
writable), the unit cell file beside --cxi, and the frames a source offers (numbers, not bool/complex; not empty).
Every refusal is one line: :class:`RunArgumentError` for options and outputs, :class:`~cxlspeaks.io.DataFileError`
for the input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import DataFileError

CXI_SIBLINGS = (".lst", ".geom", ".cell")


class RunArgumentError(ValueError):
    """An output path or option of a pipeline run that cannot be honoured (one line naming it)."""


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file: os.path.samefile when both exist, else equal resolved paths."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_writable(label: str, path: Path) -> None:
    """Refuse an output path that is a folder, or whose nearest existing folder is not a writable folder.
    Missing folders in between are fine: they are created when the file is written (as ``atomic_path`` does)."""
    if path.is_dir():
        raise RunArgumentError(f"{label} {path}: is a folder, not a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunArgumentError(f"{label} {path}: cannot create it, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunArgumentError(f"{label} {path}: folder {parent} is not writable")


def run_outputs(output: str | Path | None, cxi_output: str | Path | None) -> dict[str, Path]:
    """The files a run writes, by the option that names them: -o (unless None or '-', standard output), and
    --cxi with its .lst, .geom and .cell siblings."""
    outputs = {}
    if output is not None and str(output) != "-":
        outputs["-o"] = Path(output)
    if cxi_output is not None:
        cxi_output = Path(cxi_output)
        if str(cxi_output) == "-" or cxi_output.suffix in CXI_SIBLINGS:
            raise RunArgumentError(f"--cxi {cxi_output}: needs a file name such as peaks.cxi (its .lst, .geom "
                                   "and .cell go beside it)")
        outputs["--cxi"] = cxi_output
        outputs.update({f"--cxi {suffix}": cxi_output.with_suffix(suffix) for suffix in CXI_SIBLINGS})
    return outputs


def check_run_paths(inputs, outputs: dict[str, Path]) -> None:
    """Refuse outputs that are an input (same file or same resolved path), that coincide with each other, or
    that cannot be written (:func:`check_writable`). ``inputs``: label (option or 'input') -> path (None
    skipped), a dict or a list of (label, path) pairs (labels may repeat)."""
    pairs = inputs.items() if isinstance(inputs, dict) else inputs
    named = [(label, Path(p)) for label, p in pairs if p is not None]
    seen: list[tuple[str, Path]] = []
    for label, path in outputs.items():
        for in_label, in_path in named:
            if _same_file(path, in_path):
                raise RunArgumentError(f"{label} {path}: is the {in_label} {in_path}; it would be overwritten")
        for other_label, other in seen:
            if _same_file(path, other):
                raise RunArgumentError(f"{label} {path}: is also the {other_label} output")
        check_writable(label, path)
        seen.append((label, path))


def list_files(path: str | Path) -> list[Path]:
    """The data files an event list names (for the output checks: an output must not overwrite one); [] for
    anything that is not a readable .lst."""
    if Path(path).suffix != ".lst":
        return []
    from .sources.eventlist import read_event_list

    try:
        return list(dict.fromkeys(file for _, file, _ in read_event_list(path)))
    except DataFileError:
        return []


def source_datasets(source) -> list:
    """The open HDF5 datasets a source reads its frames from (the current file's for an event list)."""
    segments = getattr(source, "segments", None)
    if segments is None and getattr(source, "_current", None) is not None:
        segments = getattr(source._current[1], "segments", None)
    return [seg.dataset for seg in segments or []]


def check_source(source, path: str | Path) -> None:
    """Refuse a source without frames, or whose frames are not integer or float numbers (bool, complex,
    strings, compound)."""
    for dataset in source_datasets(source):
        if dataset.dtype.kind not in "uif":
            raise DataFileError(f"{getattr(dataset.file, 'filename', path)}: {dataset.name} is {dataset.dtype}, "
                                "not photon counts (integer or float numbers)")
    if len(source) == 0:
        shape = [d.shape for d in source_datasets(source)]
        raise DataFileError(f"{path}: holds no frames" + (f" (shape {shape[0]})" if shape else ""))


def integer_source(source) -> bool:
    """Whether the frames are stored as signed integers (so a negative count on a good pixel is corrupt data)."""
    datasets = source_datasets(source)
    return bool(datasets) and all(d.dtype.kind == "i" for d in datasets)


def check_counts(counts: np.ndarray, good: np.ndarray, signed_integers: bool, where: str) -> None:
    """Refuse negative counts on good pixels of a signed-integer detector (float data, e.g. photons after dark
    subtraction, may go negative). Markers such as -1 for 2**32 - 1 are masked by the source, so not good."""
    if signed_integers:
        low = counts[good].min(initial=0)
        if low < 0:
            raise DataFileError(f"{where}: holds negative counts ({low:g}) on an integer detector")


def cell_text(cell_file: str | Path | None) -> str:
    """The CrystFEL unit cell file written beside a CXI peak list: ``cell_file``'s text (it must be a readable
    CrystFEL cell file or PDB file), else the source paper's 1IC6 cell (a = b = 67.288 A, c = 106.582 A,
    P 43 21 2), with a comment line saying it is that default."""
    if cell_file is None:
        from types import SimpleNamespace

        import gemmi

        from .crystal import CELL_1IC6_A, SPACEGROUP_1IC6
        from .simulate.pattern_sim import cell_file_text

        crystal = SimpleNamespace(spacegroup=gemmi.SpaceGroup(SPACEGROUP_1IC6), cell_parameters=CELL_1IC6_A)
        return cell_file_text(crystal) + ("; cxlspeaks' default: the 1IC6 (proteinase K) cell, not read from the "
                                          "data; give the crystal's own cell with --cell\n")
    path = Path(cell_file)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
        raise RunArgumentError(f"--cell {path}: cannot read it ({reason})") from None
    if not (text.startswith("CrystFEL unit cell file") or "CRYST1" in text):
        raise RunArgumentError(f"--cell {path}: not a CrystFEL unit cell file (first line 'CrystFEL unit cell "
                               "file version 1.0') or PDB file with a CRYST1 line")
    return text
