"""bench/breast_normal_slide.py: the mosaic of tiles it turns into a slide, read back through OpenSlide."""

import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import breast_normal_slide as bns  # noqa: E402

COLOURS = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 200, 40), (160, 40, 160)]


def test_mosaic_is_a_pyramidal_slide_with_the_tiles_in_reading_order_and_its_mpp(tmp_path):
    """5 tiles of 40 × 30 px, each one colour with a black mark in its top-left corner: a 3 × 2 grid (the sixth
    cell glass), 120 × 60 px at 0.467 µm/px as OpenSlide reports it, each tile where the layout says."""
    tiles = []
    for i, colour in enumerate(COLOURS):
        rgb = np.zeros((30, 40, 3), np.uint8) + np.array(colour, np.uint8)
        rgb[:6, :6] = 0
        tiles.append(tmp_path / f"t{i}.png")
        Image.fromarray(rgb).save(tiles[-1])
    layout = bns.write_mosaic(tiles, tmp_path / "m.tif", 0.467, tile_px=32, jpeg_quality=95)
    assert (layout["rows"], layout["cols"], layout["l0_tile_px"]) == (2, 3, [40, 30])
    with openslide.OpenSlide(str(tmp_path / "m.tif")) as osr:
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.467, rel=1e-4)
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.467, rel=1e-4)
        assert osr.dimensions == (120, 60) and osr.level_count == 3
        rgb = np.asarray(osr.read_region((0, 0), 0, (120, 60)).convert("RGB")).astype(int)
    for i, colour in enumerate(COLOURS):
        x, y = layout["l0_origins"][f"t{i}.png"]
        assert (x, y) == ((i % 3) * 40, (i // 3) * 30)
        assert np.abs(rgb[y + 12:y + 26, x + 12:x + 36] - colour).max() <= 12, i  # inside, off the seams
        assert rgb[y + 1:y + 4, x + 1:x + 4].max() <= 40, i  # its top-left mark: not flipped or shifted
    assert rgb[34:56, 84:116].min() >= 245  # the empty sixth cell is white glass


def test_grid_is_square_ish_and_holds_every_tile():
    assert bns.grid_shape(128) == (11, 12) and bns.grid_shape(1) == (1, 1) and bns.grid_shape(9) == (3, 3)


def test_per_tile_puts_each_call_in_the_tile_under_it():
    """Two 100 px tiles side by side, 50 px heatmap cells: the cells >= threshold are counted in the tile under
    their centres, a lesion in every tile its outline touches; tiles without calls are not listed."""
    meta = {"l0_tile_px": [100, 100], "l0_origins": {"a.jpg": [0, 0], "b.jpg": [100, 0], "c.jpg": [200, 0]}}
    h_prob = np.array([[0.1, 0.2, 0.9, 0.5, 0.0, 0.49], [0.0, 0.0, 0.7, 0.0, 0.0, 0.0]], np.float32)
    result = {"l0_mpp": 0.5, "heatmap": {"cell_um": 25.0, "l0_origin": [0.0, 0.0]},
              "lesions": [{"id": 1, "l0_outline": [[[90, 10], [110, 10], [110, 30], [90, 30], [90, 10]]]}]}
    assert bns.per_tile(result, h_prob, 0.5, meta) == [
        {"tile": "b.jpg", "cells_at_or_above": 3, "lesions": [1]},
        {"tile": "a.jpg", "cells_at_or_above": 0, "lesions": [1]}]
