"""bench/breast_carcinoma_slide.py: which BACH tiles make the carcinoma slide, and how a run's calls are read."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import breast_carcinoma_slide as bcs  # noqa: E402


def test_the_slide_takes_the_invasive_and_in_situ_tiles_in_labels_order(tmp_path):
    folder = tmp_path / "breast_he" / "bach_wsi_A03"
    folder.mkdir(parents=True)
    (folder / "labels.csv").write_text(
        "file,label,frac_invasive,frac_in_situ,tissue_frac,mask\n"
        "images/a.jpg,unannotated,0,0,0.5,m\nimages/b.jpg,in_situ_carcinoma,0,0.9,0.8,m\n"
        "images/c.jpg,partial_annotation,0.2,0,0.8,m\nimages/d.jpg,invasive_carcinoma,0.9,0,0.9,m\n")
    assert [p.name for p in bcs.carcinoma_tiles(tmp_path)] == ["b.jpg", "d.jpg"]


def test_a_tile_is_found_when_a_counted_lesion_touches_it_and_called_when_it_holds_a_hot_cell():
    """Three 100 px tiles in a row, 50 px cells: a lesion over the a|b seam finds a and b; c holds a hot cell
    only. Two of three found: the target (every tile) is not met."""
    layout = {"n_tiles": 3, "l0_tile_px": [100, 100],
              "l0_origins": {"a.jpg": [0, 0], "b.jpg": [100, 0], "c.jpg": [200, 0]}}
    h_prob = np.array([[0.1, 0.2, 0.9, 0.5, 0.0, 0.6], [0.0, 0.0, 0.7, 0.0, 0.0, 0.0]], np.float32)
    result = {"l0_mpp": 0.5, "threshold": 0.5, "node_class": "micro", "timing_s": {"n_patches": 12},
              "heatmap": {"cell_um": 25.0, "l0_origin": [0.0, 0.0]},
              "lesions": [{"id": 1, "diameter_mm": 0.3, "l0_outline": [[[90, 10], [110, 10], [110, 30], [90, 30],
                                                                        [90, 10]]]}]}
    report = bcs.summarise(result, h_prob, {"name": "m", "version": "1", "held_out_groups": ["bach:A03"]}, layout)
    assert (report["tiles_found"], report["tiles_called"], report["n_tiles"]) == (2, 2, 3)
    assert report["meets_target"] is False and report["largest_mm"] == 0.3
    assert report["model"]["bach_a03"] == "held out" and report["cells_at_or_above"] == 4
