# The crystal: the PDB model (downloaded by id unless a local file is given) and its |F|^2 list.


localrules:
    download_structure,


rule download_structure:
    output:
        "resources/structure/{pdb_id}.pdb",
    params:
        pdb_id=lambda wildcards: wildcards.pdb_id,
    log:
        res("logs/download_structure/{pdb_id}.log"),
    benchmark:
        res("benchmarks/download_structure/{pdb_id}.tsv")
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/download_structure.py"


rule reflections:
    input:
        structure=structure_input,
    output:
        res("structure/reflections.h5"),
    params:
        structure=canonical(config["structure"]),
    log:
        res("logs/reflections.log"),
    benchmark:
        res("benchmarks/reflections.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/reflections.py"
