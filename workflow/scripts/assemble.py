"""Assemble a dataset: shards + empty frames -> validated frames.h5 and manifest.csv."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.dataset import assemble_dataset
from cxlspeaks.settings import DatasetSettings

assemble_dataset(DatasetSettings(**snakemake.params.settings), snakemake.input.shards, snakemake.input.water,
                 snakemake.params.seed, snakemake.output.frames, snakemake.output.manifest)
