"""Photon energy and camera length per frame: the oracle bound beside every estimator, on the default run's test
frames (cxlspeaks.beamparams).

For each dataset of results/splits/all.csv it takes up to ``--frames-per-dataset`` test frames (half empties, half
hits where both exist, the lowest frame numbers), and runs
  bound          the posterior mean of (E, L) from the counts under the expected water + the frame's true Bragg image
                 (ORACLE: the Bragg image is the frames file's signal), prior uniform in (ln E, ln L)
  water_fit      Poisson ML fit of the water profile, Bragg spots masked as Poisson outliers (no truth used)
  water_posterior  the bound's posterior mean computed without the Bragg image, on the pixels the water fit kept
                 (no truth used: the Bayesian water estimator)
  regressor      ridge on geometry-aware profile features, trained on ``--train-frames-per-dataset`` frames of the
                 split's train subset of every dataset (truth used for training only)
  peak_refine    hits only, ORACLE orientation and h,k,l (the frames file's astar/bstar/cstar and peak list),
                 spot positions measured as photon centroids of the recorded counts, L started at the water fit
and prints, per estimator, flux and frame kind, the median and 95th percentile of |error| of E and L in percent,
the fraction of frames within the stated 1 sigma, and the ratio of the median error to the bound's; the bound's
3 x 3 oracle classification accuracy; and the beam-centre invariance check (frame and geometry shifted by
``--shift-px`` pixels: the largest change of each estimate in units of its stated sigma). Writes
benchmarks/results/beamparams.json.

    python benchmarks/beamparams.py [--workdir .] [--frames-per-dataset 10] [--train-frames-per-dataset 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxlspeaks.beamparams.bound import DESIGN_CLENS_M, DESIGN_ENERGIES_EV, WaterBound
from cxlspeaks.beamparams.peak_refine import refine_from_spots, spot_centroids
from cxlspeaks.beamparams.profile import ProfileBins, shift_frame_and_geometry
from cxlspeaks.beamparams.regressor import RidgeRegressor, profile_features
from cxlspeaks.beamparams.water_fit import fit_water_frame
from cxlspeaks.frames import FramesFile

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def pick(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to n frames, half empties and half hits when both exist, lowest frame numbers first."""
    empties, hits = rows[~rows["has_peaks"]], rows[rows["has_peaks"]]
    k_empty = min(len(empties), max(n // 2, n - len(hits)))
    return pd.concat([empties.head(k_empty), hits.head(n - k_empty)]).sort_values("frame")


def truth_peaks(h5, i: int):
    n = int(h5["entry_1/result_1/nPeaks"][i])
    hkl = np.stack([h5[f"entry_1/result_1/peak{c}"][i, :n] for c in "HKL"], axis=1)
    basis = np.column_stack([h5[f"entry/crystal/{c}"][i] for c in ("astar", "bstar", "cstar")])
    return hkl, h5["entry_1/result_1/peakXPosRaw"][i, :n], h5["entry_1/result_1/peakYPosRaw"][i, :n], basis


def estimate_all(frame, geometry, bins, regressor, peaks, hit, bound):
    """{estimator: (E, L, sigma_E, sigma_L)} of one frame (the oracle bound is run separately)."""
    out = {}
    w = fit_water_frame(frame, geometry, bins)
    out["water_fit"] = (w.photon_energy_ev, w.clen_m, w.sigma_photon_energy_ev, w.sigma_clen_m)
    p = bound.posterior(frame, None, drop=w.extra["masked_pixels"])
    out["water_posterior"] = (p.photon_energy_ev, p.clen_m, p.sd_photon_energy_ev, p.sd_clen_m)
    if regressor is not None:
        r = regressor.predict(profile_features(frame, geometry))[0]
        out["regressor"] = (r.photon_energy_ev, r.clen_m, r.sigma_photon_energy_ev, r.sigma_clen_m)
    if hit and peaks is not None:
        hkl, fs, ss, basis = peaks
        cf, cs, _ = spot_centroids(frame, fs, ss)
        try:
            p = refine_from_spots(hkl, cf, cs, basis, geometry, clen_start_m=w.clen_m,
                                  method="peak_refine_oracle_orientation")
            out["peak_refine_oracle"] = (p.photon_energy_ev, p.clen_m, p.sigma_photon_energy_ev, p.sigma_clen_m)
        except ValueError:
            out["peak_refine_oracle"] = (np.nan,) * 4
    return out


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    bound = table[table["estimator"] == "bound"].set_index(["dataset", "frame"])
    for (est, flux, kind), g in table.groupby(["estimator", "flux", "kind"]):
        ok = g.dropna(subset=["err_e_pct"])
        b = bound.loc[[(d, f) for d, f in zip(ok["dataset"], ok["frame"])]] if len(ok) else bound.iloc[:0]
        row = {"estimator": est, "flux": flux, "kind": kind, "frames": len(g), "estimates": len(ok)}
        for q in ("e", "l"):
            err = ok[f"err_{q}_pct"].abs()
            row[f"median_{q}_pct"] = float(err.median()) if len(err) else np.nan
            row[f"p95_{q}_pct"] = float(err.quantile(0.95)) if len(err) else np.nan
            row[f"within_1sigma_{q}"] = float((ok[f"err_{q}_pct"].abs() <= ok[f"sigma_{q}_pct"]).mean()) \
                if len(ok) else np.nan
            row[f"median_sigma_{q}_pct"] = float(ok[f"sigma_{q}_pct"].median()) if len(ok) else np.nan
            bmed = b[f"err_{q}_pct"].abs().median() if len(b) else np.nan
            row[f"ratio_to_bound_{q}"] = float(row[f"median_{q}_pct"] / bmed) if bmed and bmed > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO)
    parser.add_argument("--frames-per-dataset", type=int, default=10)
    parser.add_argument("--train-frames-per-dataset", type=int, default=20)
    parser.add_argument("--shift-px", type=int, nargs=2, default=(5, -3), metavar=("D_FS", "D_SS"))
    parser.add_argument("--shift-frames", type=int, default=2, help="frames per dataset for the invariance check")
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "beamparams.json")
    args = parser.parse_args()
    split_path = args.workdir / "results" / "splits" / "all.csv"
    if not split_path.is_file():
        print(f"{split_path}: missing; run the default workflow first", file=sys.stderr)
        return 2
    split = pd.read_csv(split_path, dtype={"dataset": str})
    datasets = args.datasets or sorted(split["dataset"].unique())
    frames_path = {d: args.workdir / "results" / "datasets" / d / "frames.h5" for d in datasets}
    manifests = {d: pd.read_csv(frames_path[d].parent / "manifest.csv") for d in datasets}
    start = time.time()

    feats, e_tr, l_tr = [], [], []
    for d in datasets:
        rows = split[(split["dataset"] == d) & (split["subset"] == "train")]["frame"].to_numpy()
        take = rows[np.linspace(0, len(rows) - 1, min(args.train_frames_per_dataset, len(rows))).astype(int)]
        with FramesFile(frames_path[d]) as ff:
            e0 = float(ff.h5["entry/instrument/beam/photon_energy_ev"][()])
            l0 = float(ff.h5["entry/instrument/detector/clen_m"][()])
            for i in take:
                feats.append(profile_features(ff.read(int(i)), ff.geometry))
                e_tr.append(e0)
                l_tr.append(l0)
    regressor = RidgeRegressor.fit(np.array(feats), np.array(e_tr), np.array(l_tr)) if len(feats) >= 10 else None
    print(f"regressor: {len(feats)} training frames, cross-validated rms of ln E, ln L = "
          f"{regressor.rms if regressor else 'n/a'}  ({time.time() - start:.0f} s)", flush=True)

    records, invariance, classes = [], [], []
    for d in datasets:
        man = manifests[d]
        test = split[(split["dataset"] == d) & (split["subset"] == "test")].merge(
            man[["frame", "has_peaks", "flux"]], on="frame")
        chosen = pick(test, args.frames_per_dataset)
        with FramesFile(frames_path[d]) as ff:
            h5, geometry = ff.h5, ff.geometry
            e0 = float(h5["entry/instrument/beam/photon_energy_ev"][()])
            l0 = float(h5["entry/instrument/detector/clen_m"][()])
            bins = ProfileBins.from_geometry(geometry)
            bound = WaterBound(geometry)
            for k, row in enumerate(chosen.itertuples()):
                i, hit = int(row.frame), bool(row.has_peaks)
                frame = ff.read(i)
                signal = np.asarray(h5["entry/data/signal"][i], dtype=float) if hit else None
                b = bound.posterior(frame, signal)
                ests = {"bound": (b.photon_energy_ev, b.clen_m, b.sd_photon_energy_ev, b.sd_clen_m)}
                if e0 in DESIGN_ENERGIES_EV and l0 in DESIGN_CLENS_M:
                    classes.append({"dataset": d, "flux": row.flux, "kind": "hit" if hit else "empty",
                                    "correct": bool(DESIGN_ENERGIES_EV[b.class_energy] == e0
                                                    and DESIGN_CLENS_M[b.class_clen] == l0)})
                peaks = truth_peaks(h5, i) if hit else None
                ests.update(estimate_all(frame, geometry, bins, regressor, peaks, hit, bound))
                for name, (e, L, se, sl) in ests.items():
                    records.append({"dataset": d, "frame": i, "flux": row.flux, "kind": "hit" if hit else "empty",
                                    "estimator": name, "photon_energy_ev": e, "clen_m": L,
                                    "err_e_pct": 100 * (e / e0 - 1), "err_l_pct": 100 * (L / l0 - 1),
                                    "sigma_e_pct": 100 * se / e0, "sigma_l_pct": 100 * sl / l0,
                                    "bound_edge_mass": b.edge_mass if name == "bound" else np.nan})
                if k < args.shift_frames:
                    moved, geo2 = shift_frame_and_geometry(frame, geometry, *args.shift_px)
                    if peaks is not None:
                        peaks = (peaks[0], peaks[1] + args.shift_px[0], peaks[2] + args.shift_px[1], peaks[3])
                    shifted = estimate_all(moved, geo2, ProfileBins.from_geometry(geo2), regressor, peaks, hit,
                                           WaterBound(geo2))
                    for name, (e, L, se, sl) in shifted.items():
                        e1, l1, se1, sl1 = ests[name]
                        invariance.append({"dataset": d, "frame": i, "estimator": name,
                                           "shift_e_sigma": abs(e - e1) / se1 if se1 > 0 else np.nan,
                                           "shift_l_sigma": abs(L - l1) / sl1 if sl1 > 0 else np.nan})
        print(f"dataset {d}: {len(chosen)} frames ({time.time() - start:.0f} s)", flush=True)

    table = pd.DataFrame(records)
    summary = summarise(table)
    cls = pd.DataFrame(classes)
    inv = pd.DataFrame(invariance)
    pd.set_option("display.width", 200)
    cols = ["estimator", "flux", "kind", "estimates", "median_e_pct", "p95_e_pct", "median_l_pct", "p95_l_pct",
            "within_1sigma_e", "within_1sigma_l", "ratio_to_bound_e", "ratio_to_bound_l"]
    print("\n|error| in percent of the truth (median, p95); within_1sigma: fraction of frames with |error| <= the "
          "stated sigma; ratio_to_bound: median error / the bound's")
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if len(cls):
        acc = cls.groupby(["flux", "kind"])["correct"].mean()
        print("\nbound's 3 x 3 oracle classification accuracy (datasets 01-09):")
        print(acc.to_string(float_format=lambda v: f"{v:.3f}"))
    if len(inv):
        worst = inv.groupby("estimator")[["shift_e_sigma", "shift_l_sigma"]].max()
        print(f"\nbeam centre moved by {tuple(args.shift_px)} px with its geometry: largest |change| / sigma")
        print(worst.to_string(float_format=lambda v: f"{v:.3g}"))
    result = {"frames_per_dataset": args.frames_per_dataset,
              "train_frames_per_dataset": args.train_frames_per_dataset, "shift_px": list(args.shift_px),
              "seconds": time.time() - start, "summary": summary.to_dict(orient="records"),
              "oracle_class_accuracy": (cls.groupby(["flux", "kind"])["correct"].mean().reset_index()
                                        .to_dict(orient="records") if len(cls) else []),
              "invariance": inv.to_dict(orient="records"), "frames": table.to_dict(orient="records")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=float))
    print(f"\nwrote {args.output} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
