"""Checks of a workflow config that JSON schema cannot express, each failing with one line naming the key.

``workflow/rules/common.smk`` runs them in this order, before any job:

1. :func:`check_duplicate_keys` on every config file given (Snakemake's YAML loader keeps the last of two equal
   keys without a word);
2. :func:`check_finite` (``.nan`` and ``.inf`` pass every JSON-schema ``minimum``/``maximum``) and
   :func:`check_schema` (the schema with integers that must be written as integers: ``frames: 6.0`` is refused);
3. after Snakemake's own ``validate`` has filled in the defaults: :func:`check_datasets`,
   :func:`check_attributes` and :func:`check_splits`.

:func:`check_config` runs them all (the workflow and tests/test_config_errors.py call it).

Every check raises :class:`ConfigError`, whose text is ``KEY: what is wrong``; the workflow prints it as
``config error: KEY: ...``. Nothing here imports torch, so a dry run stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jsonschema
import yaml

#: attribute name prefix -> the target it predicts; an attribute is named ``<prefix>`` or ``<prefix>_<anything>``
ATTRIBUTE_TARGETS = {"hit": "has_peaks", "photon_energy": "photon_energy_ev", "clen": "clen_m"}
BINARY_TARGET = "has_peaks"
#: model -> the targets it is built for (hit models output one logit, the beam-parameter models one per class)
MODEL_TARGETS = {
    "hit_fcn": {BINARY_TARGET},
    "paper_hit_cnn": {BINARY_TARGET},
    "paper_base_cnn": {BINARY_TARGET},
    "paper_dual_cnn": {BINARY_TARGET},
    "water_ring_linear": {"photon_energy_ev", "clen_m"},
    "paper_linear": {"photon_energy_ev", "clen_m"},
    "water_profile_linear": {"photon_energy_ev", "clen_m"},
}
#: models that need the expected signal image, so the pipeline cannot use them on recorded frames
ORACLE_MODELS = {"paper_dual_cnn"}
PIPELINE_TARGETS = {"hit": BINARY_TARGET, "photon_energy": "photon_energy_ev", "clen": "clen_m"}
MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigError(ValueError):
    """A malformed config; the message is ``KEY: what is wrong``."""


def dotted(path: Iterable[Any]) -> str:
    """A key path as ``a.b.c`` (list indices as ``[i]``); ``(top level)`` for the root."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


