# cxlspeaks: simulate CXLS Eiger 4M frames, assemble labelled datasets and splits, train one model per attribute,
# evaluate them against the oracle bound, run the hit -> photon energy / camera length pipeline, find peaks with
# the peak network, peakfinder8 and the paper's heatmap model, report.
#   snakemake --cores N                          the default run (config/config.yaml), results in results/
#   snakemake --cores N --configfile config/test.yaml    the tiny run ALONE, results in results/test/
#   snakemake --profile slurm                    on a SLURM cluster
#   snakemake results/datasets/05/frames.h5      one dataset
from snakemake.utils import min_version

min_version("9.0")


# A config file given with --configfile REPLACES config/config.yaml instead of being deep-merged into it:
# Snakemake would otherwise load config/config.yaml first and merge the given file on top, so the tiny run would
# inherit the 11 default datasets. So config/config.yaml is read only when no --configfile was given
# (`workflow.overwrite_configfiles`: the files given on the command line or in a profile). --config KEY=VALUE
# still overrides single keys of whichever file is in use (Snakemake applies it last).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/structure.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/assemble.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/peaks.smk"
include: "workflow/rules/index.smk"


rule all:
    input:
        all_dataset_outputs(),
        expand(res("splits/{split}.csv"), split=SPLITS),
        res("reports/index.html"),
        res("pipeline/test_frames.lst"),
    default_target: True
