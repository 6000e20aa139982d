"""Binned model inputs of one dataset."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.features import write_features

write_features(snakemake.input[0], snakemake.output[0], snakemake.params.bin_factor, snakemake.wildcards.dataset)
