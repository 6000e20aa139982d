"""`cxlspeaks run` on every frame source (issue 10 items 4, 5): stacks of any dtype and filter, DECTRIS NXmx
masters, event lists; per-frame masks and saturation; models that follow the detector (a moved beam centre, the
EIGER2 4M layout); frames written into the CXI for indexamajig.

The hit, photon-energy and camera-length checkpoints are trained once per module with the project's own
training (:func:`cxlspeaks.train.train_attribute`) on synthetic features of a tiny 64 x 64 detector (1.2 mm
pixels, beam at the centre): a water ring at r = L tan(2 asin(q lambda / 4 pi)), q = 2.05 1/A, for two photon
energies x two camera lengths, with bright spots on the hits; the peak network is a hand-made one.
"""

from __future__ import annotations

import h5py
import hdf5plugin
import numpy as np
import pandas as pd
import pytest

from cxlspeaks.checkpoint import load_checkpoint, save_checkpoint
from cxlspeaks.cli import main
from cxlspeaks.constants import HC_EV_A
from cxlspeaks.cxi import read_cxi_peaks
from cxlspeaks.features import FEATURES, binned_frames, binned_radius_m, mask_fraction
from cxlspeaks.geometry import parse_geometry, read_geometry
from cxlspeaks.io import DATA, GEOMETRY_TEXT
from cxlspeaks.pipeline import run_pipeline
from cxlspeaks.sources import open_source
from cxlspeaks.train import TrainConfig, train_attribute
from conftest import REPO
from test_cli_errors import checkpoint_content

PX, BIN, PIXEL_M = 64, 4, 1.2e-3
ENERGIES, CLENS = (7000.0, 9000.0), (0.04, 0.05)
MARK32 = 0xFFFFFFFF
SCORES = ["hit_probability", "is_hit", "photon_energy_ev", "photon_energy_probability", "clen_m",
          "clen_probability", "n_peaks", "n_masked", "n_saturated"]


# ---------------------------------------------------------------------- synthetic frames
def geom_text(shape=(PX, PX), beam=(PX / 2, PX / 2), clen=0.05, energy=9000.0, window=None) -> str:
    """One panel of shape (ss, fs), the beam at ``beam`` (fs, ss) pixels from the first pixel's corner; with
    ``window`` (ss0, fs0, n) every pixel outside the n x n window is a bad region."""
    ss, fs = shape
    text = (f"photon_energy = {energy}\nclen = {clen}\nres = {1 / PIXEL_M}\ndata = /entry/data/data\ndim0 = %\n"
            f"dim1 = ss\ndim2 = fs\np0/min_fs = 0\np0/max_fs = {fs - 1}\np0/min_ss = 0\np0/max_ss = {ss - 1}\n"
            f"p0/corner_x = {-beam[0]}\np0/corner_y = {-beam[1]}\n")
    if window is not None:
        s0, f0, n = window
        boxes = [(0, fs - 1, 0, s0 - 1), (0, fs - 1, s0 + n, ss - 1), (0, f0 - 1, s0, s0 + n - 1),
                 (f0 + n, fs - 1, s0, s0 + n - 1)]
        for k, (a, b, c, d) in enumerate(boxes):
            if a <= b and c <= d:
                text += (f"bad{k}/min_fs = {a}\nbad{k}/max_fs = {b}\nbad{k}/min_ss = {c}\nbad{k}/max_ss = {d}\n"
                         f"bad{k}/panel = p0\n")
    return text


def expected_water(geometry, energy: float, clen: float) -> np.ndarray:
    """Photons per pixel: a ring at the water peak's radius, falling with clen^-2, over a flat level."""
    pos = geometry.pixel_positions_m
    r = np.hypot(pos[..., 0], pos[..., 1])
    ring = clen * np.tan(2 * np.arcsin(2.05 * (HC_EV_A / energy) / (4 * np.pi)))
    return (2.0 + 12.0 * np.exp(-(r - ring) ** 2 / (2 * 0.004 ** 2))) * (0.04 / clen) ** 2


