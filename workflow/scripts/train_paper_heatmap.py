"""Train the source paper's heatmap model on full training frames, as the paper did (GPU when given one)."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.peaks.paper_heatmap import PaperHeatmapConfig, train_paper_heatmap

train_paper_heatmap(PaperHeatmapConfig(**snakemake.params.settings),
                    dict(zip(snakemake.params.datasets, snakemake.input.frames)), snakemake.input.split,
                    snakemake.output.checkpoint, snakemake.output.history, threads=snakemake.threads,
                    gpus=int(snakemake.resources.get("gpu", 0)))
