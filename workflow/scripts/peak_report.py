"""results/reports/peaks/: metrics per finder and flux level, recall against photons, example frames."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.peaks.evaluation import peak_report

datasets = snakemake.params.datasets
finders = snakemake.params.finders
peak_report(dict(zip(finders, snakemake.input.peaks)), dict(zip(finders, snakemake.input.timings)),
            dict(zip(datasets, snakemake.input.frames)), dict(zip(datasets, snakemake.input.manifests)),
            snakemake.input.split, Path(snakemake.output.metrics).parent, radius_px=snakemake.params.radius_px,
            examples=snakemake.params.examples, seed=snakemake.params.seed)
