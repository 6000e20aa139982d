# Models: binned model inputs per dataset, one training job per attribute (on a GPU when one is given), the
# oracle bound, evaluation on the held-out test frames, the pipeline on the test frames and the HTML report.


localrules:
    report_index,


rule features:
    input:
        "results/datasets/{dataset}/frames.h5",
    output:
        "results/features/{dataset}.h5",
    params:
        bin_factor=config["training"]["bin_factor"],
    log:
        "results/logs/features/{dataset}.log",
    benchmark:
        "results/benchmarks/features/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/features.py"


rule train:
    input:
        unpack(training_inputs),
    output:
        checkpoint="results/models/{attribute}/checkpoint.pt",
        history="results/models/{attribute}/history.csv",
    params:
        settings=attribute_settings,
        datasets=lambda wildcards, input: dataset_names_of(input.features),
    log:
        "results/logs/train/{attribute}.log",
    benchmark:
        "results/benchmarks/train/{attribute}.tsv"
    threads: config["training"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["training"]["mem_mb"],
        runtime=240,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/train.py"


rule oracle:
    input:
        unpack(split_frames_inputs),
    output:
        "results/oracle/{split}.csv",
    params:
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        "results/logs/oracle/{split}.log",
    benchmark:
        "results/benchmarks/oracle/{split}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/oracle.py"


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        matrix="results/reports/{attribute}/confusion_matrix.csv",
        matrix_png=report(
            "results/reports/{attribute}/confusion_matrix.png",
            category="{attribute}",
            caption="../report/confusion_matrix.rst",
        ),
        metrics="results/reports/{attribute}/metrics.json",
        predictions="results/reports/{attribute}/predictions.csv",
        loss=report("results/reports/{attribute}/loss.png", category="{attribute}", caption="../report/curves.rst"),
        accuracy=report(
            "results/reports/{attribute}/accuracy.png", category="{attribute}", caption="../report/curves.rst"
        ),
        roc=report("results/reports/{attribute}/roc.png", category="{attribute}", caption="../report/roc.rst"),
    params:
        datasets=lambda wildcards, input: dataset_names_of(input.features),
    log:
        "results/logs/evaluate/{attribute}.log",
    benchmark:
        "results/benchmarks/evaluate/{attribute}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/evaluate.py"


rule pipeline_test:
    input:
        unpack(pipeline_inputs),
    output:
        table=report("results/pipeline/test_predictions.csv", category="pipeline", caption="../report/pipeline.rst"),
        summary=report("results/pipeline/summary.csv", category="pipeline", caption="../report/pipeline.rst"),
    params:
        threshold=config["training"]["pipeline"]["threshold"],
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        "results/logs/pipeline_test.log",
    benchmark:
        "results/benchmarks/pipeline_test.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/pipeline_test.py"


rule report_index:
    input:
        metrics=expand("results/reports/{attribute}/metrics.json", attribute=ATTRIBUTES),
        pngs=expand("results/reports/{attribute}/{name}.png", attribute=ATTRIBUTES,
                    name=["confusion_matrix", "roc", "loss", "accuracy"]),
        pipeline="results/pipeline/test_predictions.csv",
        summary="results/pipeline/summary.csv",
        peaks="results/reports/peaks/metrics.csv",
        peak_pngs=["results/reports/peaks/recall_vs_photons.png", "results/reports/peaks/examples.png"],
    output:
        "results/reports/index.html",
    params:
        attributes=ATTRIBUTES,
        config=config,
    log:
        "results/logs/report_index.log",
    benchmark:
        "results/benchmarks/report_index.tsv"
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/report_index.py"
