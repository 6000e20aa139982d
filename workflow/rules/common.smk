# Config validation, wildcard constraints and input functions shared by every rule.
from pathlib import Path
import re
import sys

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Config checks use the package of this checkout; the jobs' scripts import the installed package
# (`pip install -e .`, or the conda environments in envs/).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cxlspeaks.settings import dataset_settings  # noqa: E402


def config_error(message):
    """Stop before any job with one line naming the config key."""
    sys.exit(f"config error: {message}")


try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as exc:
    cause = exc.__cause__ or exc.__context__  # the jsonschema error that validate() wrapped
    if not isinstance(cause, jsonschema.ValidationError):
        raise
    key = ".".join(str(part) for part in cause.absolute_path) or "(top level)"
    config_error(f"{key}: {cause.message}")

DATASETS = list(config["datasets"])
SPLITS = list(config["splits"])

try:
    SETTINGS = {name: dataset_settings(config, name) for name in DATASETS}
    for name, settings in SETTINGS.items():
        needed = settings.geometry(workflow.basedir).d_min_A(settings.photon_energy_ev, settings.bandwidth)
        if config["structure"]["d_min_A"] > needed and not settings.bragg_backend == "pattern_sim":
            config_error(
                f"structure.d_min_A: {config['structure']['d_min_A']} A is coarser than dataset {name} needs "
                f"({needed:.3f} A reaches its detector corner)"
            )
except (KeyError, ValueError) as exc:
    config_error(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))

for split_name, split in config["splits"].items():
    for dataset in split["datasets"]:
        if dataset not in SETTINGS:
            config_error(f"splits.{split_name}.datasets: no dataset {dataset!r} in datasets")

structure_file = config["structure"]["file"]
if structure_file is not None and not config["structure"]["synthetic"]:
    if not Path(structure_file).is_file():
        config_error(f"structure.file: {structure_file} does not exist")


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
    return [f"results/datasets/{wildcards.dataset}/shards/{shard}.h5" for shard in range(n)]


def manifests_of_split(wildcards):
    chosen = config["splits"][wildcards.split]["datasets"] or DATASETS
    return {d: f"results/datasets/{d}/manifest.csv" for d in chosen}


def all_dataset_outputs():
    return expand(
        "results/datasets/{dataset}/{name}",
        dataset=DATASETS,
        name=["frames.h5", "detector.geom", "manifest.csv"],
    )


# ---------------------------------------------------------------------- training and evaluation
ATTRIBUTES = list(config["training"]["attributes"])
BINARY_TARGET = "has_peaks"
TARGET_PREFIXES = {"photon_energy": "photon_energy_ev", "clen": "clen_m"}

for attribute, entry in config["training"]["attributes"].items():
    if entry["split"] not in SPLITS:
        config_error(f"training.attributes.{attribute}.split: no split {entry['split']!r} in splits")
for key in ("hit", "photon_energy", "clen"):
    if config["training"]["pipeline"][key] not in ATTRIBUTES:
        config_error(f"training.pipeline.{key}: no attribute {config['training']['pipeline'][key]!r} in "
                     "training.attributes")
if config["training"]["pipeline"]["split"] not in SPLITS:
    config_error(f"training.pipeline.split: no split {config['training']['pipeline']['split']!r} in splits")


wildcard_constraints:
    attribute="|".join(re.escape(a) for a in ATTRIBUTES),


def split_datasets(split):
    """The datasets a named split selects (before its flux filter, which the split file applies)."""
    return config["splits"][split]["datasets"] or DATASETS


def attribute_settings(wildcards):
    """An attribute's training settings; target and seed filled in from its name and the run's seed."""
    entry = dict(config["training"]["attributes"][wildcards.attribute])
    prefix = next((p for p in TARGET_PREFIXES if wildcards.attribute.startswith(p)), None)
    entry.setdefault("target", TARGET_PREFIXES.get(prefix, BINARY_TARGET))
    entry.setdefault("seed", config["seed"])
    entry.setdefault("loss", "bce" if entry["target"] == BINARY_TARGET else "ce")
    return canonical({"attribute": wildcards.attribute, **entry})


def training_inputs(wildcards):
    split = config["training"]["attributes"][wildcards.attribute]["split"]
    return {
        "split": f"results/splits/{split}.csv",
        "features": [f"results/features/{d}.h5" for d in split_datasets(split)],
    }


def split_frames_inputs(wildcards):
    datasets = split_datasets(wildcards.split)
    return {
        "split": f"results/splits/{wildcards.split}.csv",
        "frames": [f"results/datasets/{d}/frames.h5" for d in datasets],
        "manifests": [f"results/datasets/{d}/manifest.csv" for d in datasets],
    }


def evaluation_inputs(wildcards):
    split = config["training"]["attributes"][wildcards.attribute]["split"]
    datasets = split_datasets(split)
    inputs = {
        "checkpoint": f"results/models/{wildcards.attribute}/checkpoint.pt",
        "split": f"results/splits/{split}.csv",
        "features": [f"results/features/{d}.h5" for d in datasets],
        "manifests": [f"results/datasets/{d}/manifest.csv" for d in datasets],
    }
    if attribute_settings(wildcards)["target"] == BINARY_TARGET:
        inputs["oracle"] = f"results/oracle/{split}.csv"
    return inputs


def pipeline_inputs(wildcards):
    pipeline = config["training"]["pipeline"]
    datasets = split_datasets(pipeline["split"])
    return {
        "checkpoints": [f"results/models/{pipeline[a]}/checkpoint.pt" for a in ("hit", "photon_energy", "clen")],
        "split": f"results/splits/{pipeline['split']}.csv",
        "frames": [f"results/datasets/{d}/frames.h5" for d in datasets],
        "manifests": [f"results/datasets/{d}/manifest.csv" for d in datasets],
    }


def dataset_names_of(paths):
    """Dataset names of results/datasets/{d}/... or results/features/{d}.h5 paths, in order."""
    return [Path(p).stem if Path(p).parent.name == "features" else Path(p).parent.name for p in paths]


# ---------------------------------------------------------------------- peak finding
PEAK_SPLIT = config["peaks"]["split"]
PEAK_FINDERS = list(dict.fromkeys(config["peaks"]["finders"]))
PEAK_CHECKPOINTS = {"network": "results/models/peaks/checkpoint.pt",
                    "paper_heatmap": "results/models/paper_heatmap/checkpoint.pt"}

if PEAK_SPLIT not in SPLITS:
    config_error(f"peaks.split: no split {PEAK_SPLIT!r} in splits")
for reserved in ("peaks", "paper_heatmap"):
    if reserved in ATTRIBUTES:
        config_error(f"training.attributes.{reserved}: the name is taken by the peak finders' models")
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
        "split": f"results/splits/{PEAK_SPLIT}.csv",
        "frames": [f"results/datasets/{d}/frames.h5" for d in datasets],
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
        "manifests": [f"results/datasets/{d}/manifest.csv" for d in datasets],
        "peaks": [f"results/peaks/{f}/peaks.csv" for f in PEAK_FINDERS],
        "timings": [f"results/peaks/{f}/timing.json" for f in PEAK_FINDERS],
    }
