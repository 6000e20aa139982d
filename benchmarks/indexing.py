"""Indexing rate per finder and dataset of the default run, from CrystFEL's indexamajig (the workflow's `index`
stage), beside the true reflections' rate.

Needs a default run made with CrystFEL's indexamajig found (PATH, `$CXLSPEAKS_INDEXAMAJIG` or
`peaks.index.indexamajig`); without it every row of the stage says "skipped" and so does this script. It reads
`results/reports/peaks/indexing.csv` (running `snakemake --cores 2 results/reports/peaks/indexing.csv` first when
asked to), prints the table of correctly indexed frames per dataset (rows) and finder (columns) with the truth's
rate and each finder's fraction of it, and writes benchmarks/results/indexing.json: rows {finder, dataset, flux,
frames, indexed, correct, wrong, correct_rate, fraction_of_truth, indexamajig}.

    python benchmarks/indexing.py [--workdir .] [--run]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO, help="where the default run's results/ are")
    parser.add_argument("--run", action="store_true", help="run the indexing target first")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "indexing.json")
    args = parser.parse_args()
    target = "results/reports/peaks/indexing.csv"
    if args.run:
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", target], cwd=args.workdir, check=True)
    path = args.workdir / target
    if not path.is_file():
        print(f"{path}: missing; run the default workflow (or --run) first", file=sys.stderr)
        return 2
    table = pd.read_csv(path, dtype={"dataset": str})
    if table["status"].str.startswith("skipped").all():
        print(f"{path}: every row skipped ({table['status'].iloc[0]})", file=sys.stderr)
        return 2
    rows = table[table["dataset"] != "all"].copy()
    truth = rows[rows["finder"] == "truth"].set_index("dataset")["correct"]
    rows["fraction_of_truth"] = [c / truth[d] if truth.get(d, 0) else float("nan")
                                 for d, c in zip(rows["dataset"], rows["correct"])]
    wide = rows.pivot_table(index="dataset", columns="finder", values="correct")
    print("correctly indexed frames (of", int(rows["frames"].max()), "per dataset):")
    print(wide.to_string(float_format=lambda v: f"{v:.0f}"))
    columns = ["finder", "dataset", "flux", "frames", "indexed", "correct", "wrong", "correct_rate",
               "fraction_of_truth", "indexamajig"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(json.loads(rows[columns].to_json(orient="records")), indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
