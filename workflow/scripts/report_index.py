"""<results_dir>/reports/index.html."""
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.report import write_index

write_index(Path(snakemake.output[0]).parent, snakemake.params.attributes, snakemake.input.pipeline, snakemake.params.config,
            snakemake.output[0], peaks_dir=Path(snakemake.input.peaks).parent)
