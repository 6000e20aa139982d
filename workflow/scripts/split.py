"""A seeded, stratified train/test split over the selected datasets."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.dataset import write_split

selection = snakemake.params.selection
write_split(dict(zip(snakemake.params.datasets, snakemake.input.manifests)), snakemake.output[0],
            snakemake.params.seed, selection["test_fraction"], selection["datasets"], selection["flux"],
            name=snakemake.wildcards.split)
