"""How well small deposits are outlined (issue 15): each true lesion of a phantom set up to 0.5 mm against the
counted lesion that overlaps it most, from the results folder of a ``micromets bench`` run.

    PYTHONPATH=src python bench/outline_fit.py bench/work/runs/<run>/thorough bench/work/phantoms-<hash> [--label X]

Per true lesion: intersection over union with the truth outline, the share of the truth covered (recall) and of
the outline on truth (precision), and the detected minus true maximum Feret diameter. Writes
``bench/results/outline-fit-<UTC>.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import shapely

from reporting import utc_stamp, write_report

MAX_MM = 0.5


def rows(run_dir: Path, phantoms: Path) -> list[dict]:
    out = []
    for entry in csv.DictReader(open(phantoms / "manifest.csv")):
        result = run_dir / entry["name"] / "result.json"
        if not entry["lesion_classes"] or not result.is_file():
            continue
        res = json.loads(result.read_text())
        detected = [shapely.union_all([shapely.Polygon(r) for r in les["l0_outline"]]) for les in res["lesions"]]
        detected_mm = [les["diameter_mm"] for les in res["lesions"]]
        features = json.loads((phantoms / entry["geojson_path"]).read_text())["features"]
        for feature, cls, true_mm in zip(features, entry["lesion_classes"].split(";"),
                                         map(float, entry["lesion_diameters_mm"].split(";"))):
            if true_mm > MAX_MM:
                continue
            truth = shapely.geometry.shape(feature["geometry"])
            overlap = [d.intersection(truth).area for d in detected]
            row = {"slide": entry["name"], "class": cls, "true_mm": true_mm, "found": bool(overlap and max(overlap) > 0)}
            if row["found"]:
                k = int(np.argmax(overlap))
                best = detected[k]
                inter = best.intersection(truth).area
                row.update(iou=inter / best.union(truth).area, recall=inter / truth.area, precision=inter / best.area,
                           diameter_error_mm=detected_mm[k] - true_mm)
            out.append(row)
    return out


def markdown(label: str, table: list[dict]) -> str:
    found = [r for r in table if r["found"]]
    lines = [f"# Outlines of deposits up to {MAX_MM} mm ({label})", "",
             "| slide | class | true mm | IoU | recall | precision | diameter error mm |", "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['slide']} | {r['class']} | {r['true_mm']:.3f} | " + (
            f"{r['iou']:.2f} | {r['recall']:.2f} | {r['precision']:.2f} | {r['diameter_error_mm']:+.3f} |"
            if r["found"] else "not found | | | |"))
    if found:
        mean = {k: float(np.mean([r[k] for r in found])) for k in ("iou", "recall", "precision")}
        err = np.array([r["diameter_error_mm"] for r in found])
        lines += ["", f"{len(found)} of {len(table)} found; mean IoU {mean['iou']:.2f}, recall {mean['recall']:.2f}, "
                  f"precision {mean['precision']:.2f}; diameter error {err.mean():+.3f} mm signed, "
                  f"{np.abs(err).mean():.3f} mm absolute."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("phantoms", type=Path)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    table = rows(args.run_dir, args.phantoms)
    label = args.label or str(args.run_dir)
    write_report(Path(__file__).parent / "results" / f"outline-fit-{utc_stamp()}", {"label": label, "rows": table},
                 markdown(label, table))


if __name__ == "__main__":
    main()
