"""The test frames of the pipeline's split as a CrystFEL event list (absolute paths, one `file //N` per frame)."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.dataset import write_test_event_list

write_test_event_list(snakemake.input.split, dict(zip(snakemake.params.datasets, snakemake.input.frames)),
                      snakemake.output[0])
