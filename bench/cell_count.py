"""H&E tumour-cell count against hand counts (issue 15): how far the count that feeds the AJCC "< 200 cells" ITC rule
is from tumour nuclei marked by eye (:mod:`micromets.evaluation.hand_counts`).

Data: ``bench/data/he_tumour_nuclei_hand.json``: tumour-nucleus centres marked by hand on bundled CC0 CAMELYON16
tiles (5 tumour tiles, 90 nuclei; 7 lymph-node tiles with none; how they were marked is in the file). The bundled
nucleus classifier never trained on CAMELYON16 (``micromets.train.nuclei``), so these are held-out numbers.

    PYTHONPATH=src python bench/cell_count.py [--model DIR]    # default: the bundled models/nuclei

Writes ``bench/results/cell-count-<UTC time>.{json,md}``. The counter before issue 15 (every nucleus, Otsu on
haematoxylin) is on record in ``bench/results/cell-count-20261206T220933Z.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from micromets import cells
from micromets.analyze import CELL_COUNT_MPP
from micromets.evaluation.hand_counts import score
from reporting import utc_stamp, write_report

ROOT = Path(__file__).resolve().parents[1]
HAND = ROOT / "bench/data/he_tumour_nuclei_hand.json"


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"# H&E tumour-cell count vs hand counts ({result['what']})", "",
             "| tile | kind | tumour nuclei counted | marked by hand | counted within 5 µm of a marked one |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['tile']} | {r['kind']} | {r['counted']} | {r['hand']} | {r['matched']} |" for r in result["rows"]]
    lines += ["", f"Tumour tiles: {s['tumour_tiles_counted']} counted vs {s['tumour_tiles_hand']} marked by hand "
              f"(per tile {s['tile_ratio_min_max'][0]}–{s['tile_ratio_min_max'][1]} ×); precision {s['precision']:.2f}, "
              f"recall {s['recall']:.2f}. Lymph-node tiles (no tumour nucleus): {s['lymph_node_tiles_counted_mean']:.1f} "
              f"counted per tile on average, at most {s['lymph_node_tiles_counted_max']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="nucleus classifier folder (default: the bundled models/nuclei)")
    args = ap.parse_args(argv)
    model = args.model or cells.nuclei_model_dir()
    card = cells.model_card(model)
    result = {"what": f"model {card['name']} {card['version']} at {CELL_COUNT_MPP} µm/px"} | score(HAND, model)
    write_report(ROOT / "bench/results" / f"cell-count-{utc_stamp()}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
