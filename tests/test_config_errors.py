"""Malformed configs stop before any job with one line `config error: KEY: ...`; config/test.yaml runs alone.

One table of malformed configs, each a small change of config/test.yaml: a dict patch (a function that edits the
loaded config) or a raw YAML edit (for what a dict cannot hold: duplicate keys, `.nan`, `.inf`, integer keys).
Every case goes through the package's checks in-process (cxlspeaks.config_checks.check_config, exactly what
workflow/rules/common.smk calls); the cases marked `SNAKEMAKE` also go through `snakemake -n` end to end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxlspeaks import config_checks

from conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TINY = (REPO / "config" / "test.yaml").read_text()


def text_edit(old: str, new: str, count: int = 1):
    """A raw YAML edit: replace ``old`` (which must occur) by ``new`` in config/test.yaml's text."""
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, count)
    return edit


def dataset(**entry):
    return {"clen_m": 0.15, "photon_energy_ev": 6000.0, **entry}


def attribute(config, name, **entry):
    config["training"]["attributes"][name] = {"model": "hit_fcn", "split": "all", "epochs": 1, **entry}


NAN = float("nan")
# (id, edit of the config dict or text_edit(...), text the `config error:` line must name)
CASES = [
    # non-finite numbers, everywhere
    ("nan-energy", lambda c: c["datasets"]["01"].update(photon_energy_ev=NAN), "datasets.01.photon_energy_ev"),
    ("yaml-nan-empty", text_edit("empty_percent: 50", "empty_percent: .nan"), "defaults.empty_percent"),
    ("yaml-inf-photons", text_edit("max_peaks: 256", "max_peaks: 256\n  n_photons: .inf"), "defaults.n_photons"),
    ("yaml-minus-inf-clen", text_edit("clen_m: 0.25", "clen_m: -.inf"), "datasets.02.clen_m"),
    ("nan-learning-rate", lambda c: c["training"]["attributes"]["hit"].update(learning_rate=NAN),
     "training.attributes.hit.learning_rate"),
    ("nan-threshold", lambda c: c["training"].update(pipeline={"threshold": NAN}), "training.pipeline.threshold"),
    ("inf-match-radius", lambda c: c["peaks"].update(match_radius_px=float("inf")), "peaks.match_radius_px"),
    # integers written as floats, and other wrong types
    ("float-frames", lambda c: c["defaults"].update(frames=6.0), "defaults.frames"),
    ("float-frames-of-dataset", lambda c: c["datasets"]["01"].update(frames=1.5), "datasets.01.frames"),
    ("float-epochs", lambda c: c["training"]["attributes"]["hit"].update(epochs=2.0),
     "training.attributes.hit.epochs"),
    ("float-bin-factor", lambda c: c["training"].update(bin_factor=4.0), "training.bin_factor"),
    ("float-seed", lambda c: c.update(seed=7.0), "seed"),
    ("bool-batch-size", lambda c: c["training"]["attributes"]["hit"].update(batch_size=True),
     "training.attributes.hit.batch_size"),
    ("string-frames", lambda c: c["defaults"].update(frames="many"), "defaults.frames"),
    # physical ranges
    ("energy-below-1-kev", lambda c: c["datasets"]["01"].update(photon_energy_ev=999.0),
     "datasets.01.photon_energy_ev"),
    ("energy-in-kev", lambda c: c["datasets"]["01"].update(photon_energy_ev=6.0), "datasets.01.photon_energy_ev"),
    ("energy-above-100-kev", lambda c: c["datasets"]["02"].update(photon_energy_ev=100001.0),
     "datasets.02.photon_energy_ev"),
    ("negative-energy", lambda c: c["datasets"]["01"].update(photon_energy_ev=-6000.0),
     "datasets.01.photon_energy_ev"),
    ("clen-below-1-cm", lambda c: c["datasets"]["01"].update(clen_m=0.005), "datasets.01.clen_m"),
    ("clen-in-mm", lambda c: c["datasets"]["01"].update(clen_m=150.0), "datasets.01.clen_m"),
    ("crystal-below-50-nm", lambda c: c["defaults"].update(crystal_size_m=1e-8), "defaults.crystal_size_m"),
    ("crystal-above-500-um", lambda c: c["defaults"].update(crystal_size_m=1e-3), "defaults.crystal_size_m"),
    ("photons-above-1e15", lambda c: c["defaults"].update(n_photons=1e16), "defaults.n_photons"),
    ("frames-above-1e7", lambda c: c["defaults"].update(frames=20_000_000), "defaults.frames"),
    ("bin-factor-of-the-detector", lambda c: c["training"].update(bin_factor=128), "training.bin_factor"),
    ("crop-larger-than-detector", lambda c: c["peaks"]["network"].update(crop_px=256), "peaks.network.crop_px"),
    # names
    ("dataset-dot", lambda c: c["datasets"].update({".": dataset()}), "datasets: name '.'"),
    ("dataset-dotdot", lambda c: c["datasets"].update({"..": dataset()}), "datasets: name '..'"),
    ("dataset-slash", lambda c: c["datasets"].update({"a/b": dataset()}), "datasets: name 'a/b'"),
    ("split-dotdot", lambda c: c["splits"].update({"..": {}}), "splits: name '..'"),
    ("split-space", lambda c: c["splits"].update({"a b": {}}), "splits: name 'a b'"),
    ("dataset-integer-name", text_edit('"01": {', "1: {"), "datasets: key 1"),
    ("empty-results-dir", lambda c: c.update(results_dir=""), "results_dir"),
    ("unknown-top-level-key", lambda c: c.update(colour="red"), "colour"),
    # duplicate keys in the file
    ("duplicate-default", text_edit("frames: 6\n", "frames: 6\n  frames: 8\n"), "duplicate key 'frames'"),
    ("duplicate-dataset", text_edit('  low: {', '  "01": {clen_m: 0.2, photon_energy_ev: 6000.0}\n  low: {'),
     "duplicate key '01'"),
    ("duplicate-top-level", text_edit("seed: 7\n", "seed: 7\nseed: 8\n"), "duplicate key 'seed'"),
    # attributes, models, targets, losses
    ("unknown-attribute", lambda c: attribute(c, "foo"), "training.attributes.foo"),
    ("attribute-prefix-without-underscore", lambda c: attribute(c, "hitx"), "training.attributes.hitx"),
    ("unknown-attribute-with-target", lambda c: attribute(c, "energy", model="paper_linear",
                                                          target="photon_energy_ev"), "training.attributes.energy"),
    ("target-contradicts-name", lambda c: c["training"]["attributes"]["hit"].update(target="clen_m"),
     "training.attributes.hit.target"),
    ("hit-with-linear-model", lambda c: c["training"]["attributes"]["hit"].update(model="water_ring_linear"),
     "training.attributes.hit.model"),
    ("energy-with-hit-model", lambda c: c["training"]["attributes"]["photon_energy"].update(model="hit_fcn"),
     "training.attributes.photon_energy.model"),
    ("bce-for-clen", lambda c: c["training"]["attributes"]["clen"].update(loss="bce"),
     "training.attributes.clen.loss"),
    ("pipeline-hit-is-oracle", lambda c: c["training"].update(pipeline={"hit": "hit_lowflux_dual"}),
     "training.pipeline.hit"),
    ("pipeline-energy-is-clen", lambda c: c["training"].update(pipeline={"photon_energy": "clen"}),
     "training.pipeline.photon_energy"),
    ("pipeline-missing-attribute", lambda c: c["training"].update(pipeline={"clen": "nope"}),
     "training.pipeline.clen"),
    # splits: classes, empty frames, test frames
    ("energy-on-one-energy", lambda c: (c["splits"].update(one={"datasets": ["01"]}),
                                        c["training"]["attributes"]["photon_energy"].update(split="one")),
     "training.attributes.photon_energy.split"),
    ("clen-on-one-clen", lambda c: c["training"]["attributes"]["clen"].update(split="lowflux"),
     "training.attributes.clen.split"),
    ("hit-without-empty-frames", lambda c: c["defaults"].update(empty_percent=0), "training.attributes.hit.split"),
    ("too-few-frames-for-a-test-frame", lambda c: c["defaults"].update(frames=2), "splits.all.test_fraction"),
    ("tiny-test-fraction", lambda c: c["splits"]["all"].update(test_fraction=0.05), "splits.all.test_fraction"),
    ("split-selects-nothing", lambda c: c["splits"].update(none={"datasets": ["01"], "flux": ["low"]}),
     "splits.none"),
    ("split-names-missing-dataset", lambda c: c["splits"].update(bad={"datasets": ["nope"]}), "splits.bad.datasets"),
    ("attribute-on-missing-split", lambda c: c["training"]["attributes"]["hit"].update(split="nope"),
     "training.attributes.hit.split"),
    ("peaks-on-missing-split", lambda c: c["peaks"].update(split="nope"), "peaks.split"),
    # files
    ("missing-geometry-file", lambda c: c["datasets"]["01"].update(detector="config/geometry/nope.geom"),
     "datasets.01.detector"),
    ("missing-structure-file", lambda c: c["structure"].update(synthetic=False, file="/nonexistent/1ic6.pdb"),
     "structure.file"),
]
# the cases that also go through `snakemake -n` (about 5 s each)
SNAKEMAKE = {"yaml-nan-empty", "yaml-inf-photons", "float-frames", "energy-in-kev", "bin-factor-of-the-detector",
             "dataset-dotdot", "dataset-integer-name", "duplicate-default", "unknown-attribute",
             "energy-on-one-energy", "hit-without-empty-frames", "missing-geometry-file"}


