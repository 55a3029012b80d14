"""Synthetic IHC slides (Beer–Lambert): seamless tiles, truth that matches the request, OpenSlide-readable files."""

import json

import numpy as np
import openslide
import pytest

from micromets import stain
from micromets.errors import MicrometsError
from micromets.phantom.ihc import CELL_RADIUS_UM, make_ihc_phantom, write_ihc_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_ihc_phantom(seed=3, size_mm=(1.6, 1.6), itc_sizes=(5, 30, 150), micro_sizes=(300,),
                            n_haemosiderin=2, n_anthracotic=2, min_separation_um=150)


def test_tiles_are_seamless(phantom):
    c = phantom.clusters[0]
    x, y = int(c["centre_um"][0] / phantom.l0_mpp) - 150, int(c["centre_um"][1] / phantom.l0_mpp) - 100
    whole = phantom.render_region(x, y, 300, 200)
    left = phantom.render_region(x, y, 137, 200)
    right = phantom.render_region(x + 137, y, 163, 200)
    np.testing.assert_array_equal(whole, np.concatenate([left, right], axis=1))
    top = phantom.render_region(x, y, 300, 90)
    np.testing.assert_array_equal(whole[:90], top)


def test_truth_matches_the_request(phantom):
    truth = phantom.truth()
    assert [c["n_cells"] for c in truth["clusters"]] == [300, 150, 30, 5]
    assert [c["expected_class"] for c in truth["clusters"]] == ["micro", "itc", "itc", "itc"]
    assert truth["node_class"] == "micro"
    assert all(len(c["cells_l0"]) == c["n_cells"] for c in truth["clusters"])
    assert all(c["extent_mm"] <= 0.2 for c in truth["clusters"][1:])
    assert sorted(d["kind"] for d in truth["decoys"]) == ["anthracotic"] * 2 + ["haemosiderin"] * 2
    cells = np.concatenate([np.asarray(c["cells_l0"]) for c in truth["clusters"]]) * phantom.l0_mpp
    assert phantom.inside_tissue(cells[:, 0], cells[:, 1], margin_um=80).all()
    # cells of a cluster are packed: nearest neighbours ≈ one lattice step apart, never overlapping centres
    from scipy.spatial import cKDTree
    d, _ = cKDTree(cells).query(cells, k=2)
    assert d[:, 1].min() > CELL_RADIUS_UM and np.median(d[:, 1]) < 2 * CELL_RADIUS_UM


def test_pixels_follow_beer_lambert(phantom):
    # glass in a corner: the background colour (plus sensor noise)
    glass = phantom.render_region(0, 0, 40, 40).reshape(-1, 3).astype(float)
    np.testing.assert_allclose(glass.mean(axis=0), phantom.background_rgb, atol=1.0)
    # a tumour cluster deconvolves into DAB, the lymphocyte tissue around it into haematoxylin
    c = phantom.clusters[0]
    x, y = int(c["centre_um"][0] / phantom.l0_mpp), int(c["centre_um"][1] / phantom.l0_mpp)
    matrix = stain.stain_matrix(phantom.h_vector, phantom.dab_vector)
    amounts = stain.deconvolve(stain.optical_density(phantom.render_region(x - 20, y - 20, 40, 40),
                                                     phantom.background_rgb), matrix)
    assert np.median(amounts[..., 1]) > 0.2
    pigment = phantom.decoys[0]
    x, y = int(pigment["centre_um"][0] / phantom.l0_mpp), int(pigment["centre_um"][1] / phantom.l0_mpp)
    far = stain.deconvolve(stain.optical_density(phantom.render_region(x + 200, y, 40, 40),
                                                 phantom.background_rgb), matrix)
    assert np.median(far[..., 0]) > np.median(far[..., 1])


def test_written_slide_opens_in_openslide_with_truth(tmp_path):
    small = make_ihc_phantom(seed=1, size_mm=(0.6, 0.5), itc_sizes=(5,), n_haemosiderin=1, n_anthracotic=0,
                             min_separation_um=50)
    truth_path = write_ihc_phantom(tmp_path / "ihc.tiff", small)
    with openslide.OpenSlide(str(tmp_path / "ihc.tiff")) as osr:
        assert osr.dimensions == (1200, 1000)
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert osr.level_count >= 3
        region = np.asarray(osr.read_region((0, 0), 0, (1200, 1000)).convert("RGB"))
    np.testing.assert_allclose(region.astype(int), small.render_region(0, 0, 1200, 1000).astype(int), atol=40)
    truth = json.loads(truth_path.read_text())
    assert truth["schema"] == "micromets.ihc-phantom-truth/1" and truth["clusters"][0]["n_cells"] == 5


def test_bad_requests_are_refused():
    with pytest.raises(MicrometsError, match="cell counts"):
        make_ihc_phantom(itc_sizes=(0,))
    with pytest.raises(MicrometsError, match="too small"):
        make_ihc_phantom(size_mm=(0.3, 0.3), itc_sizes=(150, 150, 150))
