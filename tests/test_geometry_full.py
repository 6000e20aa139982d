"""The CrystFEL geometry format in full: units, per-frame values, mask keywords, module dims, rigid groups."""

from __future__ import annotations

import numpy as np
import pytest

from cxlspeaks.geometry import (EIGER2_4M_GAPS_FS, EIGER2_4M_GAPS_SS, GeometryError, MaskSpec, ValueRef,
                                eiger2_4m_geometry, parse_geometry, read_geometry, shipped_geometry)

from conftest import REPO

PANEL = "p/min_fs = 0\np/max_fs = 9\np/min_ss = 0\np/max_ss = 7\np/corner_x = -5\np/corner_y = -4\n"


def geom(top: str, panel: str = PANEL):
    return parse_geometry("res = 10000\n" + top + panel)


@pytest.mark.parametrize("clen, metres", [("95.3 mm", 0.0953), ("0.0953 m", 0.0953), ("0.0953", 0.0953)])
def test_clen_units(clen, metres):
    assert geom(f"clen = {clen}\n").clen_m == pytest.approx(metres)


@pytest.mark.parametrize("energy, ev", [("photon_energy = 7 keV", 7000), ("photon_energy = 7000 eV", 7000),
                                        ("photon_energy = 7000", 7000), ("wavelength = 1.0 A", 12398.419843320026),
                                        ("wavelength = 1e-10 m", 12398.419843320026)])
def test_photon_energy_units(energy, ev):
    assert geom(f"clen = 0.1\n{energy}\n").photon_energy_ev == pytest.approx(ev)


def test_clen_without_unit_above_ten_metres_is_refused_with_the_mm_hint(tmp_path):
    path = tmp_path / "det.geom"
    path.write_text("clen = 150\nres = 10000\n" + PANEL)
    with pytest.raises(GeometryError) as info:
        read_geometry(path)
    message = str(info.value)
    assert str(path) in message and "150 m" in message and "clen = 150 mm" in message and "\n" not in message
    path.write_text("clen = 150 mm\nres = 10000\n" + PANEL)
    assert read_geometry(path).clen_m == pytest.approx(0.15)


def test_wavelength_needs_a_unit():
    with pytest.raises(GeometryError, match="give the unit"):
        geom("clen = 0.1\nwavelength = 1.0\n")


def test_values_from_hdf5_paths_are_references_with_crystfel_default_units():
    g = geom("clen = /LCLS/detector_1/EncoderValue\nphoton_energy = /LCLS/photon_energy keV\n")
    assert g.clen_path == "/LCLS/detector_1/EncoderValue" and g.photon_energy_path == "/LCLS/photon_energy"
    assert not g.is_resolved and np.isnan(g.clen_m)
    clen_ref = g.panels[0].clen_ref
    assert clen_ref == ValueRef("clen", "/LCLS/detector_1/EncoderValue", "mm")  # CrystFEL: paths default to mm
    resolved = g.resolve({clen_ref: clen_ref.to_si(120.0), g.photon_energy_ref: g.photon_energy_ref.to_si(9.5)})
    assert resolved.is_resolved and resolved.clen_m == pytest.approx(0.12)
    assert resolved.photon_energy_ev == pytest.approx(9500)
    again = parse_geometry(g.to_geom_text())
    assert again.panels[0].clen_ref == clen_ref and again.photon_energy_ref == g.photon_energy_ref
    with pytest.raises(GeometryError, match="no value for"):
        g.resolve({})


def test_per_frame_coffset():
    g = geom("clen = 0.1\ncoffset = /det/coffset\n")
    ref = g.panels[0].coffset_ref
    assert ref.unit == "m" and g.resolve({ref: 0.01}).panels[0].distance_m == pytest.approx(0.11)


def test_every_mask_keyword_parses_and_round_trips():
    text = ("clen = 0.1\nmask = /m\nmask_file = m.h5\nmask_good = 0x1\nmask_bad = 0x6\n"
            "mask3_data = /entry/mask3\nmask3_badbits = 0xff\nflag_lessthan = -1\nflag_morethan = 60000\n"
            "flag_equal = 65535\nmask_edge_pixels = 1\n")
    g = geom(text)
    p = g.panels[0]
    assert p.masks == (MaskSpec(0, "/m", "m.h5", 1, 6), MaskSpec(3, "/entry/mask3", None, 0, 0xff))
    assert dict(p.flags) == {"lessthan": -1, "morethan": 60000, "equal": 65535} and p.mask_edge_pixels == 1
    again = parse_geometry(g.to_geom_text())
    assert again.panels[0].masks == p.masks and again.panels[0].flags == p.flags
    # CrystFEL's rule: bad unless all goodbits set, bad if any badbit set
    np.testing.assert_array_equal(p.masks[0].good(np.array([0, 1, 3, 5, 9])), [False, True, False, False, True])


