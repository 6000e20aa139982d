# Config validation, wildcard constraints and input functions shared by every rule.
from pathlib import Path
import re
import sys

# Config checks use the package of this checkout; the jobs' scripts import the installed package
# (`pip install -e .`, or the conda environments in envs/).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cxlspeaks import config_checks  # noqa: E402


def config_error(message):
    """Stop before any job with one line naming the config key."""
    sys.exit(f"config error: {message}")


# Every check before any job (src/cxlspeaks/config_checks.py): the files as written (duplicate keys), the raw
# values (NaN, inf, 6.0 for an integer), the schema, then what the schema cannot say (ranges that depend on the
# detector, attribute names, model/target/loss, classes and test frames of every split).
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
try:
    SETTINGS = config_checks.check_config(config, SCHEMA, workflow.configfiles, workflow.basedir,
                                          config_checks.snakemake_fill_defaults(SCHEMA))
except config_checks.ConfigError as exc:
    config_error(exc)
except ValueError as exc:  # a settings value the simulator's classes refuse
    config_error(exc)

DATASETS = list(config["datasets"])
SPLITS = list(config["splits"])
RESULTS = config["results_dir"].rstrip("/")


def res(path):
    """``path`` under the run's results folder (config ``results_dir``: results, results/test for the tiny run)."""
    return f"{RESULTS}/{path}"


def detector_input(wildcards):
    """A dataset's CrystFEL geometry file when its ``detector`` names one, so that editing the file reruns it."""
    detector = SETTINGS[wildcards.dataset].detector
    if config_checks.custom_detector(detector):
        return str(Path(workflow.basedir) / detector)
    return []


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    shard=r"\d+",
    split="|".join(re.escape(s) for s in SPLITS),


def structure_input(wildcards):
    """The structure file: structure.file, else the download of pdb_id; nothing for the synthetic crystal."""
    if config["structure"]["synthetic"]:
        return []
    if config["structure"]["file"] is not None:
        return config["structure"]["file"]
    return f"resources/structure/{config['structure']['pdb_id'].upper()}.pdb"


def canonical(mapping):
    """A mapping with sorted keys, so reordering the config file never looks like a parameter change."""
    return {key: mapping[key] for key in sorted(mapping)}


def settings_of(wildcards):
    """A dataset's settings as a plain dict (so a change to one dataset reruns only its jobs)."""
    return SETTINGS[wildcards.dataset].to_dict()


def shard_files(wildcards):
    n = SETTINGS[wildcards.dataset].n_shards
    return [res(f"datasets/{wildcards.dataset}/shards/{shard}.h5") for shard in range(n)]


def manifests_of_split(wildcards):
    chosen = config["splits"][wildcards.split]["datasets"] or DATASETS
    return {d: res(f"datasets/{d}/manifest.csv") for d in chosen}


def all_dataset_outputs():
    return expand(
        res("datasets/{dataset}/{name}"),
        dataset=DATASETS,
        name=["frames.h5", "detector.geom", "manifest.csv"],
    )


# ---------------------------------------------------------------------- training and evaluation
ATTRIBUTES = list(config["training"]["attributes"])
BINARY_TARGET = config_checks.BINARY_TARGET

wildcard_constraints:
    attribute="|".join(re.escape(a) for a in ATTRIBUTES),


def split_datasets(split):
    """The datasets a named split selects (before its flux filter, which the split file applies)."""
    return config["splits"][split]["datasets"] or DATASETS


def attribute_settings(wildcards):
    """An attribute's training settings; target and seed filled in from its name and the run's seed."""
    entry = dict(config["training"]["attributes"][wildcards.attribute])
    entry["target"] = config_checks.attribute_target(wildcards.attribute, entry)
    entry.setdefault("seed", config["seed"])
    entry.setdefault("loss", "bce" if entry["target"] == BINARY_TARGET else "ce")
    return canonical({"attribute": wildcards.attribute, **entry})


def training_inputs(wildcards):
    split = config["training"]["attributes"][wildcards.attribute]["split"]
    return {
        "split": res(f"splits/{split}.csv"),
        "features": [res(f"features/{d}.h5") for d in split_datasets(split)],
    }


def split_frames_inputs(wildcards):
    datasets = split_datasets(wildcards.split)
    return {
        "split": res(f"splits/{wildcards.split}.csv"),
        "frames": [res(f"datasets/{d}/frames.h5") for d in datasets],
        "manifests": [res(f"datasets/{d}/manifest.csv") for d in datasets],
    }


def evaluation_inputs(wildcards):
    split = config["training"]["attributes"][wildcards.attribute]["split"]
    datasets = split_datasets(split)
    inputs = {
        "checkpoint": res(f"models/{wildcards.attribute}/checkpoint.pt"),
        "split": res(f"splits/{split}.csv"),
        "features": [res(f"features/{d}.h5") for d in datasets],
        "manifests": [res(f"datasets/{d}/manifest.csv") for d in datasets],
    }
    if attribute_settings(wildcards)["target"] == BINARY_TARGET:
        inputs["oracle"] = res(f"oracle/{split}.csv")
    return inputs


def pipeline_inputs(wildcards):
    pipeline = config["training"]["pipeline"]
    datasets = split_datasets(pipeline["split"])
    return {
        "checkpoints": [res(f"models/{pipeline[a]}/checkpoint.pt") for a in ("hit", "photon_energy", "clen")],
        "split": res(f"splits/{pipeline['split']}.csv"),
        "frames": [res(f"datasets/{d}/frames.h5") for d in datasets],
        "manifests": [res(f"datasets/{d}/manifest.csv") for d in datasets],
    }


def dataset_names_of(paths):
    """Dataset names of results/datasets/{d}/... or results/features/{d}.h5 paths, in order."""
    return [Path(p).stem if Path(p).parent.name == "features" else Path(p).parent.name for p in paths]


# ---------------------------------------------------------------------- peak finding
PEAK_SPLIT = config["peaks"]["split"]
PEAK_FINDERS = list(dict.fromkeys(config["peaks"]["finders"]))
PEAK_CHECKPOINTS = {"network": res("models/peaks/checkpoint.pt"),
                    "paper_heatmap": res("models/paper_heatmap/checkpoint.pt"),
                    "cascade": res("models/peaks_cascade/checkpoint.pt")}

if not PEAK_FINDERS:
    config_error("peaks.finders: name at least one finder")
network = config["peaks"]["network"]
if network["crop_px"] % network["cell"]:
    config_error(f"peaks.network.crop_px: {network['crop_px']} is not a multiple of cell ({network['cell']})")


wildcard_constraints:
    finder="|".join(re.escape(f) for f in PEAK_FINDERS),


def peak_frames_inputs(wildcards=None):
    datasets = split_datasets(PEAK_SPLIT)
    return {
        "split": res(f"splits/{PEAK_SPLIT}.csv"),
        "frames": [res(f"datasets/{d}/frames.h5") for d in datasets],
    }


def find_peaks_inputs(wildcards):
    inputs = peak_frames_inputs()
    if wildcards.finder in PEAK_CHECKPOINTS:
        inputs["checkpoint"] = PEAK_CHECKPOINTS[wildcards.finder]
    return inputs


def peak_report_inputs(wildcards):
    datasets = split_datasets(PEAK_SPLIT)
    return {
        **peak_frames_inputs(),
        "manifests": [res(f"datasets/{d}/manifest.csv") for d in datasets],
        "peaks": [res(f"peaks/{f}/peaks.csv") for f in PEAK_FINDERS],
        "timings": [res(f"peaks/{f}/timing.json") for f in PEAK_FINDERS],
    }
