"""Train the peak network on crops of the peaks split's training frames (GPU when the job has one)."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.peaks.network import PeakNetConfig, train_peaknet

train_peaknet(PeakNetConfig(**snakemake.params.settings), dict(zip(snakemake.params.datasets, snakemake.input.frames)),
              snakemake.input.split, snakemake.output.checkpoint, snakemake.output.history,
              threads=snakemake.threads, gpus=int(snakemake.resources.get("gpu", 0)))
