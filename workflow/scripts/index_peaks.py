"""results/reports/peaks/indexing.csv: indexamajig on every finder's peaks (skipped in one line without it)."""
import sys
from pathlib import Path

sys.stderr = log = open(snakemake.log[0], "w")

from cxlspeaks.peaks.indexing import index_stage

datasets = snakemake.params.datasets
settings = dict(snakemake.params.settings)
settings["threads"] = snakemake.threads
index_stage(dict(zip(snakemake.params.finders, snakemake.input.peaks)), dict(zip(datasets, snakemake.input.frames)),
            dict(zip(datasets, snakemake.input.geometries)), dict(zip(datasets, snakemake.input.manifests)),
            snakemake.input.split, snakemake.input.reflections, Path(snakemake.output.work),
            snakemake.output.frames, snakemake.output.summary, settings, log=log)
