# Peak finding: train the peak network and the source paper's heatmap model on the peaks split's training frames
# (GPU jobs when a GPU is given) and the cascade finder (CPU), run every finder over its test frames, and report
# matching metrics beside the detection bound (bound.csv).


rule train_peaks:
    input:
        unpack(peak_frames_inputs),
    output:
        checkpoint=res("models/peaks/checkpoint.pt"),
        history=res("models/peaks/history.csv"),
    params:
        settings=canonical({**config["peaks"]["network"], "match_radius_px": config["peaks"]["match_radius_px"],
                            "seed": config["seed"]}),
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        res("logs/train_peaks.log"),
    benchmark:
        res("benchmarks/train_peaks.tsv")
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
        checkpoint=res("models/paper_heatmap/checkpoint.pt"),
        history=res("models/paper_heatmap/history.csv"),
    params:
        settings=canonical({**config["peaks"]["paper_heatmap"], "seed": config["seed"]}),
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        res("logs/train_paper_heatmap.log"),
    benchmark:
        res("benchmarks/train_paper_heatmap.tsv")
    threads: config["peaks"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["training"]["mem_mb"],
        runtime=240,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/train_paper_heatmap.py"


rule train_cascade:
    input:
        unpack(peak_frames_inputs),
    output:
        checkpoint=res("models/peaks_cascade/checkpoint.pt"),
    params:
        settings=canonical({**config["peaks"]["cascade"], "match_radius_px": config["peaks"]["match_radius_px"],
                            "seed": config["seed"]}),
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        res("logs/train_cascade.log"),
    benchmark:
        res("benchmarks/train_cascade.tsv")
    threads: 1
    resources:
        mem_mb=config["training"]["mem_mb"],
        runtime=240,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/train_cascade.py"


rule find_peaks:
    input:
        unpack(find_peaks_inputs),
    output:
        peaks=res("peaks/{finder}/peaks.csv"),
        timing=res("peaks/{finder}/timing.json"),
    params:
        peakfinder8=config["peaks"]["peakfinder8"],
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
    log:
        res("logs/find_peaks/{finder}.log"),
    benchmark:
        res("benchmarks/find_peaks/{finder}.tsv")
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
        # made first, so the HTML index (which needs this report) shows it (workflow/rules/index.smk)
        indexing=res("reports/peaks/indexing.csv"),
    output:
        metrics=report(res("reports/peaks/metrics.csv"), category="peaks", caption="../report/peaks.rst"),
        metrics_json=res("reports/peaks/metrics.json"),
        recall=res("reports/peaks/recall_by_photons.csv"),
        recall_png=report(res("reports/peaks/recall_vs_photons.png"), category="peaks",
                          caption="../report/peaks.rst"),
        examples=report(res("reports/peaks/examples.png"), category="peaks", caption="../report/peaks.rst"),
        bound=res("reports/peaks/bound.csv"),
    params:
        finders=PEAK_FINDERS,
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
        radius_px=config["peaks"]["match_radius_px"],
        examples=config["peaks"]["examples"],
        seed=config["seed"],
    log:
        res("logs/peak_report.log"),
    benchmark:
        res("benchmarks/peak_report.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/training.yaml"
    script:
        "../scripts/peak_report.py"
