"""Frame sources: NXmx (legacy links and VDS), stacks, CXI, event lists; masks, markers, per-frame values."""

from __future__ import annotations

import h5py
import hdf5plugin
import numpy as np
import pytest

from cxlspeaks.geometry import parse_geometry
from cxlspeaks.io import DataFileError
from cxlspeaks.sources import (CXISource, EventListSource, FrameSource, NXmxSource, StackSource, open_source,
                               source_kind)

SS, FS, N = 48, 64, 5
MARK32 = 0xFFFFFFFF


def frames(n=N, seed=0):
    """Photon counts of n frames, each frame k has a unique value at pixel (ss=k, fs=k) to identify it."""
    data = np.random.default_rng(seed).poisson(2.0, (n, SS, FS)).astype(np.uint32)
    for k in range(n):
        data[k, k, k] = 1000 + k
    return data


def geom_text(extra="", data="/entry/data/data"):
    return (f"clen = 0.1\nres = 10000\nphoton_energy = 9 keV\ndata = {data}\ndim0 = %\ndim1 = ss\ndim2 = fs\n"
            f"{extra}p0/min_fs = 0\np0/max_fs = {FS - 1}\np0/min_ss = 0\np0/max_ss = {SS - 1}\n"
            "p0/corner_x = -32\np0/corner_y = -24\n")


def nxmx_detector(h5, pixel_mask, applied=True):
    det = h5.create_group("/entry/instrument/detector")
    det["detector_distance"] = 0.12
    det["beam_center_x"] = 20.5
    det["beam_center_y"] = 30.5
    det["x_pixel_size"] = 75e-6
    det["y_pixel_size"] = 75e-6
    det["sensor_material"] = "CdTe"
    det["bit_depth_image"] = 32
    det["saturation_value"] = 500
    det["pixel_mask_applied"] = applied
    det.create_group("detectorSpecific")["pixel_mask"] = pixel_mask
    det["detectorSpecific/nimages"] = 3
    h5["/entry/instrument/beam/incident_wavelength"] = 1.0
    h5["/entry/instrument/beam/incident_wavelength"].attrs["units"] = "angstrom"


def pixel_mask():
    mask = np.zeros((SS, FS), np.uint32)
    mask[:, 40:42] = 1  # a module gap (bit 0)
    mask[5, 7] = 2  # dead
    mask[6, 8] = 8  # hot
    return mask


@pytest.fixture
def legacy_master(tmp_path):
    data = frames()
    data[1, 10, 11] = MARK32  # the detector's marker value (mask applied)
    data[2, 12, 13] = 600  # saturated
    for k, (lo, hi) in enumerate(((1, 3), (4, 5)), start=1):
        with h5py.File(tmp_path / f"run_data_{k:06d}.h5", "w") as h5:
            ds = h5.create_dataset("/entry/data/data", data=data[lo - 1:hi], **hdf5plugin.Bitshuffle(cname="lz4"))
            ds.attrs["image_nr_low"], ds.attrs["image_nr_high"] = lo, hi
    with h5py.File(tmp_path / "run_master.h5", "w") as h5:
        nxmx_detector(h5, pixel_mask())
        for k in (1, 2):
            h5[f"/entry/data/data_{k:06d}"] = h5py.ExternalLink(f"run_data_{k:06d}.h5", "/entry/data/data")
    return tmp_path / "run_master.h5", data


def test_legacy_master_reads_every_frame_once_with_masks_and_metadata(legacy_master):
    path, data = legacy_master
    assert source_kind(path) == "nxmx"
    with open_source(path) as source:
        assert isinstance(source, NXmxSource) and isinstance(source, FrameSource) and len(source) == N
        got = list(source)
    assert [f.event for f in got] == [f"//{i}" for i in range(N)]
    assert [f.metadata["image_nr"] for f in got] == [1, 2, 3, 4, 5]
    assert [f.source_file.endswith(f"run_data_00000{1 if i < 3 else 2}.h5") for i, f in enumerate(got)] == [True] * N
    for i, f in enumerate(got):
        assert f.counts.dtype == np.float32 and f.counts.shape == (SS, FS) and f.counts[i, i] == 1000 + i
        assert not f.good[:, 40:42].any() and not f.good[5, 7] and not f.good[6, 8]
    assert not got[1].good[10, 11] and got[1].metadata["n_marker"] == 1 and got[0].good[10, 11]
    assert got[2].saturated[12, 13] and got[2].good[12, 13] and got[2].n_saturated == 2  # and the 1002 at (2, 2)
    meta = got[0].metadata
    assert meta["photon_energy_ev"] == pytest.approx(12398.42, rel=1e-6) and meta["clen_m"] == 0.12
    assert meta["pixel_size_m"] == 75e-6 and meta["saturation_value"] == 500 and meta["sensor_material"] == "CdTe"


