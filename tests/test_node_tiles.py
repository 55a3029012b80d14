"""bench/node_tiles.py: CAMELYON17 node tiles as slides, and the default model on the negative tile of a centre no
bundled model trained on."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import node_tiles  # noqa: E402

UNSEEN_NEGATIVE = "centre_3_patient_066_node_1.jpeg"


def test_a_tile_becomes_a_pyramidal_slide_with_its_pixels_and_mpp(tmp_path):
    rgb = np.zeros((300, 500, 3), np.uint8) + np.array([200, 60, 120], np.uint8)
    rgb[:20, :20] = 0
    Image.fromarray(rgb).save(tmp_path / "t.png")
    assert node_tiles.write_tile_slide(tmp_path / "t.png", tmp_path / "t.tif", 0.24) == (500, 300)
    with openslide.OpenSlide(str(tmp_path / "t.tif")) as osr:
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.24, rel=1e-4)
        assert osr.dimensions == (500, 300)
        back = np.asarray(osr.read_region((0, 0), 0, (500, 300)).convert("RGB")).astype(int)
    assert back[2:16, 2:16].max() <= 40 and np.abs(back[100:200, 100:400] - [200, 60, 120]).max() <= 12


def test_the_centre_of_a_tile_is_held_out_trained_on_or_never_trained_on():
    fold2 = {"held_out_groups": ["c17:centre_0", "pcam:1"]}
    assert node_tiles.centre_status("centre_0_patient_006_node_1.jpeg", fold2) == "held out"
    assert node_tiles.centre_status("centre_2_patient_056_node_1.jpeg", fold2) == "trained on"
    assert node_tiles.centre_status("centre_0_patient_006_node_1.jpeg", {}) == "trained on"
    assert node_tiles.centre_status(UNSEEN_NEGATIVE, {}) == "never trained on"


def test_a_negative_tile_meets_the_target_only_without_lesion_and_with_at_most_1_percent_hot_cells():
    result = {"threshold": 0.5, "timing_s": {"n_patches": 100}, "node_class": "negative", "lesions": [],
              "unconfirmed_lesions": [{"diameter_mm": 0.3, "confirmed_probability": 0.6}]}
    h_prob = np.zeros((10, 10), np.float32)
    h_prob[0, 0] = 0.9
    assert node_tiles.tile_row(UNSEEN_NEGATIVE, result, h_prob, {})["meets_target"]
    h_prob[0, 1] = 0.5  # 2 % of cells at or above the threshold
    assert not node_tiles.tile_row(UNSEEN_NEGATIVE, result, h_prob, {})["meets_target"]
    positive = node_tiles.tile_row("centre_4_patient_097_node_3.jpeg", result, h_prob, {})
    assert "meets_target" not in positive  # a positive node's tile need not show its tumour: not judged


def test_a_negative_node_of_a_centre_no_model_trained_on_has_no_lesion_and_no_hot_cell(shared_data, tmp_path):
    """Real lymph-node tissue from a hospital the default model never saw: the CAMELYON17 tile of centre 3,
    patient_066 node 1 (official node label negative; in no training split of the bundled models), lymphoid
    tissue with vessels and sinus histiocytes, as a slide at its 0.24 µm/px through ``micromets analyze``. The
    issue 14 target on normal tissue: node negative, no lesion, <= 1 % of tissue cells at or above the threshold
    (the default model: no cell, its highest 0.31 of 120). Dense lymphoid tissue is the easy part of a node: every
    bundled model passes here, while models that never saw centre 0 leave 8-24 % of that centre's negative tile
    hot (docs/model.md), so this pins a floor, not the bar."""
    slide = tmp_path / "c17_centre3_negative.tif"
    node_tiles.write_tile_slide(shared_data / "camelyon17_tiles" / UNSEEN_NEGATIVE, slide)
    done = subprocess.run([sys.executable, "-m", "micromets", "analyze", str(slide), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / slide.stem
    result = json.loads((folder / "result.json").read_text())
    row = node_tiles.tile_row(UNSEEN_NEGATIVE, result, np.load(folder / result["heatmap"]["file"]), {})
    assert row["centre"] == "never trained on" and row["tissue_cells"] > 100
    assert row["meets_target"], row
