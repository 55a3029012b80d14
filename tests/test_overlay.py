"""heatmap.tif: the heatmap as a pyramidal tiled TIFF aligned to the slide, read back by tifffile and OpenSlide."""

import json
from pathlib import Path

import numpy as np
import openslide
import tifffile

from micromets.analyze import analyze_slide

NODE2 = Path(__file__).resolve().parents[1] / "demo" / "slides" / "node2.tiff"  # one 0.9 mm micrometastasis


def test_analyze_writes_the_heatmap_as_a_pyramidal_tiff_aligned_to_the_slide(tmp_path):
    result = analyze_slide(NODE2, tmp_path, stain="he")
    folder = tmp_path / result["slide_id"]
    desc = json.loads((folder / "result.json").read_text())["heatmap"]["tiff"]
    h_prob = np.load(folder / "heatmap.npy")
    cell_um, (ox, oy) = result["heatmap"]["cell_um"], result["heatmap"]["l0_origin"]
    l0_per_px = desc["l0_per_px"]
    assert l0_per_px <= cell_um / result["l0_mpp"] / 4
    width, height = -(-result["l0_width"] // l0_per_px), -(-result["l0_height"] // l0_per_px)

    with tifffile.TiffFile(folder / "heatmap.tif") as tif:
        pages = list(tif.pages)
        assert pages[0].shape == (height, width) and pages[0].is_tiled and pages[0].dtype == np.uint8
        assert len(pages) >= 2 and all(p.subfiletype == 1 for p in pages[1:])
        x_res = pages[0].tags["XResolution"].value
        assert abs(1e4 / (x_res[0] / x_res[1]) - result["l0_mpp"] * l0_per_px) < 1e-6  # µm/px from px/cm
        level0 = pages[0].asarray()

    with openslide.OpenSlide(folder / "heatmap.tif") as slide:
        assert slide.dimensions == (width, height) and slide.level_count == len(pages)
        assert abs(float(slide.properties["openslide.mpp-x"]) - result["l0_mpp"] * l0_per_px) < 1e-6
        # The hottest heatmap cell, read at its level-0 centre through the overlay's grid.
        h_r, h_c = np.unravel_index(np.argmax(h_prob), h_prob.shape)
        l0_cell = cell_um / result["l0_mpp"]
        x, y = int((ox + (h_c + 0.5) * l0_cell) // l0_per_px), int((oy + (h_r + 0.5) * l0_cell) // l0_per_px)
        pixel = np.asarray(slide.read_region((x, y), 0, (1, 1)))[0, 0]
    assert pixel[0] == level0[y, x] == round(float(h_prob[h_r, h_c]) * 255) and pixel[0] >= 128
    assert (level0 == 0).mean() > 0.5  # outside the tissue cells stays 0
