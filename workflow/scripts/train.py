"""Train one attribute (on a GPU when the job has one, else on the CPU with the job's threads)."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.train import TrainConfig, train_attribute

features = dict(zip(snakemake.params.datasets, snakemake.input.features))
train_attribute(TrainConfig(**snakemake.params.settings), features, snakemake.input.split,
                snakemake.output.checkpoint, snakemake.output.history, threads=snakemake.threads,
                gpus=int(snakemake.resources.get("gpu", 0)))
