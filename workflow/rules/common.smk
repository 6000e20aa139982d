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
    config_error(str(exc).strip("'\""))

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
