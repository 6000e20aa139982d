# Per dataset: the CrystFEL geometry, the assembled frames file (overlays + empty frames, validated) and its
# manifest; then the 80/20 splits over the selected datasets.


localrules:
    geometry,
    split,


rule geometry:
    output:
        "results/datasets/{dataset}/detector.geom",
    params:
        settings=settings_of,
    log:
        "results/logs/geometry/{dataset}.log",
    benchmark:
        "results/benchmarks/geometry/{dataset}.tsv"
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/geometry.py"


rule assemble:
    input:
        shards=shard_files,
        water="results/datasets/{dataset}/water.h5",
    output:
        frames="results/datasets/{dataset}/frames.h5",
        manifest="results/datasets/{dataset}/manifest.csv",
    params:
        settings=settings_of,
        seed=config["seed"],
    log:
        "results/logs/assemble/{dataset}.log",
    benchmark:
        "results/benchmarks/assemble/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/assemble.py"


rule split:
    input:
        unpack(lambda wildcards: {"manifests": list(manifests_of_split(wildcards).values())}),
    output:
        "results/splits/{split}.csv",
    params:
        datasets=lambda wildcards: list(manifests_of_split(wildcards)),
        selection=lambda wildcards: canonical(config["splits"][wildcards.split]),
        seed=config["seed"],
    log:
        "results/logs/split/{split}.log",
    benchmark:
        "results/benchmarks/split/{split}.tsv"
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/split.py"
