"""CXI peak lists (write/read, cap, frame rows, external data link), CrystFEL event lists and geometry lines."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pandas as pd
import pytest

from cxlspeaks.geometry import parse_geometry, tiny_geometry
from cxlspeaks.cxi import (
    CXI_PEAK_FIELDS,
    geometry_with_peak_list,
    read_cxi_peak_frames,
    read_cxi_peaks,
    write_cxi_peaks,
    write_event_list,
)
from cxlspeaks.io import (
    DATA,
    RESULT,
    DataFileError,
    FrameStackWriter,
)

# values exact in float32, so a round trip through the file is exact
TABLES = [
    pd.DataFrame({"fs": [10.25, 50.0, 100.75], "ss": [20.5, 60.0, 110.25], "photons": [100.0, 2.5, 300.0],
                  "snr": [5.0, 6.5, 7.0], "score": [0.5, 0.25, 0.75]}),
    pd.DataFrame({"fs": [], "ss": [], "photons": [], "snr": [], "score": []}, dtype=np.float64),
    pd.DataFrame({"fs": [33.0, 1.5], "ss": [44.0, 2.5], "photons": [10.0, 11.0], "snr": [3.0, 4.0],
                  "score": [1.0, 2.0]}),
]


def cxi_columns(table: pd.DataFrame) -> pd.DataFrame:
    return table[["fs", "ss", "photons", "snr"]].reset_index(drop=True).astype(np.float64)


def write_frames(path: Path, n_frames: int, shape=(16, 12)) -> np.ndarray:
    """A small compressed frames file; returns its data stack."""
    data = np.arange(n_frames * shape[0] * shape[1], dtype=np.uint32).reshape(n_frames, *shape)
    with FrameStackWriter(path, n_frames, shape, max_peaks=4) as writer:
        for i in range(n_frames):
            writer.write_frame(i, data[i], None, None)
    return data


def test_write_read_round_trip(tmp_path):
    path = tmp_path / "peaks.cxi"
    write_cxi_peaks(path, TABLES, max_peaks=5)
    back = read_cxi_peaks(path)
    assert len(back) == 3
    for table, read in zip(TABLES, back):
        assert list(read.columns) == ["fs", "ss", "photons", "snr"]
        assert all(read[c].dtype == np.float64 for c in read.columns)
        pd.testing.assert_frame_equal(read, cxi_columns(table))
    assert read_cxi_peak_frames(path).tolist() == [0, 1, 2]
    with h5py.File(path) as h5:
        assert int(h5["cxi_version"][()]) == 150
        counts = h5[f"{RESULT}/nPeaks"]
        assert counts.dtype == np.int32 and counts[()].tolist() == [3, 0, 2]
        for name in CXI_PEAK_FIELDS:
            assert h5[f"{RESULT}/{name}"].dtype == np.float32 and h5[f"{RESULT}/{name}"].shape == (3, 5)
        x = h5[f"{RESULT}/peakXPosRaw"][()]
        assert x[0].tolist() == [10.25, 50.0, 100.75, 0.0, 0.0]
        assert x[1].tolist() == [0.0] * 5
        assert x[2].tolist() == [33.0, 1.5, 0.0, 0.0, 0.0]
        assert h5[f"{RESULT}/peakSNR"][0].tolist() == [5.0, 6.5, 7.0, 0.0, 0.0]
        assert h5[f"{RESULT}/peakTotalIntensity"][2, :2].tolist() == [10.0, 11.0]
        assert "frame" not in h5[RESULT] and DATA not in h5
    assert not list(tmp_path.glob(".*.part"))


def test_missing_optional_columns_and_extra(tmp_path):
    path = tmp_path / "peaks.cxi"
    write_cxi_peaks(path, [pd.DataFrame({"fs": [1.0], "ss": [2.0]})], max_peaks=2,
                    extra={"hit": np.array([1], np.int8), "/entry/note": np.array([7])})
    back = read_cxi_peaks(path)[0]
    assert back.iloc[0].tolist() == [1.0, 2.0, 0.0, 0.0]
    with h5py.File(path) as h5:
        assert h5[f"{RESULT}/hit"][()].tolist() == [1] and h5["/entry/note"][()].tolist() == [7]
    with pytest.raises(ValueError, match="nPeaks"):
        write_cxi_peaks(path, [TABLES[0]], extra={"nPeaks": np.zeros(1)})
    with pytest.raises(ValueError, match="no column ss"):
        write_cxi_peaks(path, [pd.DataFrame({"fs": [1.0]})])
    with pytest.raises(ValueError, match="non-finite"):
        write_cxi_peaks(path, [pd.DataFrame({"fs": [np.nan], "ss": [1.0]})])


def test_max_peaks_keeps_the_highest_scores_in_order(tmp_path):
    table = pd.DataFrame({"fs": [1.0, 2.0, 3.0, 4.0, 5.0], "ss": [0.0] * 5, "photons": [1.0] * 5,
                          "snr": [9.0, 1.0, 1.0, 1.0, 9.0], "score": [0.1, 0.9, 0.5, 0.7, 0.2]})
    path = tmp_path / "capped.cxi"
    write_cxi_peaks(path, [table, table.iloc[:2]], max_peaks=3)
    back = read_cxi_peaks(path)
    assert back[0]["fs"].tolist() == [2.0, 3.0, 4.0]  # scores 0.9, 0.5, 0.7, file order kept
    assert back[1]["fs"].tolist() == [1.0, 2.0]
    with h5py.File(path) as h5:
        assert h5[f"{RESULT}/peakXPosRaw"].shape == (2, 3)
    # no score column: the highest snr
    write_cxi_peaks(path, [table.drop(columns="score")], max_peaks=2)
    assert read_cxi_peaks(path)[0]["fs"].tolist() == [1.0, 5.0]
    with pytest.raises(ValueError, match="max_peaks"):
        write_cxi_peaks(path, [table], max_peaks=0)


def test_frames_put_each_table_at_its_source_row(tmp_path):
    path = tmp_path / "subset.cxi"
    write_cxi_peaks(path, [TABLES[0], TABLES[2]], max_peaks=4, frames=[4, 1])
    with h5py.File(path) as h5:
        assert h5[f"{RESULT}/nPeaks"][()].tolist() == [0, 2, 0, 0, 3]
        assert h5[f"{RESULT}/frame"].dtype == np.int64 and h5[f"{RESULT}/frame"][()].tolist() == [4, 1]
        assert h5[f"{RESULT}/peakYPosRaw"][4, :3].tolist() == [20.5, 60.0, 110.25]
        assert h5[f"{RESULT}/peakYPosRaw"][1, :2].tolist() == [44.0, 2.5]
    back = read_cxi_peaks(path)
    assert len(back) == 2
    pd.testing.assert_frame_equal(back[0], cxi_columns(TABLES[0]))
    pd.testing.assert_frame_equal(back[1], cxi_columns(TABLES[2]))
    assert read_cxi_peak_frames(path).tolist() == [4, 1]
    for bad in ([1, 1], [-1, 2], [0]):
        with pytest.raises(ValueError, match="frames"):
            write_cxi_peaks(path, [TABLES[0], TABLES[2]], frames=bad)


def test_no_tables(tmp_path):
    path = tmp_path / "none.cxi"
    write_cxi_peaks(path, [], max_peaks=4)
    assert read_cxi_peaks(path) == []
    with h5py.File(path) as h5:
        assert h5[f"{RESULT}/peakXPosRaw"].shape == (0, 4)


def test_external_link_is_relative_and_readable_from_elsewhere(tmp_path, monkeypatch):
    root = tmp_path / "root"
    data = write_frames(root / "datasets" / "03" / "frames.h5", n_frames=5)
    cxi = root / "peaks" / "finder" / "peaks.cxi"
    write_cxi_peaks(cxi, [TABLES[0], TABLES[2]], max_peaks=4, data_file=root / "datasets" / "03" / "frames.h5",
                    frames=[3, 0])
    with h5py.File(cxi) as h5:
        link = h5.get(DATA, getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert link.filename == "../../datasets/03/frames.h5" and link.path == DATA
    # HDF5 looks for a relative link target beside the linking file first, not in the current directory
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")
    moved = tmp_path / "moved"
    shutil.move(root, moved)  # the pair moves together
    with h5py.File(moved / "peaks" / "finder" / "peaks.cxi") as h5:
        assert h5[DATA].shape == data.shape
        np.testing.assert_array_equal(h5[DATA][3], data[3])  # compressed frames read through the link
    back = read_cxi_peaks(os.path.relpath(moved / "peaks" / "finder" / "peaks.cxi"))
    pd.testing.assert_frame_equal(back[0], cxi_columns(TABLES[0]))


def test_external_link_checks_the_data_file(tmp_path):
    write_frames(tmp_path / "frames.h5", n_frames=2)
    cxi = tmp_path / "peaks.cxi"
    write_cxi_peaks(cxi, [TABLES[0]], data_file=tmp_path / "frames.h5", frames=[1])
    with h5py.File(cxi) as h5:
        assert h5.get(DATA, getlink=True).filename == "frames.h5"
    with pytest.raises(ValueError, match="beyond"):
        write_cxi_peaks(cxi, [TABLES[0]], data_file=tmp_path / "frames.h5", frames=[2])
    with pytest.raises(DataFileError, match="absent.h5"):
        write_cxi_peaks(cxi, [TABLES[0]], data_file=tmp_path / "absent.h5")
    with pytest.raises(DataFileError, match="no dataset /nothing"):
        write_cxi_peaks(cxi, [TABLES[0]], data_file=tmp_path / "frames.h5", data_path="/nothing")


def test_event_list_lines(tmp_path):
    path = tmp_path / "lists" / "test.lst"
    write_event_list(path, "results/peaks/peaks.cxi", [3, 0, 12])
    assert path.read_text() == "results/peaks/peaks.cxi //3\nresults/peaks/peaks.cxi //0\nresults/peaks/peaks.cxi //12\n"
    write_event_list(path, Path("/abs/frames.h5"), np.array([5], np.int64))
    assert path.read_text() == "/abs/frames.h5 //5\n"
    write_event_list(path, "x.cxi", [])
    assert path.read_text() == ""
    with pytest.raises(ValueError):
        write_event_list(path, "x.cxi", [-1])


def test_geometry_with_peak_list_adds_the_lines_once():
    text = tiny_geometry().to_geom_text()
    once = geometry_with_peak_list(text)
    lines = once.splitlines()
    assert lines.count("peak_list = /entry_1/result_1") == 1 and lines.count("peak_list_type = cxi") == 1
    first_content = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith(";"))
    assert lines[first_content:first_content + 2] == ["peak_list = /entry_1/result_1", "peak_list_type = cxi"]
    assert [line for line in lines if not line.startswith("peak_list")] == text.splitlines()
    assert geometry_with_peak_list(once) == once
    parsed = parse_geometry(once)
    assert parsed.header["peak_list"] == "/entry_1/result_1" and parsed.header["peak_list_type"] == "cxi"
    assert parsed.shape == tiny_geometry().shape


def test_geometry_with_peak_list_replaces_old_lines():
    text = ("; comment\nphoton_energy = 6000\npeak_list=/old ; from cheetah\nclen = 0.1\n"
            "  peak_list_type = auto\npanel0/min_fs = 0\n")
    new = geometry_with_peak_list(text, "/entry_1/result_2")
    assert new == ("; comment\nphoton_energy = 6000\npeak_list = /entry_1/result_2\npeak_list_type = cxi\n"
                   "clen = 0.1\npanel0/min_fs = 0\n")
    assert geometry_with_peak_list(new, "/entry_1/result_2") == new
    with pytest.raises(ValueError):
        geometry_with_peak_list(text, "/a ; b")


def test_bad_files_raise_data_file_error_naming_the_path(tmp_path):
    missing = tmp_path / "missing.cxi"
    with pytest.raises(DataFileError, match="missing.cxi: file not found"):
        read_cxi_peaks(missing)
    corrupt = tmp_path / "corrupt.cxi"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(DataFileError, match="corrupt.cxi"):
        read_cxi_peaks(corrupt)
    no_result = tmp_path / "empty.cxi"
    with h5py.File(no_result, "w") as h5:
        h5["cxi_version"] = 150
    with pytest.raises(DataFileError, match="empty.cxi: has no dataset /entry_1/result_1/nPeaks"):
        read_cxi_peaks(no_result)

    good = tmp_path / "good.cxi"
    write_cxi_peaks(good, TABLES, max_peaks=4)

    def broken(name: str, edit) -> Path:
        path = tmp_path / name
        shutil.copy(good, path)
        with h5py.File(path, "a") as h5:
            edit(h5[RESULT])
        return path

    def replace(group, name, value):
        del group[name]
        group[name] = value

    cases = {
        "rows.cxi": lambda g: replace(g, "peakYPosRaw", np.zeros((2, 4), np.float32)),
        "ndim.cxi": lambda g: replace(g, "nPeaks", np.zeros((3, 1), np.int32)),
        "count.cxi": lambda g: replace(g, "nPeaks", np.array([3, 0, 5], np.int32)),
        "frame.cxi": lambda g: g.create_dataset("frame", data=np.array([0, 3])),
    }
    for name, edit in cases.items():
        with pytest.raises(DataFileError, match=name.replace(".", r"\.")) as info:
            read_cxi_peaks(broken(name, edit))
        assert "\n" not in str(info.value)

    no_snr = broken("nosnr.cxi", lambda g: g.__delitem__("peakSNR"))
    back = read_cxi_peaks(no_snr)
    assert back[0]["snr"].isna().all() and back[0]["fs"].tolist() == TABLES[0]["fs"].tolist()


# ---------------------------------------------------------------------- CrystFEL (optional)
def parse_stream_peaks(text: str) -> dict[str, np.ndarray]:
    """Event -> (n, 3) fs, ss, intensity from the 'Peaks from peak search' blocks of a CrystFEL stream."""
    peaks = {}
    for chunk in text.split("----- Begin chunk -----")[1:]:
        event = next(line.split(":", 1)[1].strip() for line in chunk.splitlines() if line.startswith("Event:"))
        block = chunk.split("Peaks from peak search", 1)[1].split("End of peak list", 1)[0]
        rows = [line.split()[:4] for line in block.strip().splitlines()[1:]]
        peaks[event] = np.array([[float(r[0]), float(r[1]), float(r[3])] for r in rows]).reshape(-1, 3)
    return peaks


@pytest.mark.skipif(not os.environ.get("CXLSPEAKS_INDEXAMAJIG"),
                    reason="set CXLSPEAKS_INDEXAMAJIG to CrystFEL's indexamajig to run")
def test_indexamajig_reads_the_cxi_peaks_through_the_link(tmp_path):
    geometry = tiny_geometry()
    write_frames(tmp_path / "data" / "frames.h5", n_frames=4, shape=geometry.shape)
    cxi = tmp_path / "peaks" / "peaks.cxi"
    write_cxi_peaks(cxi, [TABLES[0], TABLES[2]], max_peaks=8, data_file=tmp_path / "data" / "frames.h5",
                    frames=[3, 1])
    write_event_list(tmp_path / "peaks.lst", cxi, [3, 1])
    geom = geometry_with_peak_list("photon_energy = 6000\n" + geometry.to_geom_text())
    (tmp_path / "peaks.geom").write_text(geom)
    run = tmp_path / "run" / "deeper"
    run.mkdir(parents=True)
    env = dict(os.environ, HDF5_PLUGIN_PATH=hdf5plugin.PLUGIN_PATH)
    result = subprocess.run([os.environ["CXLSPEAKS_INDEXAMAJIG"], "-i", str(tmp_path / "peaks.lst"),
                             "-g", str(tmp_path / "peaks.geom"), "-o", "out.stream", "--peaks=cxi",
                             "--indexing=none", "--no-revalidate", "-j", "1"],
                            cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 images processed" in result.stderr
    found = parse_stream_peaks((run / "out.stream").read_text())
    assert set(found) == {"//3", "//1"}
    for event, table in (("//3", TABLES[0]), ("//1", TABLES[2])):
        expected = table[["fs", "ss", "photons"]].to_numpy() + [0.5, 0.5, 0.0]
        np.testing.assert_allclose(found[event], expected, atol=0.006)
