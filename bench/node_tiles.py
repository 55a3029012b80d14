"""Real lymph-node tissue of five hospitals through the real ``micromets analyze`` (issue 14: a negative node must
come out negative, with no lesion and <= 1 % of its heatmap's tissue cells at or above the threshold).

    PYTHONPATH=src .venv/bin/python bench/node_tiles.py --model DIR [--data-root ../shared/data]
        [--work bench/work] [--out bench/results]

The slides: each of the five CAMELYON17 tiles of ``camelyon17_tiles/`` (2048 × 2048 px, one per centre, ≈0.24
µm/px, ≈0.5 mm across; CC0) written as a pyramidal tiled JPEG TIFF with its µm/px in the file
(:func:`micromets.phantom.pyramid.write_pyramid`) into ``WORK/node-tiles-<UTC>/slides/``, then analysed in one
``python -m micromets analyze --mode thorough --model DIR`` run (outputs beside them). A tile carries its node's
official label (:data:`NODE_LABELS`); only the tiles of negative nodes are judged, since a tile of a positive
node need not show its tumour. The report says, per tile, whether the model could have seen its centre: "held
out" when the card's ``held_out_groups`` names ``c17:centre_K`` (``bench/tissue_heldout.py --export-fold``),
"trained on" when the tile is one the tissue recipe trains on (:data:`micromets.train.tissue_data.C17_NEGATIVE_TRAIN`)
and the card does not hold it out, "never trained on" otherwise (centre 3's negative tile is in no recipe).

0.25 mm² of tissue per tile (121 heatmap cells of 48 µm): a check on real node tissue of other hospitals, not a
slide-level false-positive rate. Writes ``OUT/node-tiles-<UTC>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from micromets.cli.validate import writable_folder
from micromets.errors import MicrometsError
from micromets.model import resolve_model_dir
from micromets.phantom import pyramid
from micromets.train.data import read_rgb
from micromets.train.tissue_data import C17_MPP, C17_NEGATIVE_TRAIN
from reporting import add_run_options, hot_cells, utc_stamp, write_report

#: the official CAMELYON17 label of the node each tile comes from (../shared/data/README.md)
NODE_LABELS = {"centre_0_patient_006_node_1.jpeg": "negative", "centre_1_patient_024_node_2.jpeg": "itc",
               "centre_2_patient_056_node_1.jpeg": "negative", "centre_3_patient_066_node_1.jpeg": "negative",
               "centre_4_patient_097_node_3.jpeg": "macro"}
#: the issue 14 target on normal tissue: share of tissue cells at or above the threshold
MAX_CELL_SHARE = 0.01


def write_tile_slide(tile: Path, path: Path, l0_mpp: float = C17_MPP) -> tuple[int, int]:
    """One tile as a pyramidal TIFF at ``l0_mpp`` (the tile's own pixels at level 0); returns (width, height)."""
    rgb = read_rgb(tile)
    l0_h, l0_w = rgb.shape[:2]

    def render(l0_x: int, l0_y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        part = rgb[l0_y:l0_y + h, l0_x:l0_x + w]
        out[:part.shape[0], :part.shape[1]] = part
        return out

    pyramid.write_pyramid(path, l0_w, l0_h, l0_mpp, render, description=f"micromets CAMELYON17 tile {tile.name}")
    return l0_w, l0_h


def centre_status(tile_name: str, card: dict) -> str:
    """Whether a model with ``card`` could have trained on the tile's centre (module docstring)."""
    centre = "c17:" + "_".join(tile_name.split("_")[:2])
    if centre in (card.get("held_out_groups") or []):
        return "held out"
    return "trained on" if tile_name in C17_NEGATIVE_TRAIN else "never trained on"


def tile_row(name: str, result: dict, h_prob: np.ndarray, card: dict) -> dict:
    """The numbers of one tile's analyze outputs (read back, not recomputed) and, for a negative node, the target."""
    hot = hot_cells(result, h_prob)
    row = {"tile": name, "node_label": NODE_LABELS[name], "centre": centre_status(name, card),
           "node_class": result["node_class"],
           "lesions": [{"class": r["class"], "diameter_mm": round(r["diameter_mm"], 3),
                        "confirmed_probability": r.get("confirmed_probability")} for r in result["lesions"]],
           "unconfirmed": [{"diameter_mm": round(r["diameter_mm"], 3),
                            "confirmed_probability": r.get("confirmed_probability")}
                           for r in result.get("unconfirmed_lesions", [])],
           **hot, "cell_share": None if hot["cell_share"] is None else round(hot["cell_share"], 4),
           "max_cell_probability": round(hot["max_cell_probability"], 3)}
    if row["node_label"] == "negative":
        row["meets_target"] = (row["node_class"] == "negative" and not row["lesions"]
                               and row["cell_share"] is not None and row["cell_share"] <= MAX_CELL_SHARE)
    return row


def markdown(report: dict) -> str:
    m = report["model"]
    lines = [f"# CAMELYON17 node tiles through micromets analyze, {report['date']}", "",
             f"Model {m['name']} {m['version']} ({m['folder']}). Target for a negative node's tile: negative, no "
             f"lesion, <= {MAX_CELL_SHARE:.0%} of tissue cells at or above the threshold.", "",
             "| tile | node label | centre | class | lesions (mm, confirmed p) | cells >= threshold | highest cell "
             "| target |", "|---|---|---|---|---|---|---|---|"]
    for r in report["tiles"]:
        lesions = ", ".join(f"{x['diameter_mm']:.2f} ({x['confirmed_probability']})" for x in r["lesions"]) or "–"
        target = {True: "met", False: "**not met**"}.get(r.get("meets_target"), "–")
        lines.append(f"| {r['tile']} | {r['node_label']} | {r['centre']} | {r['node_class']} | {lesions} | "
                     f"{r['cells_at_or_above']} of {r['tissue_cells']} ({r['cell_share']:.1%}) | "
                     f"{r['max_cell_probability']} | {target} |")
    return "\n".join(lines + ["", f"Run: {report['run']['folder']} ({report['run']['wall_s']} s)."]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap, "slides and analyze outputs")
    args = ap.parse_args()
    stamp = utc_stamp()
    try:
        model = resolve_model_dir(args.model, "--model")
        tiles = [args.data_root / "camelyon17_tiles" / name for name in NODE_LABELS]
        missing = [str(t) for t in tiles if not t.is_file()]
        if missing:
            raise MicrometsError(f"--data-root {args.data_root}: missing {', '.join(missing)}")
        writable_folder(args.work, f"--work {args.work}")
        writable_folder(args.out, f"--out {args.out}")
        folder = args.work / f"node-tiles-{stamp}"
        (folder / "slides").mkdir(parents=True)
        slides = [folder / "slides" / t.name.replace(".jpeg", ".tif") for t in tiles]
        for tile, slide in zip(tiles, slides):
            write_tile_slide(tile, slide)
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "micromets", "analyze", *map(str, slides), "--out",
                              str(folder / "runs"), "--mode", "thorough", "--model", str(model)],
                             capture_output=True, text=True)
        wall_s = time.perf_counter() - t0
        if run.returncode != 0:
            raise MicrometsError(f"micromets analyze exited {run.returncode}: {run.stderr.strip()[-500:]}")
    except MicrometsError as err:
        print(f"node_tiles.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    card = json.loads((model / "model.json").read_text())
    rows = []
    for tile, slide in zip(tiles, slides):
        out = folder / "runs" / slide.stem
        result = json.loads((out / "result.json").read_text())
        rows.append(tile_row(tile.name, result, np.load(out / result["heatmap"]["file"]), card))
    report = {"date": stamp, "model": {"folder": str(model), "name": card.get("name"), "version": card.get("version"),
                                       "held_out_groups": card.get("held_out_groups")},
              "tiles": rows, "run": {"folder": str(folder), "wall_s": round(wall_s, 1)}}
    write_report(args.out / f"node-tiles-{stamp}", report, markdown(report))


if __name__ == "__main__":
    main()