def test_geometry_from_nxmx_puts_the_beam_centre_at_zero_angle(legacy_master):
    path, _ = legacy_master
    with NXmxSource(path) as source:
        geom = source.geometry
    assert geom.shape == (SS, FS) and geom.clen_m == 0.12 and geom.panels[0].res == pytest.approx(1 / 75e-6)
    # beam_center (20.5, 30.5) px from the first pixel's corner: the centre of pixel (fs 20, ss 30)
    assert geom.two_theta_rad[30, 20] == pytest.approx(0.0, abs=1e-12)
    assert geom.two_theta_rad[30, 21] == pytest.approx(np.arctan(75e-6 / 0.12))
    assert not geom.mask[:, 40:42].any() and geom.mask[:, 39].all()  # the gap columns became a bad region


def test_missing_data_file_is_one_line_naming_file_and_images(legacy_master):
    path, _ = legacy_master
    (path.parent / "run_data_000002.h5").unlink()
    with pytest.raises(DataFileError) as info:
        open_source(path)
    message = str(info.value)
    assert "run_data_000002.h5" in message and "images 4-6" in message and "\n" not in message


def make_vds(tmp_path, data, channels=None):
    """A v2024.2-style master: /entry/data/data a VDS over two data files (3-D, or 4-D with channels)."""
    parts = [(0, 3), (3, N)]
    shape = data.shape
    layout = h5py.VirtualLayout(shape=shape, dtype=data.dtype)
    for k, (lo, hi) in enumerate(parts, start=1):
        name = f"vds_data_{k:06d}.h5"
        with h5py.File(tmp_path / name, "w") as h5:
            h5.create_dataset("/entry/data/data", data=data[lo:hi])
        layout[lo:hi] = h5py.VirtualSource(name, "/entry/data/data", shape=(hi - lo, *shape[1:]))
    with h5py.File(tmp_path / "vds_master.h5", "w") as h5:
        nxmx_detector(h5, pixel_mask())
        h5.create_group("/entry/data").create_virtual_dataset("data", layout, fillvalue=0)
        if channels:
            h5["/entry/data/channel"] = channels
            mask = pixel_mask()
            mask[0, 0] = 4  # cold, only in threshold_2's own mask
            h5[f"/entry/instrument/detector/{channels[1]}_channel/pixel_mask"] = mask
    return tmp_path / "vds_master.h5"


def test_vds_master_reads_like_the_legacy_one(tmp_path):
    data = frames()
    with open_source(make_vds(tmp_path, data)) as source:
        got = list(source)
    assert len(got) == N and all(np.array_equal(f.counts, data[i].astype(np.float32)) for i, f in enumerate(got))
    assert not got[0].good[:, 40].any()


def test_two_channel_vds_picks_the_channel_by_name_or_index(tmp_path):
    data = np.stack([frames(), frames(seed=1) * 2], axis=1)
    path = make_vds(tmp_path, data, channels=["threshold_1", "threshold_2"])
    with pytest.raises(DataFileError, match="2 channels"):
        open_source(path)
    with open_source(path, channel="threshold_2") as by_name, open_source(path, channel=1) as by_index:
        a, b = list(by_name), list(by_index)
    assert all(np.array_equal(x.counts, y.counts) for x, y in zip(a, b))
    np.testing.assert_array_equal(a[4].counts, data[4, 1].astype(np.float32))
    assert a[0].metadata["channel"] == "threshold_2" and not a[0].good[0, 0]
    with open_source(path, channel=0) as first:
        assert first.read(0).good[0, 0]


def test_missing_vds_source_is_an_error_not_zeros(tmp_path):
    path = make_vds(tmp_path, frames())
    (tmp_path / "vds_data_000002.h5").unlink()
    with pytest.raises(DataFileError) as info:
        open_source(path)
    assert "vds_data_000002.h5" in str(info.value) and "images 4-5" in str(info.value)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.float32])
