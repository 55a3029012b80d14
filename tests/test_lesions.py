"""Lesion outlines from a heatmap: marching-squares iso-line through the cell centres, level-0 pixels."""

import json
from pathlib import Path

import numpy as np
import pytest

from micromets.heatmap import Heatmap
from micromets.lesions import heatmap_outlines_l0, max_value_inside, outlines_l0, top_cells_inside

DEMO_SLIDES = Path(__file__).resolve().parents[1] / "demo" / "slides"


def test_single_hot_cell_gives_a_diamond_one_cell_across():
    h = np.zeros((5, 5))
    h[2, 2] = 1.0
    (poly,) = outlines_l0(h, 0.5, cell_l0=10.0)
    # crossings halfway between the hot centre (25, 25) and its neighbours
    assert poly.bounds == pytest.approx((20, 20, 30, 30))
    assert poly.area == pytest.approx(50.0)


def test_iso_line_moves_with_the_threshold():
    h = np.zeros((5, 5))
    h[2, 2] = 1.0
    (low,) = outlines_l0(h, 0.25, cell_l0=10.0)
    (high,) = outlines_l0(h, 0.75, cell_l0=10.0)
    assert low.bounds == pytest.approx((17.5, 17.5, 32.5, 32.5))
    assert high.bounds == pytest.approx((22.5, 22.5, 27.5, 27.5))


def test_ring_keeps_its_hole_and_diagonals_join():
    h = np.zeros((7, 7))
    h[1:4, 1:4] = 1.0
    h[2, 2] = 0.0
    h[4, 4] = 1.0  # diagonal neighbour of the ring's corner: same outline (8-connected)
    polys = outlines_l0(h, 0.5, cell_l0=1.0)
    assert len(polys) == 1
    assert len(polys[0].interiors) == 1


def test_cells_at_or_below_threshold_give_nothing():
    h = np.full((4, 4), 0.5)
    assert outlines_l0(h, 0.5, cell_l0=1.0) == []


def test_level0_origin_and_cell_size_are_applied():
    hm = Heatmap(h_prob=np.pad(np.ones((2, 2), np.float32), 1), h_tissue=np.ones((4, 4), bool),
                 cell_um=64.0, l0_mpp=0.25, l0_origin=(1000.0, 2000.0))
    (poly,) = heatmap_outlines_l0(hm, 0.5)
    # hot cells 1..2 → centres at 1.5 and 2.5 cells; crossings half a cell outside them
    assert poly.bounds == pytest.approx((1000 + 256, 2000 + 256, 1000 + 768, 2000 + 768))
    assert max_value_inside(hm, [poly]).tolist() == [1.0]


def test_top_cells_inside_takes_each_outlines_highest_cells_once():
    h = np.zeros((6, 10), np.float32)
    h[1:4, 1:4] = [[0.6, 0.7, 0.6], [0.9, 0.8, 0.6], [0.6, 0.6, 0.95]]  # one blob, highest 0.95, 0.9, 0.8
    h[2, 7] = 0.7  # a lone cell
    hm = Heatmap(h_prob=h, h_tissue=np.ones_like(h, bool), cell_um=10.0, l0_mpp=1.0)
    blob, lone = sorted(heatmap_outlines_l0(hm, 0.5), key=lambda p: p.area, reverse=True)
    assert sorted(map(tuple, top_cells_inside(hm, [blob], 3))) == [(2, 1), (2, 2), (3, 3)]
    assert sorted(map(tuple, top_cells_inside(hm, [blob, lone, blob], 1))) == [(2, 7), (3, 3)]  # no repeats
    assert top_cells_inside(hm, [], 3).shape == (0, 2)


def test_a_cell_barely_over_the_threshold_gives_a_speck_that_is_dropped():
    """Demo node 3 had a heatmap cell at 0.5007 (threshold 0.5): its iso-line closed on a 0.2 µm outline of area
    0, listed as a candidate with the id of the real lesion. Outlines under one nucleus (10 µm) are dropped."""
    from micromets.analyze import MIN_OUTLINE_UM
    from micromets.lesions import drop_specks

    h = np.zeros((5, 9), np.float32)
    h[2, 2] = 0.5007
    h[2, 6] = 0.9
    outlines = outlines_l0(h, 0.5, cell_l0=192.0)  # 48 µm cells at 0.25 µm/px
    assert len(outlines) == 2
    kept = drop_specks(outlines, 0.25, MIN_OUTLINE_UM)
    assert len(kept) == 1 and kept[0].centroid.x > 5 * 192


def test_demo_lesion_ids_are_unique_and_no_candidate_is_a_speck(demo_output):
    for result_path in demo_output.glob("*/*/result.json"):
        result = json.loads(result_path.read_text())
        records = result["lesions"] + result["unconfirmed_lesions"]
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)), (result_path, ids)
        assert all(r["diameter_mm"] * 1000 >= 10 and r["area_mm2"] > 0 for r in records), result_path


def test_ids_stay_unique_when_many_candidates_fail_the_confirmation(tmp_path):
    """Demo node 2 at an extent threshold of 0.3: one confirmed lesion and six candidates, numbered 1..7."""
    from micromets.analyze import analyze_slide

    result = analyze_slide(DEMO_SLIDES / "node2.tiff", tmp_path, stain="he", threshold=0.3)
    ids = [r["id"] for r in result["lesions"] + result["unconfirmed_lesions"]]
    assert len(result["lesions"]) >= 1 and len(result["unconfirmed_lesions"]) >= 2
    assert ids == list(range(1, len(ids) + 1))
    geo = json.loads((tmp_path / "node2" / "lesions.geojson").read_text())
    # lesions.geojson lists the lesions, then the unconfirmed candidates (issue 17), each with its unique id
    assert [(f["properties"]["id"], f["properties"]["confirmed"]) for f in geo["features"]] == (
        [(r["id"], True) for r in result["lesions"]] + [(r["id"], False) for r in result["unconfirmed_lesions"]])
