"""The oracle likelihood-ratio score of every test frame of a split."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.evaluate import write_oracle_table

write_oracle_table(dict(zip(snakemake.params.datasets, snakemake.input.frames)),
                   dict(zip(snakemake.params.datasets, snakemake.input.manifests)), snakemake.input.split,
                   snakemake.output[0])
