# Per dataset: the expected water image, then the crystal frames in shards (one job per shard).


rule water:
    output:
        "results/datasets/{dataset}/water.h5",
    params:
        settings=settings_of,
    log:
        "results/logs/water/{dataset}.log",
    benchmark:
        "results/benchmarks/water/{dataset}.tsv"
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
        reflections="results/structure/reflections.h5",
        water="results/datasets/{dataset}/water.h5",
    output:
        temp("results/datasets/{dataset}/shards/{shard}.h5"),
    params:
        settings=settings_of,
        seed=config["seed"],
    log:
        "results/logs/simulate_shard/{dataset}/{shard}.log",
    benchmark:
        "results/benchmarks/simulate_shard/{dataset}/{shard}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/simulate_shard.py"
