"""Settings, frame files, splits and the one-line errors of bad input."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from cxlspeaks.crystal import StructureError, download_pdb, load_crystal, read_crystal, save_crystal
from cxlspeaks.dataset import stratified_split
from cxlspeaks.io import DataFileError, FrameStackWriter, read_dataset
from cxlspeaks.settings import DatasetSettings, dataset_settings
from cxlspeaks.simulate.nuisances import Nuisances

from conftest import REPO


def test_schema_defaults_are_the_settings_defaults():
    """The config schema and the DatasetSettings dataclass state the same defaults (one meaning per key)."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    schema_defaults = {k: v["default"] for k, v in
                       schema["properties"]["defaults"]["allOf"][1]["properties"].items()}
    fields = {f.name: f.default for f in dataclasses.fields(DatasetSettings)
              if f.name not in ("name", "photon_energy_ev", "clen_m")}
    # the nuisances mapping defaults to {} in the schema, i.e. Nuisances() with every nuisance off
    assert Nuisances.from_mapping(schema_defaults["nuisances"]) == fields["nuisances"] == Nuisances()
    assert {k: v for k, v in schema_defaults.items() if k != "nuisances"} == {k: v for k, v in fields.items()
                                                                              if k != "nuisances"}
    assert set(schema["$defs"]["settings"]["properties"]) == set(fields) | {"photon_energy_ev", "clen_m"}
    nuisance_keys = schema["$defs"]["settings"]["properties"]["nuisances"]["properties"]
    assert set(nuisance_keys) == {f.name for f in dataclasses.fields(Nuisances)}


def test_dataset_settings_overlay_defaults():
    config = {"defaults": {"frames": 10, "n_photons": 1e8},
              "datasets": {"a": {"photon_energy_ev": 7000.0, "clen_m": 0.2, "n_photons": 2e8}}}
    settings = dataset_settings(config, "a")
    assert (settings.frames, settings.n_photons, settings.beam.n_photons) == (10, 2e8, 2e8)
    assert settings.n_shards == 1 and list(settings.shard_frames(0)) == list(range(10))
    with pytest.raises(KeyError, match="unknown setting 'colour'"):
        dataset_settings({"datasets": {"a": {"photon_energy_ev": 1.0, "clen_m": 1.0, "colour": 1}}}, "a")


def test_shards_cover_every_frame_once():
    settings = DatasetSettings(name="x", photon_energy_ev=7000.0, clen_m=0.15, frames=23, frames_per_shard=5)
    covered = [i for s in range(settings.n_shards) for i in settings.shard_frames(s)]
    assert covered == list(range(23)) and settings.n_shards == 5
    assert settings.n_empty == round(23 * 0.3)


def test_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "frames.h5"
    with pytest.raises(RuntimeError):
        with FrameStackWriter(path, 3, (8, 8), 4) as out:
            out.write_frame(0, np.ones((8, 8), np.uint32), None, None)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_too_many_peaks_is_an_error(tmp_path):
    peaks = {k: np.zeros(5) for k in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakH", "peakK",
                                      "peakL")}
    with pytest.raises(ValueError, match="more than max_peaks"):
        with FrameStackWriter(tmp_path / "f.h5", 1, (4, 4), 4) as out:
            out.write_frame(0, np.zeros((4, 4), np.uint32), None, None, peaks)
    assert not (tmp_path / "f.h5").exists()


def test_missing_corrupt_and_misshaped_files_give_one_line_errors(tmp_path):
    with pytest.raises(DataFileError, match="file not found"):
        read_dataset(tmp_path / "missing.h5", "/x")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(DataFileError, match="not a readable HDF5 file") as info:
        read_dataset(corrupt, "/x")
    assert str(corrupt) in str(info.value) and "\n" not in str(info.value)
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(DataFileError, match="has no dataset /y"):
        read_dataset(good, "/y")
    with pytest.raises(DataFileError, match="1 dimensions, expected 2"):
        read_dataset(good, "/x", ndim=2)