@pytest.mark.parametrize("compression", ["none", "lz4", "bitshuffle"])
def test_dtypes_and_compressions_give_identical_counts(tmp_path, dtype, compression):
    data = frames()
    kwargs = {"none": {}, "lz4": dict(hdf5plugin.LZ4()), "bitshuffle": dict(hdf5plugin.Bitshuffle())}[compression]
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("/entry/data/data", data=data.astype(dtype), chunks=(1, SS, FS), **kwargs)
    with open_source(path, geometry=parse_geometry(geom_text())) as source:
        assert isinstance(source, StackSource)
        counts = np.stack([f.counts for f in source])
    np.testing.assert_array_equal(counts, data.astype(np.float32))


def test_nan_pixels_are_masked_and_counted_and_a_mostly_nan_frame_is_refused(tmp_path):
    data = frames().astype(np.float32)
    data[0, 3, 4] = np.nan
    data[1, 3, 5] = np.inf
    data[2, :30] = np.nan
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = data
    with StackSource(path, parse_geometry(geom_text())) as source:
        f0, f1 = source.read(0), source.read(1)
        assert not f0.good[3, 4] and f0.metadata["n_nonfinite"] == 1 and not f1.good[3, 5]
        with pytest.raises(DataFileError, match="frame 2: .* good pixels are NaN or infinite"):
            source.read(2)


def test_per_frame_clen_from_an_hdf5_path(tmp_path):
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = frames()
        h5["/LCLS/detector_1/EncoderValue"] = np.array([100.0, 100.0, 120.0, 150.0, 150.0])  # mm
    geom = parse_geometry(geom_text().replace("clen = 0.1", "clen = /LCLS/detector_1/EncoderValue"))
    assert geom.clen_path == "/LCLS/detector_1/EncoderValue" and np.isnan(geom.clen_m)
    with StackSource(path, geom) as source:
        got = list(source)
    assert [f.metadata["clen_m"] for f in got] == pytest.approx([0.1, 0.1, 0.12, 0.15, 0.15])
    assert [f.geometry.clen_m for f in got] == pytest.approx([0.1, 0.1, 0.12, 0.15, 0.15])
    z = got[2].geometry.pixel_positions_m[0, 0, 2]
    assert z == pytest.approx(0.12)


def test_geometry_masks_and_flags_apply_per_frame(tmp_path):
    mask_path = tmp_path / "masks" / "bad.h5"
    mask_path.parent.mkdir()
    file_mask = np.zeros((SS, FS), np.uint8)
    file_mask[2, 3] = 1
    with h5py.File(mask_path, "w") as h5:
        h5["/mask"] = file_mask
    data = frames()
    data[0, 9, 9] = 60000
    frame_mask = np.ones((N, SS, FS), np.uint16)
    frame_mask[3, 1, 2] = 0
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = data
        h5["/entry/data/mask"] = frame_mask
    extra = ("mask0_data = /mask\nmask0_file = masks/bad.h5\nmask0_badbits = 0x1\n"
             "mask1_data = /entry/data/mask\nmask1_goodbits = 1\nflag_morethan = 50000\n"
             "mask_edge_pixels = 1\n")
    geom_path = tmp_path / "det.geom"
    geom_path.write_text(geom_text(extra) + "bad_a/min_fs = 20\nbad_a/max_fs = 21\nbad_a/min_ss = 0\n"
                         "bad_a/max_ss = 47\n")
    with StackSource(path, geom_path) as source:
        got = list(source)
    for f in got:
        assert not f.good[2, 3] and not f.good[:, 20:22].any() and not f.good[0].any() and f.good[1, 1]
    assert not got[0].good[9, 9] and got[1].good[9, 9]
    assert not got[3].good[1, 2] and got[2].good[1, 2]
    mask_path.unlink()
    with pytest.raises(DataFileError, match="mask0_file = masks/bad.h5: mask file not found"):
        StackSource(path, geom_path)


CXI_GEOM = """clen = 0.1 m
res = 10000
photon_energy = /LCLS/photon_energy_eV
data = /entry_1/data_1/data
mask = /entry_1/data_1/mask
mask_good = 0x0
mask_bad = 0xffff
dim0 = %
dim1 = ss
dim2 = fs
top/min_fs = 0
top/max_fs = 63
top/min_ss = 24
top/max_ss = 47
top/corner_x = -32
top/corner_y = 2
bottom/min_fs = 0
bottom/max_fs = 63
bottom/min_ss = 0
bottom/max_ss = 23
bottom/corner_x = 32
bottom/corner_y = -2
bottom/fs = -1x
bottom/ss = -1y
rigid_group_q0 = top,bottom
rigid_group_collection_all = q0
"""


