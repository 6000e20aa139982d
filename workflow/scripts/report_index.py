"""results/reports/index.html."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.report import write_index

write_index("results/reports", snakemake.params.attributes, snakemake.input.pipeline, snakemake.params.config,
            snakemake.output[0])
