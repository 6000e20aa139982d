"""A dataset's expected water-scattering image."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.dataset import water_image
from cxlspeaks.settings import DatasetSettings

water_image(DatasetSettings(**snakemake.params.settings), snakemake.output[0])