def write_case(edit, directory: Path) -> Path:
    """config/test.yaml with the case's edit, written to ``directory``/bad.yaml."""
    if getattr(edit, "__name__", "") == "edit":  # a text_edit
        text = edit(TINY)
    else:
        config = yaml.safe_load(TINY)
        edit(config)
        text = yaml.safe_dump(config)
    path = directory / "bad.yaml"
    path.write_text(text)
    return path


def test_the_table_is_large_and_the_tiny_config_itself_passes():
    assert len(CASES) >= 40 and len({case[0] for case in CASES}) == len(CASES)
    assert SNAKEMAKE <= {case[0] for case in CASES}
    config = yaml.safe_load(TINY)
    settings = config_checks.check_config(config, SCHEMA, [REPO / "config" / "test.yaml"], REPO,
                                          config_checks.snakemake_fill_defaults(SCHEMA))
    assert sorted(settings) == ["01", "02", "extreme", "low", "realistic"] and config["results_dir"] == "results/test"


@pytest.mark.parametrize("edit, key", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_malformed_config_is_refused_in_one_line_naming_the_key(tmp_path, edit, key):
    path = write_case(edit, tmp_path)
    config = yaml.safe_load(path.read_text())  # as Snakemake reads it: the last of two equal keys wins
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.check_config(config, SCHEMA, [path], REPO, config_checks.snakemake_fill_defaults(SCHEMA))
    message = str(error.value)
    assert "\n" not in message and key in message, message


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("edit, key", [case[1:] for case in CASES if case[0] in SNAKEMAKE],
                         ids=[case[0] for case in CASES if case[0] in SNAKEMAKE])
def test_snakemake_stops_before_any_job_with_one_config_error_line(tmp_path, edit, key):
    path = write_case(edit, tmp_path)
    result = snakemake("-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile", str(path), "-n",
                       cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1 and key in errors[0], output
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """The workflow's files in a fresh folder, as a user's checkout (no results, no .snakemake)."""
    root = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("workflow", "config", "profiles", "src", "envs"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name, ignore=ignore)
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    (root / "slurm").symlink_to("profiles/slurm")
    return root


def planned(output: str) -> dict[str, int]:
    block = output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M)}


def test_configfile_replaces_the_default_config_and_writes_to_its_own_folder(repo_copy):
    result = snakemake("--cores", "2", "--configfile", "config/test.yaml", "-n", cwd=repo_copy)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = planned(output)
    assert counts["geometry"] == counts["water"] == counts["assemble"] == 5  # the 5 tiny datasets, not 11
    assert "results/test/datasets/01/frames.h5" in output and "results/test/reports/index.html" in output
    assert not re.search(r"(?<![\w/])results/(datasets|reports|models|splits)/", output)
    default = snakemake("--cores", "2", "-n", cwd=repo_copy)
    assert default.returncode == 0 and planned(default.stdout + default.stderr)["geometry"] == 11
    assert "results/datasets/09/frames.h5" in default.stdout + default.stderr


def test_the_slurm_profile_dry_runs_the_tiny_config(repo_copy):
    result = snakemake("--profile", "slurm", "--configfile", "config/test.yaml", "-n", cwd=repo_copy)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert planned(output)["geometry"] == 5 and "results/test/" in output