def test_reflection_file_round_trip(tmp_path, synthetic_crystal):
    save_crystal(synthetic_crystal, tmp_path / "r.h5")
    again = read_crystal(tmp_path / "r.h5")
    np.testing.assert_array_equal(again.hkl, synthetic_crystal.hkl)
    np.testing.assert_array_equal(again.intensity, synthetic_crystal.intensity)
    assert again.cell_parameters == pytest.approx(synthetic_crystal.cell_parameters)
    assert again.spacegroup.hm == synthetic_crystal.spacegroup.hm


def test_offline_download_says_how_to_provide_the_structure(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(StructureError) as info:
        download_pdb("1IC6", tmp_path / "1IC6.pdb")
    message = str(info.value)
    assert "cannot download PDB 1IC6" in message and "1IC6.pdb" in message and "structure" in message
    assert "\n" not in message and not (tmp_path / "1IC6.pdb").exists()


def test_stratified_split_is_seeded_and_balanced():
    frames = pd.DataFrame({"dataset": ["a"] * 50 + ["b"] * 31, "frame": list(range(50)) + list(range(31)),
                           "has_peaks": [True] * 40 + [False] * 10 + [True] * 21 + [False] * 10})
    first = stratified_split(frames, seed=1)
    assert first.equals(stratified_split(frames, seed=1))
    assert not first.equals(stratified_split(frames, seed=2))
    merged = first.merge(frames, on=["dataset", "frame"])
    for _, group in merged.groupby(["dataset", "has_peaks"]):
        assert abs((group["subset"] == "test").sum() - 0.2 * len(group)) <= 1


def test_synthetic_crystal_loads_without_files():
    crystal = load_crystal(None, d_min_A=10.0)
    assert len(crystal.hkl) > 100 and crystal.source.startswith("synthetic")


def test_the_default_structure_is_shipped_and_needs_no_network(tmp_path, monkeypatch):
    """1IC6 comes from the package (the default run works offline): the right cell and space group, no download."""
    import urllib.request

    import gemmi

    from cxlspeaks.crystal import fetch_structure, read_structure

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    path = fetch_structure("1ic6", tmp_path / "1IC6.pdb")
    assert calls == []  # the shipped copy, no download
    structure = read_structure(path)
    assert structure.spacegroup_hm.replace(" ", "") == "P43212"
    assert structure.cell.a == pytest.approx(67.288) and structure.cell.c == pytest.approx(106.582)
    # The proteinase K chain: 279 residues (Betzel et al. 2001).
    assert sum(1 for residue in structure[0][0] if gemmi.find_tabulated_residue(residue.name).is_amino_acid()) == 279
    with pytest.raises(StructureError):
        fetch_structure("9ZZZ", tmp_path / "9ZZZ.pdb", timeout_s=0.001)


def test_structure_job_of_the_default_config_runs_offline(tmp_path):
    """The default config's structure job, run by Snakemake with every socket refused, writes 1IC6."""
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(*a, **k):\n    raise OSError('network unavailable (test)')\n"
        "socket.socket.connect = _refuse\nsocket.create_connection = _refuse\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                             "--configfile", str(REPO / "config" / "config.yaml"), "--cores", "1",
                             "resources/structure/1IC6.pdb"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = (tmp_path / "resources" / "structure" / "1IC6.pdb").read_text()
    assert "CRYST1   67.288   67.288  106.582" in text


def test_test_event_list_names_exactly_the_test_frames(tmp_path):
    from cxlspeaks.dataset import write_test_event_list

    split = tmp_path / "all.csv"
    split.write_text("dataset,frame,subset\n01,0,train\n01,3,test\n02,1,test\n02,2,train\n")
    frames = {"01": tmp_path / "a" / "frames.h5", "02": tmp_path / "b" / "frames.h5"}
    write_test_event_list(split, frames, tmp_path / "test.lst")
    assert (tmp_path / "test.lst").read_text().splitlines() == [f"{tmp_path / 'a' / 'frames.h5'} //3",
                                                                 f"{tmp_path / 'b' / 'frames.h5'} //1"]
    with pytest.raises(DataFileError):
        write_test_event_list(split, {"01": frames["01"]}, tmp_path / "bad.lst")