def frame_set(n_hits: int, n_empty: int, energy: float, clen: float, seed: int, geometry=None) -> np.ndarray:
    """uint32 (n, ss, fs) frames: Poisson water, hits with 4 spots of ~700 photons (3 x 3 pixels)."""
    geometry = geometry or parse_geometry(geom_text(clen=clen, energy=energy))
    rng = np.random.default_rng(seed)
    water = expected_water(geometry, energy, clen)
    frames = rng.poisson(water, size=(n_hits + n_empty, *water.shape)).astype(np.uint32)
    ss, fs = water.shape
    for i in range(n_hits):
        for _ in range(4):
            a, b = rng.integers(4, ss - 4), rng.integers(4, fs - 4)
            frames[i, a - 1:a + 2, b - 1:b + 2] += rng.poisson(60.0, (3, 3)).astype(np.uint32) + 20
    return frames


def write_stack(path, data, text, dtype=np.uint32, filters=None):
    with h5py.File(path, "w") as h5:
        h5.create_dataset(DATA, data=data.astype(dtype), chunks=(1, *data.shape[1:]), **(filters or {}))
        h5[GEOMETRY_TEXT] = text
    return path


def nxmx_master(folder, data, mask, applied=True, name="run", clen=0.05, energy=9000.0, saturation=2000):
    """A DECTRIS legacy NXmx master with two data files (frames split 3 + rest), uint32, bitshuffle-LZ4."""
    parts = [(0, 3), (3, len(data))]
    for k, (lo, hi) in enumerate(parts, start=1):
        with h5py.File(folder / f"{name}_data_{k:06d}.h5", "w") as h5:
            ds = h5.create_dataset(DATA, data=data[lo:hi], chunks=(1, *data.shape[1:]),
                                   **hdf5plugin.Bitshuffle(cname="lz4"))
            ds.attrs["image_nr_low"], ds.attrs["image_nr_high"] = lo + 1, hi
    with h5py.File(folder / f"{name}_master.h5", "w") as h5:
        det = h5.create_group("/entry/instrument/detector")
        det["detector_distance"] = clen
        det["beam_center_x"], det["beam_center_y"] = PX / 2, PX / 2
        det["x_pixel_size"] = det["y_pixel_size"] = PIXEL_M
        det["bit_depth_image"] = 32
        det["saturation_value"] = saturation
        det["pixel_mask_applied"] = applied
        det.create_group("detectorSpecific")["pixel_mask"] = mask
        h5["/entry/instrument/beam/incident_wavelength"] = HC_EV_A / energy
        h5["/entry/instrument/beam/incident_wavelength"].attrs["units"] = "angstrom"
        for k in (1, 2):
            h5[f"/entry/data/data_{k:06d}"] = h5py.ExternalLink(f"{name}_data_{k:06d}.h5", DATA)
    return folder / f"{name}_master.h5"


# ---------------------------------------------------------------------- the models, once per module
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_sources")
    features, rows = {}, []
    for d, (energy, clen) in enumerate((e, c) for e in ENERGIES for c in CLENS):
        geometry = parse_geometry(geom_text(clen=clen, energy=energy))
        frames = frame_set(32, 32, energy, clen, seed=d).astype(np.float32)
        name = f"d{d}"
        with h5py.File(root / f"{name}.h5", "w") as h5:
            g = h5.create_group(FEATURES)
            g["counts"] = binned_frames(frames, geometry.mask, BIN)
            g["signal"] = np.zeros_like(g["counts"][()])
            g["mask_fraction"] = mask_fraction(geometry.mask, BIN)
            g["radius_m"] = binned_radius_m(geometry, BIN)
            g["has_peaks"] = np.arange(len(frames)) < 32
            g.attrs.update(photon_energy_ev=energy, clen_m=clen, bin_factor=BIN, dataset=name)
        features[name] = root / f"{name}.h5"
        rows += [(name, f, "test" if f % 6 == 0 else "train") for f in range(len(frames))]
    split = root / "split.csv"
    pd.DataFrame(rows, columns=["dataset", "frame", "subset"]).to_csv(split, index=False)
    folder = root / "models"
    configs = {"hit": TrainConfig(attribute="hit", model="hit_fcn", epochs=12, batch_size=16, learning_rate=2e-3),
               "photon_energy": TrainConfig(attribute="photon_energy", model="water_profile_linear",
                                            target="photon_energy_ev", loss="ce", epochs=8, batch_size=8,
                                            learning_rate=1e-2, scheduler="none"),
               "clen": TrainConfig(attribute="clen", model="water_profile_linear", target="clen_m", loss="ce",
                                   epochs=8, batch_size=8, learning_rate=1e-2, scheduler="none")}
    for attribute, config in configs.items():
        train_attribute(config, features, split, folder / attribute / "checkpoint.pt", root / f"{attribute}.csv",
                        progress=False)
    save_checkpoint(folder / "peaks" / "checkpoint.pt", **checkpoint_content("peaks"))
    return folder


