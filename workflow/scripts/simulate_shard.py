"""Simulate one shard of a dataset's crystal frames."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.crystal import read_crystal
from cxlspeaks.dataset import simulate_shard
from cxlspeaks.settings import DatasetSettings

simulate_shard(DatasetSettings(**snakemake.params.settings), read_crystal(snakemake.input.reflections),
               int(snakemake.wildcards.shard), snakemake.params.seed, snakemake.input.water, snakemake.output[0],
               progress=True)
