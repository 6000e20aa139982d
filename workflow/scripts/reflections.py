"""Full-sphere |F_hkl|^2 list of the structure (or the synthetic crystal)."""
import sys

sys.stderr = open(snakemake.log[0], "w")

from cxlspeaks.crystal import build_reflections

build_reflections(snakemake.input.get("structure") or None, snakemake.output[0], **snakemake.params.structure)
