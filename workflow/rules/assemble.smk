# Per dataset: the CrystFEL geometry, the assembled frames file (overlays + empty frames, validated) and its
# manifest; then the 80/20 splits over the selected datasets.


localrules:
    geometry,
    split,


rule geometry:
    input:
        detector=detector_input,
    output:
        res("datasets/{dataset}/detector.geom"),
    params:
        settings=settings_of,
    log:
        res("logs/geometry/{dataset}.log"),
    benchmark:
        res("benchmarks/geometry/{dataset}.tsv")
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/geometry.py"


rule assemble:
    input:
        shards=shard_files,
        water=res("datasets/{dataset}/water.h5"),
        detector=detector_input,
    output:
        frames=res("datasets/{dataset}/frames.h5"),
        manifest=res("datasets/{dataset}/manifest.csv"),
    params:
        settings=settings_of,
        seed=config["seed"],
    log:
        res("logs/assemble/{dataset}.log"),
    benchmark:
        res("benchmarks/assemble/{dataset}.tsv")
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
        res("splits/{split}.csv"),
    params:
        datasets=lambda wildcards: list(manifests_of_split(wildcards)),
        selection=lambda wildcards: canonical(config["splits"][wildcards.split]),
        seed=config["seed"],
    log:
        res("logs/split/{split}.log"),
    benchmark:
        res("benchmarks/split/{split}.tsv")
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/split.py"
