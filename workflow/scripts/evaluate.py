"""Confusion matrix, metrics, curves and ROC of one attribute on its split's test frames."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.evaluate import evaluate_attribute

datasets = snakemake.params.datasets
evaluate_attribute(snakemake.input.checkpoint, snakemake.wildcards.attribute,
                   dict(zip(datasets, snakemake.input.features)), snakemake.input.split,
                   dict(zip(datasets, snakemake.input.manifests)), Path(snakemake.output.metrics).parent,
                   oracle_csv=snakemake.input.get("oracle"))
