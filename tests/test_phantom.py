"""Phantom slides: the pyramid writer, ground truth, prescribed lesion sizes."""

import numpy as np
import openslide
import pytest

from micromets.errors import MicrometsError
from micromets.phantom.pyramid import pyramid_level_dimensions, write_pyramid


def _gradient(l0_x, l0_y, l0_w, l0_h):
    yy, xx = np.mgrid[l0_y:l0_y + l0_h, l0_x:l0_x + l0_w]
    rgb = np.empty((l0_h, l0_w, 3), np.uint8)
    rgb[..., 0] = xx % 256
    rgb[..., 1] = yy % 256
    rgb[..., 2] = 128
    return rgb


def test_pyramid_opens_in_openslide_with_mpp_levels_and_pixels(tmp_path):
    path = tmp_path / "g.tiff"
    dims = write_pyramid(path, 1300, 1000, 0.243, _gradient, tile_px=256)
    assert dims == [(1300, 1000), (650, 500), (325, 250), (163, 125)]
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.243, rel=1e-6)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.243, rel=1e-6)
        assert slide.level_dimensions == tuple(dims)
        l0 = np.asarray(slide.read_region((1000, 700), 0, (300, 300)).convert("RGB")).astype(int)
        expected = _gradient(1000, 700, 300, 300).astype(int)
        assert np.abs(l0 - expected).mean() < 3  # JPEG q80 error only
        l1 = np.asarray(slide.read_region((0, 0), 1, (64, 64)).convert("RGB")).astype(int)
        expected_red = (2 * np.arange(64) + 0.5)  # mean of columns 2i and 2i+1 of level 0
        assert np.abs(l1[..., 0].mean(axis=0) - expected_red).max() < 4


def test_pyramid_levels_halve_until_one_tile():
    dims = pyramid_level_dimensions(100_000, 200_000, 256)
    assert len(dims) == 11 and dims[-1] == (98, 196) and dims[-2] == (196, 391)
    assert pyramid_level_dimensions(256, 256, 256) == [(256, 256)]


def test_pyramid_rejects_bad_arguments(tmp_path):
    with pytest.raises(MicrometsError, match="l0_mpp"):
        write_pyramid(tmp_path / "x.tiff", 10, 10, 0.0, _gradient)
    with pytest.raises(MicrometsError, match="tile_px"):
        write_pyramid(tmp_path / "x.tiff", 10, 10, 0.25, _gradient, tile_px=100)
