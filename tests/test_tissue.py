"""Tissue mask: tissue in, glass, black padding and pen ink out."""

import numpy as np

from micromets.slide import open_slide
from micromets.tissue import tissue_from_rgb, tissue_mask


def test_real_slide_tissue_mask_covers_the_tissue(shared_data):
    with open_slide(shared_data / "slides" / "cmu_small_region.svs") as slide:
        tissue = tissue_mask(slide)
    rgb = tissue.rgb.astype(int)
    # tissue pixels are stained (darker than glass); what is left out is mostly bright glass
    assert 0.2 < tissue.mask.mean() < 0.6
    assert rgb[tissue.mask].mean() < 200 < rgb[~tissue.mask].mean()
    assert 0.3 < tissue.area_mm2 < 1.0  # the slide is 1.1 × 1.5 mm, about a third of it tissue


def test_glass_black_padding_and_pen_marks_are_not_tissue():
    rgb = np.full((200, 300, 3), 242, np.uint8)            # glass
    rgb[50:150, 30:130] = (190, 110, 170)                   # eosin-haematoxylin pink-purple tissue
    rgb[:, 260:] = (5, 5, 5)                                # black scanner padding
    rgb[60:140, 160:175] = (30, 140, 60)                    # green pen
    rgb[60:140, 190:205] = (20, 40, 170)                    # blue pen
    mask = tissue_from_rgb(rgb, px_um=8.0)
    assert mask[60:140, 40:120].all()
    assert not mask[:, 150:].any()
    assert not mask[:40].any()


def test_blank_slide_has_no_tissue():
    assert not tissue_from_rgb(np.full((100, 100, 3), 240, np.uint8), px_um=8.0).any()


def test_row_bands_do_not_change_the_mask(shared_data):
    """The per-pixel tests run in row bands to bound memory; any band height gives the same mask."""
    with open_slide(shared_data / "slides" / "cmu_small_region.svs") as slide:
        rgb, mpp = slide.thumbnail(4.0)
    whole = tissue_from_rgb(rgb, mpp, band_rows=rgb.shape[0])
    assert whole.any() and not whole.all()
    for band_rows in (1, 7, 64):
        assert np.array_equal(tissue_from_rgb(rgb, mpp, band_rows=band_rows), whole)
