"""The hit -> photon energy / camera length pipeline on the test frames."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.pipeline import run_pipeline_on_split

datasets = snakemake.params.datasets
run_pipeline_on_split(dict(zip(datasets, snakemake.input.frames)), dict(zip(datasets, snakemake.input.manifests)),
                      dict(zip(("hit", "photon_energy", "clen"), snakemake.input.checkpoints)), snakemake.input.split,
                      snakemake.output.table, snakemake.output.summary, threshold=snakemake.params.threshold)
