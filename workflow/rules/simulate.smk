# Per dataset: the expected water image, then the crystal frames in shards (one job per shard).


rule water:
    input:
        detector=detector_input,
    output:
        res("datasets/{dataset}/water.h5"),
    params:
        settings=settings_of,
    log:
        res("logs/water/{dataset}.log"),
    benchmark:
        res("benchmarks/water/{dataset}.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/water.py"


rule simulate_shard:
    input:
        reflections=res("structure/reflections.h5"),
        water=res("datasets/{dataset}/water.h5"),
        detector=detector_input,
    output:
        temp(res("datasets/{dataset}/shards/{shard}.h5")),
    params:
        settings=settings_of,
        seed=config["seed"],
    log:
        res("logs/simulate_shard/{dataset}/{shard}.log"),
    benchmark:
        res("benchmarks/simulate_shard/{dataset}/{shard}.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/simulate_shard.py"
