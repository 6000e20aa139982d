# Peak finding: train the peak network and the source paper's heatmap model on the peaks split's training frames
# (GPU jobs when a GPU is given), run every finder over its test frames, and report matching metrics.


rule train_peaks:
    input:
        unpack(peak_frames_inputs),
    output:
        checkpoint="results/models/peaks/checkpoint.pt",
        history="results/models/peaks/history.csv",
    params:
        settings=canonical({**config["peaks"]["network"], "match_radius_px": config["peaks"]["match_radius_px"],
                            "seed": config["seed"]}),
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        "results/logs/train_peaks.log",
    benchmark:
        "results/benchmarks/train_peaks.tsv"
    threads: config["peaks"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["training"]["mem_mb"],
        runtime=240,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/train_peaks.py"


rule train_paper_heatmap:
    input:
        unpack(peak_frames_inputs),
    output:
        checkpoint="results/models/paper_heatmap/checkpoint.pt",
        history="results/models/paper_heatmap/history.csv",
    params:
        settings=canonical({**config["peaks"]["paper_heatmap"], "seed": config["seed"]}),
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        "results/logs/train_paper_heatmap.log",
    benchmark:
        "results/benchmarks/train_paper_heatmap.tsv"
    threads: config["peaks"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["training"]["mem_mb"],
        runtime=240,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/train_paper_heatmap.py"


rule find_peaks:
    input:
        unpack(find_peaks_inputs),
    output:
        peaks="results/peaks/{finder}/peaks.csv",
        timing="results/peaks/{finder}/timing.json",
    params:
        peakfinder8=config["peaks"]["peakfinder8"],
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        "results/logs/find_peaks/{finder}.log",
    benchmark:
        "results/benchmarks/find_peaks/{finder}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/find_peaks.py"


rule peak_report:
    input:
        unpack(peak_report_inputs),
    output:
        metrics=report("results/reports/peaks/metrics.csv", category="peaks", caption="../report/peaks.rst"),
        metrics_json="results/reports/peaks/metrics.json",
        recall="results/reports/peaks/recall_by_photons.csv",
        recall_png=report("results/reports/peaks/recall_vs_photons.png", category="peaks",
                          caption="../report/peaks.rst"),
        examples=report("results/reports/peaks/examples.png", category="peaks", caption="../report/peaks.rst"),
    params:
        finders=PEAK_FINDERS,
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
        radius_px=config["peaks"]["match_radius_px"],
        examples=config["peaks"]["examples"],
        seed=config["seed"],
    log:
        "results/logs/peak_report.log",
    benchmark:
        "results/benchmarks/peak_report.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/peak_report.py"
