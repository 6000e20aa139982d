"""The PDB model of structure.pdb_id: the copy shipped in the package (1IC6), else a download from the RCSB."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.crystal import fetch_structure

fetch_structure(snakemake.params.pdb_id, snakemake.output[0])