def test_cheetah_cxi_with_a_two_panel_geometry(tmp_path):
    data = frames().astype(np.float32)
    mask = np.zeros((N, SS, FS), np.uint16)
    mask[:, 30, 5] = 1
    path = tmp_path / "r0001.cxi"
    with h5py.File(path, "w") as h5:
        h5["/entry_1/data_1/data"] = data
        h5["/entry_1/data_1/mask"] = mask
        h5["/LCLS/photon_energy_eV"] = np.full(N, 9500.0)
    geom = parse_geometry(CXI_GEOM)
    assert source_kind(path) == "cxi"
    with open_source(path, geometry=geom) as source:
        assert isinstance(source, CXISource) and len(source) == N
        got = list(source)
    assert all(f.metadata["photon_energy_ev"] == 9500.0 for f in got)
    assert not got[0].good[30, 5] and got[0].good[29, 5]
    # the bottom panel is the top one turned by 180 degrees about the beam: first pixels mirror through the beam
    pos = got[0].geometry.pixel_positions_m
    np.testing.assert_allclose(pos[24, 0, :2], -pos[0, 0, :2])
    np.testing.assert_allclose(pos[47, 63, :2], -pos[23, 63, :2])
    with pytest.raises(DataFileError, match="carries no CrystFEL geometry"):
        open_source(path)


def test_event_list_with_whole_files_and_events_and_relative_paths(tmp_path):
    (tmp_path / "data").mkdir()
    data = frames()
    for name in ("a.h5", "b.h5"):
        with h5py.File(tmp_path / "data" / name, "w") as h5:
            h5["/entry/data/data"] = data
    lst = tmp_path / "lists" / "events.lst"
    lst.parent.mkdir()
    lst.write_text("../data/a.h5 //3\n; a comment\n../data/b.h5\n../data/a.h5 //0\n")
    geom = parse_geometry(geom_text())
    with open_source(lst, geometry=geom) as source:
        assert isinstance(source, EventListSource) and len(source) == 2 + N
        got = list(source)
    assert [f.event for f in got] == (["../data/a.h5 //3"] + [f"../data/b.h5 //{j}" for j in range(N)]
                                      + ["../data/a.h5 //0"])
    assert [int(f.counts.max()) for f in got] == [1003, 1000, 1001, 1002, 1003, 1004, 1000]
    lst.write_text("../data/a.h5 //9\n")
    with pytest.raises(DataFileError, match=r"a.h5 //9: .* holds 5 frames"):
        open_source(lst, geometry=geom)


def test_four_d_module_array(tmp_path):
    modules = np.stack([frames()[:, :24], frames(seed=2)[:, :24]], axis=1)  # (N, 2, 24, 64)
    path = tmp_path / "modules.h5"
    with h5py.File(path, "w") as h5:
        h5["/data/modules"] = modules
    text = ("clen = 95 mm\nres = 10000\ndata = /data/modules\ndim0 = %\ndim2 = ss\ndim3 = fs\nmin_fs = 0\n"
            "max_fs = 63\nmin_ss = 0\nmax_ss = 23\nm0/dim1 = 0\nm0/corner_x = -32\nm0/corner_y = 0\n"
            "m1/dim1 = 1\nm1/corner_x = -32\nm1/corner_y = -24\n")
    with StackSource(path, parse_geometry(text)) as source:
        f = source.read(4)
    np.testing.assert_array_equal(f.counts[:24], modules[4, 0])
    np.testing.assert_array_equal(f.counts[24:], modules[4, 1])
    assert f.metadata["clen_m"] == pytest.approx(0.095)


def test_unknown_layout_is_one_line(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5["/something"] = 1
    with pytest.raises(DataFileError, match="unknown layout"):
        open_source(path)


def test_a_frames_file_with_peak_lists_is_a_stack_not_a_cheetah_cxi(tmp_path):
    """cxlspeaks frames files hold /entry_1/result_1 (true peaks) beside /entry/data/data: still a stack."""
    import h5py

    from cxlspeaks.sources import source_kind

    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = np.zeros((2, 4, 5), np.uint32)
        h5["/entry_1/result_1/nPeaks"] = np.zeros(2, np.int32)
    assert source_kind(path) == "stack"
    cheetah = tmp_path / "cheetah.cxi"
    with h5py.File(cheetah, "w") as h5:
        h5["/entry_1/data_1/data"] = np.zeros((2, 4, 5), np.float32)
    assert source_kind(cheetah) == "cxi"