# ---------------------------------------------------------------------- the files and the raw values
class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (merge keys ``<<`` may still override)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key; the base loader reports it
                    continue
                if duplicate:
                    raise ConfigError(f"{self.name}: duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def check_duplicate_keys(paths: Iterable[str | Path]) -> None:
    """Re-read each config file and refuse any mapping that names a key twice."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        text = path.read_text()
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            loader.get_single_data()
        except yaml.YAMLError:
            pass  # Snakemake has already read the file; its own error would have stopped the run
        finally:
            loader.dispose()


def check_finite(value: Any, path: tuple = ()) -> None:
    """Refuse NaN and infinities anywhere, and mapping keys that are not strings (YAML reads ``01:`` as 1)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{dotted(path)}: key {key!r} is not a string (quote it: \"{key}\")")
            check_finite(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite(item, (*path, index))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{dotted(path)}: {value} is not a finite number")


def _strict_validator(schema: dict) -> jsonschema.protocols.Validator:
    """The schema's validator, with integers that must be written without a fraction (6, not 6.0)."""
    base = jsonschema.validators.validator_for(schema)
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def schema_error_line(error: jsonschema.ValidationError) -> str:
    """One line for a schema error: the key path, then the reason (names refused by ``propertyNames`` named)."""
    key = dotted(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:
        return (f"{key}: name {error.instance!r} is not allowed (letters, digits, '_', '.', '-' only; "
                "not '.' or '..')")
    return f"{key}: {error.message}"


def check_schema(config: dict, schema_path: str | Path) -> None:
    """Validate against the schema with strict integers (Snakemake's ``validate`` then fills in the defaults)."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(_strict_validator(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(schema_error_line(error))


# ---------------------------------------------------------------------- datasets and detectors
def custom_detector(detector: str) -> bool:
    """Whether a dataset's ``detector`` names a CrystFEL geometry file rather than a shipped detector."""
    return detector not in ("eiger4m", "source_single_panel", "tiny")


def check_datasets(config: dict, settings: Mapping[str, Any], repo_root: str | Path) -> dict[str, Any]:
    """Custom geometry files exist and parse; bins, crops and the structure's resolution fit every detector.

    ``settings`` maps dataset names to :class:`cxlspeaks.settings.DatasetSettings`. Returns their geometries.
    """
    geometries = {}
    for name, entry in settings.items():
        if custom_detector(entry.detector) and not (Path(repo_root) / entry.detector).is_file():
            raise ConfigError(f"datasets.{name}.detector: geometry file {entry.detector} does not exist")
        try:
            geometries[name] = geometry = entry.geometry(repo_root)
        except ValueError as exc:
            raise ConfigError(f"datasets.{name}.detector: {exc}") from None
        shape = geometry.shape
        bin_factor = config["training"]["bin_factor"]
        if bin_factor >= min(shape):
            raise ConfigError(f"training.bin_factor: {bin_factor} is not smaller than dataset {name}'s detector "
                              f"({shape[0]} x {shape[1]} pixels)")
        crop = config["peaks"]["network"]["crop_px"]
        if crop > min(shape):
            raise ConfigError(f"peaks.network.crop_px: {crop} is larger than dataset {name}'s detector "
                              f"({shape[0]} x {shape[1]} pixels)")
        if entry.spectrum_file is not None:
            if not (Path(repo_root) / entry.spectrum_file).is_file():
                raise ConfigError(f"datasets.{name}.spectrum_file: {entry.spectrum_file} does not exist")
            try:
                dataclasses.replace(entry, spectrum_file=str(Path(repo_root) / entry.spectrum_file)).beam
            except ValueError as exc:
                raise ConfigError(f"datasets.{name}.spectrum_file: {str(exc).splitlines()[0]}") from None
        if entry.bragg_backend == "pattern_sim" and entry.nuisances.changes_bragg:
            raise ConfigError(f"datasets.{name}.nuisances: pulse, crystal size, beam profile, extra crystals and "
                              "beam centre need bragg_backend: builtin")
        needed = geometry.d_min_A(entry.photon_energy_ev, entry.bandwidth)
        d_min = config["structure"]["d_min_A"]
        if d_min > needed and entry.bragg_backend != "pattern_sim":
            raise ConfigError(f"structure.d_min_A: {d_min} A is coarser than dataset {name} needs "
                              f"({needed:.3f} A reaches its detector corner)")
    return geometries


# ---------------------------------------------------------------------- models
def attribute_target(name: str, entry: Mapping[str, Any]) -> str:
    """The target of attribute ``name``: its own ``target``, else the one its name's prefix implies."""
    prefix = next((p for p in ATTRIBUTE_TARGETS if name == p or name.startswith(p + "_")), None)
    if prefix is None:
        raise ConfigError(f"training.attributes.{name}: unknown attribute; names start with "
                          f"{', '.join(ATTRIBUTE_TARGETS)} (e.g. hit_mine, clen_paper)")
    implied = ATTRIBUTE_TARGETS[prefix]
    target = entry.get("target", implied)
    if target != implied:
        raise ConfigError(f"training.attributes.{name}.target: {target} contradicts the name, which predicts "
                          f"{implied}")
    return target


def check_attributes(config: dict) -> None:
    """Attribute names, model/target/loss combinations and the pipeline's choice of attributes."""
    attributes = config["training"]["attributes"]
    for name, entry in attributes.items():
        target = attribute_target(name, entry)
        predicts = MODEL_TARGETS.get(entry["model"], {target})  # a model added to the schema but not here: no check
        if target not in predicts:
            raise ConfigError(f"training.attributes.{name}.model: {entry['model']} does not predict {target} "
                              f"(it predicts {', '.join(sorted(predicts))})")
        if entry.get("loss") == "bce" and target != BINARY_TARGET:
            raise ConfigError(f"training.attributes.{name}.loss: bce is for has_peaks; {target} needs ce")
    pipeline = config["training"]["pipeline"]
    for key, target in PIPELINE_TARGETS.items():
        name = pipeline[key]
        if name not in attributes:
            raise ConfigError(f"training.pipeline.{key}: no attribute {name!r} in training.attributes")
        if attribute_target(name, attributes[name]) != target:
            raise ConfigError(f"training.pipeline.{key}: attribute {name} does not predict {target}")
        if attributes[name]["model"] in ORACLE_MODELS:
            raise ConfigError(f"training.pipeline.{key}: attribute {name}'s model {attributes[name]['model']} "
                              "needs the expected signal, which recorded frames do not have")


# ---------------------------------------------------------------------- splits
def split_strata(config: dict, settings: Mapping[str, Any], split: str) -> list[dict]:
    """Per selected dataset of ``split``: frames with and without peaks, and how many of each go to the test set.

    The counts are those of :func:`cxlspeaks.dataset.stratified_split`: round(n * test_fraction) per stratum.
    """
    entry = config["splits"][split]
    chosen = [d for d in (entry.get("datasets") or list(settings))
              if not entry.get("flux") or settings[d].flux in entry["flux"]]
    fraction = entry.get("test_fraction", 0.2)
    rows = []
    for name in chosen:
        s = settings[name]
        for has_peaks, n in ((True, s.frames), (False, s.n_empty)):
            if n:
                n_test = int(round(n * fraction))
                rows.append({"dataset": name, "has_peaks": has_peaks, "frames": n, "test": n_test,
                             "train": n - n_test, "photon_energy_ev": s.photon_energy_ev, "clen_m": s.clen_m})
    return rows


def check_splits(config: dict, settings: Mapping[str, Any]) -> None:
    """Every split selects frames with a test frame per stratum; every classifier's split has >= 2 classes."""
    strata = {}
    for split, entry in config["splits"].items():
        for dataset in entry.get("datasets", []):
            if dataset not in settings:
                raise ConfigError(f"splits.{split}.datasets: no dataset {dataset!r} in datasets")
        strata[split] = rows = split_strata(config, settings, split)
        if not rows:
            raise ConfigError(f"splits.{split}: selects no frames (datasets {entry.get('datasets', [])}, "
                              f"flux {entry.get('flux', [])})")
        for row in rows:
            if row["test"] < 1:
                kind = "crystal" if row["has_peaks"] else "empty"
                raise ConfigError(f"splits.{split}.test_fraction: {entry.get('test_fraction', 0.2)} of dataset "
                                  f"{row['dataset']}'s {row['frames']} {kind} frames rounds to no test frame")
    for name, entry in config["training"]["attributes"].items():
        split = entry["split"]
        if split not in strata:
            raise ConfigError(f"training.attributes.{name}.split: no split {split!r} in splits")
        target = attribute_target(name, entry)
        train = [row for row in strata[split] if row["train"] > 0]
        classes = sorted({row[target] for row in train})
        if len(classes) < 2:
            found = classes[0] if classes else "none"
            hint = (" (set defaults.empty_percent > 0: a hit classifier needs empty frames)"
                    if target == BINARY_TARGET else "")
            raise ConfigError(f"training.attributes.{name}.split: split {split}'s training frames have one "
                              f"{target} class ({found}); a classifier needs at least 2{hint}")
    for key, where in ((config["training"]["pipeline"]["split"], "training.pipeline.split"),
                       (config["peaks"]["split"], "peaks.split")):
        if key not in strata:
            raise ConfigError(f"{where}: no split {key!r} in splits")


# ---------------------------------------------------------------------- indexing (peaks.index)
#: indexamajig's indexing methods (CrystFEL 0.10-0.12), before any -latt/-cell/... suffix
INDEXING_METHODS = {"asdf", "taketwo", "xgandalf", "mosflm", "dirax", "xds", "felix", "pinkindexer", "file"}


def check_index(config: dict) -> None:
    """peaks.index: known indexing methods, each once; a configured indexamajig given as a path must exist and be
    executable (a bare name is looked up on PATH when the stage runs, and a missing one only skips the stage)."""
    import os

    index = config["peaks"].get("index", {})
    methods = index.get("methods", [])
    for i, method in enumerate(methods):
        base = str(method).split("-", 1)[0].lower()
        if base not in INDEXING_METHODS:
            raise ConfigError(f"peaks.index.methods[{i}]: unknown indexing method {method!r}; known: "
                              f"{', '.join(sorted(INDEXING_METHODS))}")
    if len(set(methods)) != len(methods):
        raise ConfigError("peaks.index.methods: a method is named twice")
    program = index.get("indexamajig")
    if program is not None and ("/" in str(program)):
        path = Path(program).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigError(f"peaks.index.indexamajig: {program} is not an executable file")


# ---------------------------------------------------------------------- everything, in the workflow's order
def snakemake_fill_defaults(schema_path: str | Path) -> Callable[[dict], None]:
    """Snakemake's ``validate`` against the schema (it fills in the defaults), its errors as :class:`ConfigError`."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    def fill(config: dict) -> None:
        try:
            validate(config, str(schema_path))
        except WorkflowError as exc:
            cause = exc.__cause__ or exc.__context__  # the jsonschema error that validate() wrapped
            if not isinstance(cause, jsonschema.ValidationError):
                raise
            raise ConfigError(schema_error_line(cause)) from None

    return fill


def check_config(config: dict, schema_path: str | Path, configfiles: Iterable[str | Path], repo_root: str | Path,
                 fill_defaults: Callable[[dict], None]) -> dict[str, Any]:
    """Every check, in order; ``fill_defaults(config)`` validates and fills in the schema's defaults in place
    (the workflow passes Snakemake's ``validate``). Returns the datasets' settings by name."""
    from .settings import dataset_settings

    check_duplicate_keys(configfiles)
    check_finite(config)
    check_schema(config, schema_path)
    fill_defaults(config)
    try:
        settings = {name: dataset_settings(config, name) for name in config["datasets"]}
    except KeyError as exc:
        raise ConfigError(str(exc.args[0]) if exc.args else str(exc)) from None
    except ValueError as exc:            # a setting the schema cannot judge alone (e.g. nuisances that conflict)
        raise ConfigError(str(exc).splitlines()[0]) from None
    check_datasets(config, settings, repo_root)
    check_attributes(config)
    check_splits(config, settings)
    check_index(config)
    structure = config["structure"]
    if structure["file"] is not None and not structure["synthetic"] and not Path(structure["file"]).is_file():
        raise ConfigError(f"structure.file: {structure['file']} does not exist")
    return settings
