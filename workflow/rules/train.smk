# Models: binned model inputs per dataset, one training job per attribute (on a GPU when one is given), the
# oracle bound, evaluation on the held-out test frames, the pipeline on the test frames and the HTML report.


localrules:
    report_index,
    test_event_list,


rule features:
    input:
        res("datasets/{dataset}/frames.h5"),
    output:
        res("features/{dataset}.h5"),
    params:
        bin_factor=config["training"]["bin_factor"],
    log:
        res("logs/features/{dataset}.log"),
    benchmark:
        res("benchmarks/features/{dataset}.tsv")
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
        checkpoint=res("models/{attribute}/checkpoint.pt"),
        history=res("models/{attribute}/history.csv"),
    params:
        settings=attribute_settings,
        datasets=lambda wildcards, input: dataset_names_of(input.features),
    log:
        res("logs/train/{attribute}.log"),
    benchmark:
        res("benchmarks/train/{attribute}.tsv")
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
        res("oracle/{split}.csv"),
    params:
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        res("logs/oracle/{split}.log"),
    benchmark:
        res("benchmarks/oracle/{split}.tsv")
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
        matrix=res("reports/{attribute}/confusion_matrix.csv"),
        matrix_png=report(
            res("reports/{attribute}/confusion_matrix.png"),
            category="{attribute}",
            caption="../report/confusion_matrix.rst",
        ),
        metrics=res("reports/{attribute}/metrics.json"),
        predictions=res("reports/{attribute}/predictions.csv"),
        loss=report(res("reports/{attribute}/loss.png"), category="{attribute}", caption="../report/curves.rst"),
        accuracy=report(
            res("reports/{attribute}/accuracy.png"), category="{attribute}", caption="../report/curves.rst"
        ),
        roc=report(res("reports/{attribute}/roc.png"), category="{attribute}", caption="../report/roc.rst"),
    params:
        datasets=lambda wildcards, input: dataset_names_of(input.features),
    log:
        res("logs/evaluate/{attribute}.log"),
    benchmark:
        res("benchmarks/evaluate/{attribute}.tsv")
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
        table=report(res("pipeline/test_predictions.csv"), category="pipeline", caption="../report/pipeline.rst"),
        summary=report(res("pipeline/summary.csv"), category="pipeline", caption="../report/pipeline.rst"),
    params:
        threshold=config["training"]["pipeline"]["threshold"],
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        res("logs/pipeline_test.log"),
    benchmark:
        res("benchmarks/pipeline_test.tsv")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/pipeline_test.py"


rule test_event_list:
    """The pipeline split's test frames as a CrystFEL event list, for `cxlspeaks run` and indexamajig."""
    input:
        split=res(f"splits/{config['training']['pipeline']['split']}.csv"),
        frames=lambda wildcards: pipeline_inputs(wildcards)["frames"],
    output:
        res("pipeline/test_frames.lst"),
    params:
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        res("logs/test_event_list.log"),
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/test_event_list.py"


rule report_index:
    input:
        metrics=expand(res("reports/{attribute}/metrics.json"), attribute=ATTRIBUTES),
        pngs=expand(res("reports/{attribute}/{name}.png"), attribute=ATTRIBUTES,
                    name=["confusion_matrix", "roc", "loss", "accuracy"]),
        pipeline=res("pipeline/test_predictions.csv"),
        summary=res("pipeline/summary.csv"),
        peaks=res("reports/peaks/metrics.csv"),
        peak_pngs=[res("reports/peaks/recall_vs_photons.png"), res("reports/peaks/examples.png")],
    output:
        res("reports/index.html"),
    params:
        attributes=ATTRIBUTES,
        config=config,
    log:
        res("logs/report_index.log"),
    benchmark:
        res("benchmarks/report_index.tsv")
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/report_index.py"
