"""Byte-reproducible checkpoints, and cxlspeaks' HDF5 writers with HDF5_PLUGIN_PATH set to hdf5plugin's folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from cxlspeaks import crystfel_env, hdf5plugin_dir
from cxlspeaks.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cxlspeaks.train import TrainConfig, train_attribute

from test_models_train import SHAPE, _features


@pytest.fixture()
def training_set(tmp_path):
    """test_models_train's tiny features files (two datasets), with a radius_m image for newer readers."""
    import h5py
    import numpy as np
    import pandas as pd

    from cxlspeaks.features import FEATURES

    features = {}
    for k, (seed, energy) in {"a": (1, 7000.0), "b": (2, 8000.0)}.items():
        features[k] = _features(tmp_path / f"{k}.h5", 24, 24, seed, energy=energy)
        with h5py.File(features[k], "a") as h5:
            if "radius_m" not in h5[FEATURES]:
                h5[FEATURES]["radius_m"] = np.full(SHAPE, 0.01, np.float32)
    rows = [(d, f, "test" if f % 5 == 0 else "train") for d in features for f in range(48)]
    split = tmp_path / "split.csv"
    pd.DataFrame(rows, columns=["dataset", "frame", "subset"]).to_csv(split, index=False)
    return features, split


def content() -> dict:
    torch.manual_seed(1)
    return dict(model_state={"w": torch.randn(3, 4), "b": torch.zeros(3)}, optimizer_state={}, epoch=2,
                config={"attribute": "hit", "model": "hit_fcn"}, class_names=["no peaks", "peaks"])


def test_the_same_content_saved_to_two_paths_gives_the_same_bytes(tmp_path):
    save_checkpoint(tmp_path / "one.pt", **content())
    save_checkpoint(tmp_path / "sub" / "another_name.pt", **content())
    first = (tmp_path / "one.pt").read_bytes()
    assert first == (tmp_path / "sub" / "another_name.pt").read_bytes()
    names = zipfile.ZipFile(tmp_path / "one.pt").namelist()
    assert all(name.startswith("archive/") for name in names), names   # not the temporary file's name
    assert not list(tmp_path.glob(".*.part"))
    back = load_checkpoint(tmp_path / "one.pt", "hit")
    assert torch.equal(back["model_state"]["w"], content()["model_state"]["w"])
    # plain torch.save to a file records that file's name: the reason save_checkpoint serialises in memory
    torch.save(content(), tmp_path / "plain.pt")
    assert (tmp_path / "plain.pt").read_bytes() != first


def test_a_tiny_training_twice_gives_identical_checkpoint_bytes(training_set, tmp_path):
    features, split = training_set
    config = TrainConfig(attribute="hit", model="hit_fcn", epochs=2, batch_size=8, seed=4)
    for run in ("a", "b"):
        train_attribute(config, features, split, tmp_path / run / "checkpoint.pt", tmp_path / run / "history.csv",
                        progress=False)
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == (tmp_path / "b" / "checkpoint.pt").read_bytes()


def test_missing_checkpoint_names_the_snakemake_target(tmp_path):
    with pytest.raises(CheckpointError, match=r"snakemake --cores 2 results/models/clen/checkpoint.pt"):
        load_checkpoint(tmp_path / "nothing.pt", "clen")


# ---------------------------------------------------------------------- HDF5_PLUGIN_PATH
WRITE = textwrap.dedent("""
    import sys
    import numpy as np
    {imports}
    with h5py.File(sys.argv[1], "w") as h5:
        {create}
        stack[0] = np.arange(64, dtype=np.uint32).reshape(8, 8)
    with h5py.File(sys.argv[1], "r") as h5:
        assert int(h5["/entry/data/data"][0].sum()) == 2016
    print("written")
""")


def _run(tmp_path, imports: str, create: str, plugin_path: str) -> subprocess.CompletedProcess:
    script = tmp_path / "write.py"
    script.write_text(WRITE.format(imports=imports, create=create))
    env = dict(os.environ, HDF5_PLUGIN_PATH=plugin_path)
    return subprocess.run([sys.executable, str(script), str(tmp_path / "out.h5")], env=env, capture_output=True,
                          text=True, timeout=120)


def test_plain_h5py_bitshuffle_writes_fail_with_the_plugin_path_set(tmp_path):
    """The problem itself (if a later hdf5plugin fixes it, this test says so and the workaround can go)."""
    result = _run(tmp_path, "import h5py, hdf5plugin",
                  'stack = h5.create_dataset("/entry/data/data", shape=(1, 8, 8), dtype=np.uint32, chunks=(1, 8, 8), '
                  '**hdf5plugin.Bitshuffle(cname="lz4"))', str(hdf5plugin_dir()))
    assert result.returncode != 0 and "error during user callback" in result.stderr, result.stderr[-500:]


@pytest.mark.parametrize("spelling", ["plain", "trailing slash"])
def test_cxlspeaks_writers_are_immune_to_the_plugin_path(tmp_path, spelling):
    folder = str(hdf5plugin_dir()) + ("/" if spelling == "trailing slash" else "")
    result = _run(tmp_path, "import h5py\nfrom cxlspeaks.io import create_frame_stack",
                  'stack = create_frame_stack(h5.require_group("/entry/data"), "data", 1, (8, 8), np.uint32)', folder)
    assert result.returncode == 0 and "written" in result.stdout, result.stderr[-800:]


def test_frame_stack_writer_with_the_plugin_path_set(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        from cxlspeaks.io import FrameStackWriter, DATA, open_h5
        with FrameStackWriter(sys.argv[1], 2, (8, 8), max_peaks=4) as writer:
            writer.write_frame(1, np.ones((8, 8), np.uint32), None, None)
        with open_h5(sys.argv[1]) as h5:
            assert "32008" in h5[DATA]._filters and int(h5[DATA][1].sum()) == 64  # bitshuffle
        print("written")
    """))
    env = dict(os.environ, HDF5_PLUGIN_PATH=str(hdf5plugin_dir()))
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "f.h5")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "written" in result.stdout, result.stderr[-800:]


def test_another_plugin_folder_is_left_alone_and_crystfel_children_get_the_variable(tmp_path):
    code = "import os, cxlspeaks; print(os.environ.get('HDF5_PLUGIN_PATH'))"
    env = dict(os.environ, HDF5_PLUGIN_PATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(tmp_path)
    assert crystfel_env({"PATH": "/bin"}) == {"PATH": "/bin", "HDF5_PLUGIN_PATH": str(hdf5plugin_dir())}
    assert crystfel_env({"HDF5_PLUGIN_PATH": "/mine"})["HDF5_PLUGIN_PATH"] == "/mine"
    assert (hdf5plugin_dir() / "libh5bshuf.so").exists() or list(hdf5plugin_dir().glob("*bshuf*"))
