"""BACH A03's carcinoma tiles as one slide through the real ``micromets analyze``: how much of a carcinoma the
detector finds (issue 14 target: breast carcinoma tiles of unseen patients, every one found).

    PYTHONPATH=src .venv/bin/python bench/breast_carcinoma_slide.py --model DIR [--data-root ../shared/data]
        [--work bench/work] [--out bench/results]

The slide: the 56 tiles labelled ``invasive_carcinoma`` or ``in_situ_carcinoma`` in BACH WSI A03's labels.csv
(their masks cover most of each tile), laid edge to edge as :mod:`breast_normal_slide` lays the normal ones
(same writer, same cache by hash in ``WORK/breast-carcinoma-<hash>/``). Every tile is carcinoma, so a tile is
*found* when a lesion the run counts touches it, and *called* when it holds a heatmap cell at or above the
threshold; the node class and the largest lesion say whether the sheet comes out as the macrometastasis it is.
Read back from the run's ``result.json`` and ``heatmap.npy``. Writes ``OUT/breast-carcinoma-<UTC>.json`` and
``.md``. A model held out from BACH (card ``held_out_groups`` with ``bach:A03``) is the fair one:
``bench/tissue_heldout.py --export-fold fold1 --out DIR``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from breast_normal_slide import BACH, build_mosaic_slide, check_args, held_out, per_tile, run_analyze
from micromets.errors import MicrometsError
from reporting import add_run_options, hot_cells, utc_stamp, write_report

CARCINOMA_LABELS = ("invasive_carcinoma", "in_situ_carcinoma")


def carcinoma_tiles(data_root: Path) -> list[Path]:
    """The BACH A03 tiles labelled invasive or in situ carcinoma, in labels.csv order."""
    labels = Path(data_root) / BACH / "labels.csv"
    with open(labels, newline="") as fh:
        tiles = [labels.parent / row["file"] for row in csv.DictReader(fh) if row["label"] in CARCINOMA_LABELS]
    if not tiles:
        raise MicrometsError(f"{labels}: no carcinoma tiles")
    return tiles


def summarise(result: dict, h_prob: np.ndarray, card: dict, layout: dict) -> dict:
    """Tiles found (a counted lesion touches them) and called (a hot cell), node class, largest lesion."""
    tiles = per_tile(result, h_prob, float(result["threshold"]), layout)
    hot = hot_cells(result, h_prob)
    return {"model": {"name": card.get("name"), "version": card.get("version"),
                      "bach_a03": "held out" if held_out(card) else "not held out (trained on these tiles)"},
            "n_tiles": layout["n_tiles"], "tiles_found": sum(bool(t["lesions"]) for t in tiles),
            "tiles_called": sum(t["cells_at_or_above"] > 0 for t in tiles), "node_class": result["node_class"],
            "n_lesions": len(result["lesions"]),
            "largest_mm": round(max((r["diameter_mm"] for r in result["lesions"]), default=0.0), 3),
            "cells_at_or_above": hot["cells_at_or_above"], "tissue_cells": hot["tissue_cells"],
            "meets_target": sum(bool(t["lesions"]) for t in tiles) == layout["n_tiles"]}


def markdown(report: dict) -> str:
    m = report["model"]
    return "\n".join([
        f"# BACH A03 carcinoma slide ({report['n_tiles']} tiles), {report['date']}", "",
        f"Model {m['name']} {m['version']} ({report['folder']}): BACH A03 {m['bach_a03']}.", "",
        "| number | value | target |", "|---|---|---|",
        f"| tiles a counted lesion touches (found) | {report['tiles_found']} of {report['n_tiles']} | all |",
        f"| tiles with a cell >= threshold | {report['tiles_called']} of {report['n_tiles']} | all |",
        f"| node class (largest lesion) | {report['node_class']} ({report['largest_mm']} mm) | macro |",
        f"| lesions | {report['n_lesions']} | – |",
        f"| cells >= threshold | {report['cells_at_or_above']} of {report['tissue_cells']} | – |", "",
        f"Meets the target: {'yes' if report['meets_target'] else 'no'}."]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap)
    args = ap.parse_args()
    stamp = utc_stamp()
    try:
        model = check_args(args)
        slide, layout = build_mosaic_slide(carcinoma_tiles(args.data_root), args.work, "breast_carcinoma_A03",
                                           {"source": str(args.data_root / BACH)},
                                           log=lambda m: print(m, file=sys.stderr, flush=True))
        result, folder, _ = run_analyze(slide, model, slide.parent / "runs" / stamp)
    except MicrometsError as err:
        print(f"breast_carcinoma_slide.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    card = json.loads((model / "model.json").read_text())
    report = {"date": stamp, "folder": str(model)} | summarise(
        result, np.load(folder / result["heatmap"]["file"]), card, layout)
    write_report(args.out / f"breast-carcinoma-{stamp}", report, markdown(report))


if __name__ == "__main__":
    main()
