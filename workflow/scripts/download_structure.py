"""Download the PDB model of structure.pdb_id from the RCSB."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.crystal import download_pdb

download_pdb(snakemake.params.pdb_id, snakemake.output[0])