def checkpoints(models, peaks=True):
    names = ("hit", "photon_energy", "clen") + (("peaks",) if peaks else ())
    return {a: models / a / "checkpoint.pt" for a in names}


def test_checkpoints_record_what_they_were_trained_on(models):
    trained = load_checkpoint(models / "clen" / "checkpoint.pt", "clen")["trained_on"]
    assert trained == {"binned_shape": [PX // BIN, PX // BIN], "bin_factor": BIN,
                       "photon_energy_ev": list(ENERGIES), "clen_m": list(CLENS)}


# ---------------------------------------------------------------------- (a) dtypes and filters
def test_dtypes_and_compressions_give_identical_rows(models, tmp_path):
    data = frame_set(2, 2, 9000.0, 0.05, seed=11)
    text = geom_text()
    tables = []
    filters = {"none": {}, "lz4": hdf5plugin.LZ4(), "bitshuffle": hdf5plugin.Bitshuffle(cname="lz4")}
    for dtype in (np.uint16, np.uint32, np.int32, np.float32):
        for name, f in filters.items():
            path = write_stack(tmp_path / f"{np.dtype(dtype).name}_{name}.h5", data, text, dtype, f)
            tables.append(run_pipeline(path, checkpoints(models)))
    first = tables[0]
    assert list(first["frame"]) == [0, 1, 2, 3] and list(first["event"]) == ["//0", "//1", "//2", "//3"]
    assert first["is_hit"].tolist() == [True, True, False, False]
    for table in tables[1:]:
        pd.testing.assert_frame_equal(table[["frame", "event", *SCORES]], first[["frame", "event", *SCORES]])


# ---------------------------------------------------------------------- (b) an NXmx master end to end
def pixel_mask():
    mask = np.zeros((PX, PX), np.uint32)
    mask[:, 40:42] = 1   # a module gap
    mask[5, 7] = 2       # dead
    return mask


def test_nxmx_master_end_to_end_with_events_masks_and_saturation(models, tmp_path, capsys):
    data = frame_set(3, 2, 9000.0, 0.05, seed=21)
    data[:, :, 40:42] = MARK32            # the gap, as the detector writes it (mask applied)
    data[1, 10, 11] = MARK32              # a pixel flagged in this frame only
    data[0, 20, 20:23] = 2500             # saturated (saturation_value 2000), still good
    master = nxmx_master(tmp_path, data, pixel_mask())
    out, cxi = tmp_path / "rows.csv", tmp_path / "cxi" / "hits.cxi"
    assert main(["run", str(master), "--models", str(models), "-o", str(out), "--cxi", str(cxi), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    table = pd.read_csv(out, dtype={"n_peaks": "Int64"})
    assert list(table.columns[:3]) == ["frame", "event", "source_file"]
    assert list(table["frame"]) == [0, 1, 2, 3, 4] and list(table["event"]) == [f"//{i}" for i in range(5)]
    assert [p.rsplit("_", 1)[1] for p in table["source_file"]] == ["000001.h5"] * 3 + ["000002.h5"] * 2
    gap_and_dead = 2 * PX + 1
    assert list(table["n_masked"]) == [gap_and_dead, gap_and_dead + 1, gap_and_dead, gap_and_dead, gap_and_dead]
    assert list(table["n_saturated"]) == [3, 0, 0, 0, 0]
    assert list(table["is_hit"]) == [True, True, True, False, False]
    assert (table.loc[table["is_hit"], "photon_energy_ev"] == 9000.0).all()
    assert (table.loc[table["is_hit"], "clen_m"] == 0.05).all()

    # the CXI holds the hit frames and their peaks; the .lst and .geom read them back (as indexamajig would)
    hits = table[table["is_hit"]]
    peaks = read_cxi_peaks(cxi)
    assert [len(t) for t in peaks] == list(hits["n_peaks"])
    lst = cxi.with_suffix(".lst").read_text().splitlines()
    assert lst == [f"{cxi.resolve()} //{r}" for r in range(len(hits))]
    geometry = read_geometry(cxi.with_suffix(".geom"))
    assert geometry.panels[0].data == DATA and geometry.panels[0].masks[0].data == "/entry/data/mask"
    with open_source(cxi.with_suffix(".lst"), geometry=cxi.with_suffix(".geom")) as source:
        back = list(source)
    with open_source(master) as original:
        for frame, i in zip(back, hits["frame"]):
            want = original.read(int(i))
            assert np.array_equal(frame.good, want.good)
            assert np.array_equal(frame.counts[frame.good], want.counts[want.good])
    with h5py.File(cxi) as h5:
        assert [e.decode() for e in h5["/entry_1/result_1/event"][()]] == list(hits["event"])
        assert h5["/entry_1/result_1/nPeaks"].shape == (len(hits),)


# ---------------------------------------------------------------------- (c) flagged pixels
def test_flagged_pixels_of_a_water_frame_are_not_a_hit_unless_unmasked(models, tmp_path):
    data = frame_set(0, 5, 9000.0, 0.05, seed=31)
    flagged = np.zeros((PX, PX), np.uint32)
    flagged[12:14, 30:34] = 8          # hot pixels the detector flags and writes as 0xFFFFFFFF
    flagged[50, 9] = 16
    data[:, flagged > 0] = MARK32
    (tmp_path / "masked").mkdir()
    (tmp_path / "raw").mkdir()
    masked = run_pipeline(nxmx_master(tmp_path / "masked", data, flagged), checkpoints(models))
    raw = run_pipeline(nxmx_master(tmp_path / "raw", data, np.zeros_like(flagged), applied=False,
                                   saturation=2 ** 40), checkpoints(models))
    assert not masked["is_hit"].any() and masked["n_peaks"].isna().all()
    assert (masked["n_masked"] == 9).all() and (raw["n_masked"] == 0).all()
    assert raw["is_hit"].all()                       # 2**32 - 1 photons read as counts: a different answer
    assert (raw["hit_probability"] - masked["hit_probability"]).abs().min() > 0.5


# ---------------------------------------------------------------------- (d) a moved beam centre
def test_a_shifted_beam_centre_with_its_geometry_gives_the_same_answers(models, tmp_path):
    """The same 64 x 64 pixels (water around the beam + spots) on a 384 x 384 canvas whose other pixels are bad
    regions, at window corners (128, 128) and (192, 192): a shift of 64 px = 16 bins, the hit network's total
    stride (4 stride-2 convolutions) in bins, and far enough (>= 32 bins) from the edges that padding sees the
    same background; the geometry moves the beam with the window, so the radius channel moves too."""
    content = frame_set(3, 1, 7000.0, 0.04, seed=41)
    canvas = 384
    tables = {}
    for corner in (128, 192):
        frames = np.zeros((len(content), canvas, canvas), np.uint32)
        frames[:, corner:corner + PX, corner:corner + PX] = content
        text = geom_text((canvas, canvas), (corner + PX / 2, corner + PX / 2), clen=0.04, energy=7000.0,
                         window=(corner, corner, PX))
        tables[corner] = run_pipeline(write_stack(tmp_path / f"at{corner}.h5", frames, text), checkpoints(models),
                                      warn=None)
    trained = run_pipeline(write_stack(tmp_path / "trained.h5", content, geom_text(clen=0.04, energy=7000.0)),
                           checkpoints(models))
    a, b = tables[128], tables[192]
    np.testing.assert_allclose(a["hit_probability"], b["hit_probability"], atol=1e-3)
    assert a["is_hit"].tolist()[:3] == [True, True, True] == trained["is_hit"].tolist()[:3]
    for column in ("is_hit", "photon_energy_ev", "clen_m", "n_peaks"):
        assert a[column].equals(b[column]), column
    # the water-profile models see the same rings: the same answers as on the trained layout itself
    both = a["is_hit"] & trained["is_hit"]
    assert (a.loc[both, "photon_energy_ev"] == 7000.0).all() and (a.loc[both, "clen_m"] == 0.04).all()
    for column in ("photon_energy_ev", "clen_m", "photon_energy_probability", "clen_probability"):
        np.testing.assert_allclose(a[column], b[column], atol=1e-5)
        np.testing.assert_allclose(a.loc[both, column], trained.loc[both, column], atol=1e-5)


# ---------------------------------------------------------------------- (e) the EIGER2 4M layout
def test_an_eiger2_4m_frame_runs_with_the_shipped_geometry_and_one_warning_per_kind(models, tmp_path, capsys):
    geom_path = REPO / "config" / "geometry" / "eiger2_4m.geom"
    geometry = read_geometry(geom_path)
    rng = np.random.default_rng(51)
    water = expected_water(geometry, 9000.0, 0.05)
    frames = rng.poisson(water, size=(2, *geometry.shape)).astype(np.uint32)
    frames[0, 1500:1503, 700:703] += 200
    path = tmp_path / "eiger2.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset(DATA, data=frames, chunks=(1, *geometry.shape), **hdf5plugin.Bitshuffle(cname="lz4"))
    out = tmp_path / "eiger2.csv"
    assert main(["run", str(path), "--models", str(models), "--geometry", str(geom_path), "-o", str(out),
                 "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert 1 <= len(err) <= 2 and all(line.startswith("cxlspeaks: warning: ") for line in err), err
    assert "binned frames have shape (541, 517)" in err[0] and "Traceback" not in "".join(err)
    assert any("camera length 0.15 m" in line for line in err)       # the shipped file's clen: not trained
    table = pd.read_csv(out, dtype={"n_peaks": "Int64"})
    assert list(table["event"]) == ["//0", "//1"]
    assert table["hit_probability"].between(0, 1).all()
    assert (table["n_masked"] == np.count_nonzero(~geometry.mask)).all() and (table["n_saturated"] == 0).all()
    hits = table[table["is_hit"]]
    assert hits["photon_energy_ev"].isin(ENERGIES).all() and hits["clen_m"].isin(CLENS).all()
    assert (hits["n_peaks"] >= 0).all()


# ---------------------------------------------------------------------- (f) an event list of two files
def test_an_event_list_of_two_files_with_events(models, tmp_path, capsys):
    text = geom_text()
    a = write_stack(tmp_path / "a.h5", frame_set(2, 1, 9000.0, 0.05, seed=61), text)
    b = write_stack(tmp_path / "b.h5", frame_set(1, 2, 9000.0, 0.05, seed=62), text)
    lst = tmp_path / "events.lst"
    lst.write_text("a.h5 //1\n; a comment\nb.h5 //0\nb.h5 //2\n")
    cxi = tmp_path / "out" / "hits.cxi"
    table = run_pipeline(lst, checkpoints(models), tmp_path / "rows.csv", cxi_output=cxi)
    assert list(table["frame"]) == [0, 1, 2]
    assert list(table["event"]) == ["a.h5 //1", "b.h5 //0", "b.h5 //2"]
    assert [p.rsplit("/", 1)[1] for p in table["source_file"]] == ["a.h5", "b.h5", "b.h5"]
    direct = pd.concat([run_pipeline(a, checkpoints(models)).iloc[[1]], run_pipeline(b, checkpoints(models)).iloc[[0, 2]]],
                       ignore_index=True)
    pd.testing.assert_frame_equal(table[SCORES], direct[SCORES])
    assert table["is_hit"].tolist() == [True, True, False]
    with h5py.File(cxi) as h5:
        assert h5[DATA].shape == (2, PX, PX) and h5["/entry/data/mask"].shape == (2, PX, PX)
        assert [e.decode() for e in h5["/entry_1/result_1/event"][()]] == ["a.h5 //1", "b.h5 //0"]
    assert not list(cxi.parent.glob(".*tmp"))     # no spool left behind
    assert capsys.readouterr().err == ""


def test_an_output_that_is_a_listed_frames_file_is_refused(models, tmp_path, capsys):
    text = geom_text()
    for name in ("a.h5", "b.h5"):
        write_stack(tmp_path / name, frame_set(1, 0, 9000.0, 0.05, seed=71), text)
    lst = tmp_path / "events.lst"
    lst.write_text("a.h5\nb.h5 //0\n")
    for name in ("a.h5", "b.h5"):
        assert main(["run", str(lst), "--models", str(models), "-o", str(tmp_path / name), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "frames file listed in the input" in err[0] and name in err[0], err
