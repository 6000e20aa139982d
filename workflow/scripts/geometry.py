"""A dataset's CrystFEL geometry file."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.dataset import write_detector_geometry
from cxlspeaks.settings import DatasetSettings

write_detector_geometry(DatasetSettings(**snakemake.params.settings), snakemake.output[0])
