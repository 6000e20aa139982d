"""Train the cascade peak finder on the peaks split's training frames (read lazily; CPU)."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.peaks.evaluation import train_cascade_split

train_cascade_split(snakemake.params.settings, dict(zip(snakemake.params.datasets, snakemake.input.frames)),
                    snakemake.input.split, snakemake.output.checkpoint)
