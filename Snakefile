# cxlspeaks: simulate CXLS Eiger 4M frames, assemble labelled datasets and splits, train one model per attribute,
# evaluate them against the oracle bound, run the hit -> photon energy / camera length pipeline, find peaks with
# the peak network, peakfinder8 and the paper's heatmap model, report.
#   snakemake --cores N                          the default run (config/config.yaml)
#   snakemake --cores N --configfile config/test.yaml
#   snakemake --profile slurm                    on a SLURM cluster
#   snakemake results/datasets/05/frames.h5      one dataset
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/structure.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/assemble.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/peaks.smk"


rule all:
    input:
        all_dataset_outputs(),
        expand("results/splits/{split}.csv", split=SPLITS),
        "results/reports/index.html",
    default_target: True