def test_no_index_edge_pixels_and_bad_regions_in_the_mask():
    g = parse_geometry("clen = 0.1\nres = 10000\n" + PANEL + "p/mask_edge_pixels = 1\n"
                       "q/min_fs = 10\nq/max_fs = 19\nq/min_ss = 0\nq/max_ss = 7\nq/corner_x = 5\nq/corner_y = -4\n"
                       "q/no_index = true\n"
                       "badxy/min_x = -1\nbadxy/max_x = 1\nbadxy/min_y = -1\nbadxy/max_y = 1\n"
                       "badfs/min_fs = 2\nbadfs/max_fs = 2\nbadfs/min_ss = 0\nbadfs/max_ss = 7\nbadfs/panel = p\n")
    m = g.mask
    assert not m[:, 10:].any()  # no_index panel
    assert not m[0].any() and not m[:, 0].any() and not m[7].any() and not m[:, 9].any()  # edge pixels
    assert not m[:, 2].any()  # fs/ss region
    # x/y region: pixel centres within 1 px of the beam (corner -5, -4: pixel (fs 4, ss 3) has centre (-0.5, -0.5))
    assert not m[3, 4] and not m[4, 5] and m[2, 4] and m[3, 6]
    assert m.sum() == 8 * 6 - 6 - 4  # inner 8 x 6 pixels less the fs column (6) and the x/y square (4)


def test_rigid_groups_are_kept_and_written_back():
    text = ("clen = 0.1\nres = 10000\n" + PANEL + PANEL.replace("p/", "r/").replace("= -5", "= 5")
            + "rigid_group_a = p,r\nrigid_group_b = r\nrigid_group_collection_c = a,b\ngroup_all = p,r\n")
    g = parse_geometry(text)
    assert g.rigid_groups == {"a": ["p", "r"], "b": ["r"]} and g.rigid_group_collections == {"c": ["a", "b"]}
    assert g.groups == {"all": ["p", "r"]} and not g.header
    again = parse_geometry(g.to_geom_text())
    assert (again.rigid_groups, again.rigid_group_collections, again.groups) == (
        g.rigid_groups, g.rigid_group_collections, g.groups)
    with pytest.raises(GeometryError, match="rigid_group_x: unknown panel 'nope'"):
        parse_geometry(text + "rigid_group_x = p,nope\n")


def test_module_dims_stack_modules_in_the_slab_and_round_trip():
    text = ("clen = 0.1\nres = 10000\ndim0 = %\ndim2 = ss\ndim3 = fs\nmin_fs = 0\nmax_fs = 9\nmin_ss = 0\n"
            "max_ss = 7\na/dim1 = 0\na/corner_x = 0\na/corner_y = 0\nb/dim1 = 1\nb/corner_x = 0\nb/corner_y = 20\n"
            "badb/min_fs = 0\nbadb/max_fs = 9\nbadb/min_ss = 0\nbadb/max_ss = 0\nbadb/panel = b\n")
    g = parse_geometry(text)
    assert g.shape == (16, 10) and [p.module_index for p in g.panels] == [(0,), (1,)]
    assert g.panels[1].min_ss == 8 and g.panels[1].data_ss_range == (0, 7)
    assert not g.mask[8].any() and g.mask[0].all()  # the bad region is row 0 of module 1
    again = parse_geometry(g.to_geom_text())
    assert [(p.min_ss, p.max_ss, p.dims) for p in again.panels] == [(p.min_ss, p.max_ss, p.dims) for p in g.panels]


@pytest.mark.parametrize("line, message", [
    ("detector_shift_x = /shift m\n", "detector shifts are not supported"),
    ("electron_voltage = 200 kV\n", "electron diffraction"),
    ("p/bogus = 1\n", "p/bogus: unknown panel key"),
    ("data = /data/%/image\n", "per-frame dataset names"),
    ("photon_energy = 7 GeV\n", "unknown unit 'GeV'"),
    ("dim0 = ss\ndim1 = %\ndim2 = fs\n", r"placeholders \(%\) must come first"),
])
def test_refused_keys_are_one_line(line, message):
    with pytest.raises(GeometryError, match=message):
        geom("clen = 0.1\n" + line)


def test_eiger2_4m_shipped_geometry():
    g = eiger2_4m_geometry()
    assert g.shape == (2162, 2068) and shipped_geometry("eiger2_4m").shape == g.shape
    assert (REPO / "config/geometry/eiger2_4m.geom").read_text() == g.to_geom_text()
    mask = g.mask
    for lo, hi in EIGER2_4M_GAPS_FS:
        assert hi - lo + 1 == 12 and not mask[:, lo:hi + 1].any() and mask[0, lo - 1] and mask[0, hi + 1]
    for lo, hi in EIGER2_4M_GAPS_SS:
        assert hi - lo + 1 == 38 and not mask[lo:hi + 1].any()
    # 8 modules of 1028 x 512 pixels are what records
    assert mask.sum() == 8 * 1028 * 512
    assert g.panels[0].res == pytest.approx(1 / 75e-6)
