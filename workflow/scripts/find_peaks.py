"""One peak finder over the peaks split's test frames: its peaks and its speed."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.peaks.evaluation import make_finder, predict_split

finder = make_finder(snakemake.wildcards.finder, snakemake.input.get("checkpoint"),
                     peakfinder8=snakemake.params.peakfinder8, threads=snakemake.threads)
predict_split(finder, dict(zip(snakemake.params.datasets, snakemake.input.frames)), snakemake.input.split,
              snakemake.output.peaks, snakemake.output.timing)
