# Indexing: every peak finder's peaks (and the true reflections) on the peak split's first test crystal frames of
# each dataset, through CrystFEL's indexamajig; rate, right and wrong solutions per dataset and flux level in
# results/reports/peaks/indexing.csv. Without indexamajig (not on PATH, no peaks.index.indexamajig) the job writes
# the same table with status "skipped: indexamajig not found" and one line in its log: cheap, so it is in `all`.
from cxlspeaks.peaks.indexing import find_indexamajig

INDEX = config["peaks"]["index"]
INDEX_DATASETS = split_datasets(PEAK_SPLIT)


rule index_peaks:
    input:
        split=res(f"splits/{PEAK_SPLIT}.csv"),
        frames=expand(res("datasets/{dataset}/frames.h5"), dataset=INDEX_DATASETS),
        manifests=expand(res("datasets/{dataset}/manifest.csv"), dataset=INDEX_DATASETS),
        geometries=expand(res("datasets/{dataset}/detector.geom"), dataset=INDEX_DATASETS),
        peaks=expand(res("peaks/{finder}/peaks.csv"), finder=PEAK_FINDERS),
        reflections=res("structure/reflections.h5"),
    output:
        summary=res("reports/peaks/indexing.csv"),
        frames=res("index/frames.csv"),
        work=directory(res("index/work")),
    params:
        finders=PEAK_FINDERS,
        datasets=lambda wildcards, input: dataset_names_of(input.frames),
        settings=canonical(INDEX),
        # the program found when the workflow starts: installing CrystFEL (or changing the path) reruns the job
        program=(find_indexamajig(INDEX["indexamajig"]) if INDEX["enabled"] else None) or "none",
    log:
        res("logs/index_peaks.log"),
    benchmark:
        res("benchmarks/index_peaks.tsv")
    threads: INDEX["threads"]
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        "../../envs/simulation.yaml"
    script:
        "../scripts/index_peaks.py"
