"""The H&E tumour-cell count against tumour nuclei marked by hand (issue 15).

A hand-count file (``bench/data/he_tumour_nuclei_hand.json``) lists tiles (paths under its ``tiles_root``, relative
to the file's repository) at ``l0_mpp`` µm/px, each with the centres of its tumour nuclei in tile pixels; tiles
without tumour list none. Each tile is counted as ``micromets analyze`` counts a deposit
(:func:`micromets.cells.tumour_nuclei`, the whole tile as the outline). A counted nucleus matches a marked one within
``MATCH_UM`` (one to one, nearest pairs first): precision = matched / counted, recall = matched / marked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from micromets import cells

MATCH_UM = 5.0


def matched(pred_xy: np.ndarray, true_xy: np.ndarray, mpp: float, within_um: float = MATCH_UM) -> int:
    """One-to-one matches of two point sets (pixels at ``mpp``) within ``within_um``, nearest pairs first."""
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return 0
    d_um = np.hypot(*(np.asarray(pred_xy)[:, None, :] - np.asarray(true_xy)[None, :, :]).transpose(2, 0, 1)) * mpp
    used_p, used_t = set(), set()
    for i, j in zip(*np.unravel_index(np.argsort(d_um, axis=None), d_um.shape)):
        if d_um[i, j] > within_um:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p)


def score(hand_path: str | Path, model_dir: str | Path | None = None) -> dict:
    """Per tile (count, hand count, matched) and the summary, for the nucleus classifier in ``model_dir``."""
    hand_path = Path(hand_path)
    doc = json.loads(hand_path.read_text())
    root = hand_path.resolve().parents[2] / doc["tiles_root"]
    rows = []
    for tile in doc["tiles"]:
        rgb = np.asarray(Image.open(root / tile["tile"]).convert("RGB"))
        found = cells.tumour_nuclei(rgb, doc["l0_mpp"], model_dir=model_dir)
        true = np.asarray(tile["tumour_nuclei_l0"], float).reshape(-1, 2)
        rows.append({"tile": tile["tile"], "kind": tile["kind"], "counted": len(found), "hand": len(true),
                     "matched": matched(found.xy_px, true, doc["l0_mpp"]), "candidates": found.n_candidates})
    tumour = [r for r in rows if r["hand"]]
    normal = [r for r in rows if not r["hand"]]
    summary = {
        "tumour_tiles_counted": sum(r["counted"] for r in tumour),
        "tumour_tiles_hand": sum(r["hand"] for r in tumour),
        "precision": round(sum(r["matched"] for r in tumour) / max(1, sum(r["counted"] for r in tumour)), 3),
        "recall": round(sum(r["matched"] for r in tumour) / max(1, sum(r["hand"] for r in tumour)), 3),
        "tile_ratio_min_max": [round(min(r["counted"] / r["hand"] for r in tumour), 2),
                               round(max(r["counted"] / r["hand"] for r in tumour), 2)],
        "lymph_node_tiles_counted_mean": round(float(np.mean([r["counted"] for r in normal])), 2),
        "lymph_node_tiles_counted_max": max(r["counted"] for r in normal),
    }
    return {"hand_counts": str(hand_path.name), "match_um": MATCH_UM, "rows": rows, "summary": summary}
