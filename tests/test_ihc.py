"""Cytokeratin IHC: DAB-positive tumour cells on the real IHC image and on phantom slides with known truth."""

import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from PIL import Image
from skimage import color, feature, filters, morphology

from micromets import ihc, measure, stain
from micromets.errors import MicrometsError
from micromets.measure import measure_lesions
from micromets.phantom.ihc import ANTHRACOTIC_OD, HAEMOSIDERIN_OD, make_ihc_phantom, write_ihc_phantom
from micromets.phantom.pyramid import write_pyramid
from micromets.rules import ajcc8
from micromets.slide import open_slide
from micromets.tissue import tissue_mask

#: The skimage IHC sample has no stated resolution; its nuclei (≈ 10 × 20 px) fit 0.5 µm/px (20× objective).
REAL_PX_UM = 0.5
#: The two routes' counts must agree within this relative difference.
COUNT_TOLERANCE = 0.20


def _independent_count(rgb: np.ndarray, px_um: float) -> int:
    """Cells counted by another route: skimage's own H-DAB deconvolution (standard vectors), an Otsu threshold on
    its DAB channel (adaptive, instead of the fixed OD threshold), and nuclei as local maxima of the Gaussian
    smoothed haematoxylin (σ = 1.5 µm, ≥ 4 µm apart, above the Otsu level of H inside the mask) instead of a
    distance-transform watershed of thresholded nuclei."""
    hed = color.rgb2hed(rgb)
    dab = filters.gaussian(hed[..., 2], 1.0 / px_um)
    positive = dab > filters.threshold_otsu(dab)
    positive = morphology.remove_small_holes(positive, max_size=int(150 / px_um**2))
    positive = morphology.remove_small_objects(positive, max_size=int(30 / px_um**2))
    h = filters.gaussian(hed[..., 0], 1.5 / px_um)
    peaks = feature.peak_local_max(np.where(positive, h, 0), min_distance=int(4 / px_um),
                                   threshold_abs=filters.threshold_otsu(h[positive]))
    return len(peaks)


def test_real_ihc_cells_counted_and_confirmed_by_an_independent_route(shared_data, artifacts):
    rgb = np.asarray(Image.open(shared_data / "ihc" / "ihc.png").convert("RGB"))
    assert stain.detect_stain(rgb)[0] == "ihc"
    matrix, _ = stain.estimate_stain_vectors(stain.optical_density(rgb).reshape(-1, 3))
    found = ihc.find_positive_cells(rgb, REAL_PX_UM, matrix)
    n_main = len(found.cells_rc)
    n_other = _independent_count(rgb, REAL_PX_UM)
    overlay = rgb.copy()
    rim = found.positive & ~ndi.binary_erosion(found.positive)
    overlay[rim] = (0, 200, 0)
    for r, c in np.rint(found.cells_rc).astype(int):
        overlay[max(0, r - 2):r + 3, max(0, c - 2):c + 3] = (255, 0, 0)
    Image.fromarray(overlay).save(artifacts / "ihc_real_cells.png")
    # the brown epithelium covers about half of the picture; the blue stroma is not positive
    assert 0.45 < found.positive.mean() < 0.7
    assert 100 < n_main < 300
    assert abs(n_main - n_other) <= COUNT_TOLERANCE * n_other, (n_main, n_other)
    # every counted cell lies in the positive area
    r, c = np.rint(found.cells_rc).astype(int).T
    assert found.positive[r, c].all()


def test_pigment_score_separates_dyes_from_pigments():
    mixes = np.array([[a, b] for a in (0.0, 0.2, 0.6) for b in (0.1, 0.4, 0.9)]) @ stain.STANDARD_HDAB[:2]
    assert ihc.pigment_score(mixes).max() < 1e-6
    assert ihc.pigment_score(HAEMOSIDERIN_OD) > 0.1
    assert ihc.pigment_score(ANTHRACOTIC_OD) > 0.1
    assert ihc.pigment_score(ANTHRACOTIC_OD + 0.5 * stain.DAB_OD) > ihc.PIGMENT_SCORE_MAX


def _cells_image(disc_area_um2: float, dab_od: float, px_um: float = 1.0, glass_left: int = 0, size: int = 120):
    """A `size`² px field of faint background with one round DAB-stained cell (nucleus inside) in the middle;
    optionally the left `glass_left` columns are bare glass."""
    yy, xx = np.mgrid[:size, :size]
    d_um = np.hypot(yy - size // 2, xx - size // 2) * px_um
    radius = np.sqrt(disc_area_um2 / np.pi)
    amounts = np.zeros((size, size, 2))
    amounts[..., 0] = 0.08
    amounts[..., 1] = 0.03
    amounts[..., 1] += np.where(d_um <= radius, dab_od, 0)
    amounts[..., 0] += np.where(d_um <= 0.55 * radius, 0.4, 0)
    od = amounts @ stain.STANDARD_HDAB[:2]
    od[:, :glass_left] = 0
    return stain.od_to_rgb(od)


def test_cell_size_and_background_thresholds():
    # a cell of 60 µm² is counted; a speck of 15 µm² is not (MIN_CELL_UM2 = 30 after 1 µm smoothing)
    found = ihc.find_positive_cells(_cells_image(60, 0.6), 1.0)
    assert len(found.cells_rc) == 1 and found.rejected["speck"] == 0
    np.testing.assert_allclose(found.cells_rc[0], (60, 60), atol=1.5)
    found = ihc.find_positive_cells(_cells_image(15, 0.6), 1.0)
    assert len(found.cells_rc) == 0 and found.rejected["speck"] == 1
    # faint DAB below 0.15 OD is background, above it a cell
    assert len(ihc.find_positive_cells(_cells_image(120, 0.10), 1.0).cells_rc) == 0
    assert len(ihc.find_positive_cells(_cells_image(120, 0.25), 1.0).cells_rc) == 1


def test_dab_at_the_edge_of_the_section_is_artefact():
    # glass over the left 100 × 240 µm (24,000 µm² >= EDGE_GLASS_MIN_UM2): a DAB rim along it is artefact,
    # the cell 14 µm from the glass is not
    img = _cells_image(120, 0.6, glass_left=100, size=240)
    img[:, 100:104] = stain.od_to_rgb(np.full((240, 4, 1), 0.6) * stain.DAB_OD)
    found = ihc.find_positive_cells(img, 1.0)
    assert len(found.cells_rc) == 1 and found.rejected["edge_px"] > 0
    assert not found.positive[:, :108].any()
    # a small hole in the section (a lumen of 40 × 40 µm) is not an edge: DAB lining it stays
    img = _cells_image(120, 0.6, size=240)
    img[20:60, 20:60] = 255
    img[20:60, 60:64] = stain.od_to_rgb(np.full((40, 4, 1), 0.6) * stain.DAB_OD)
    found = ihc.find_positive_cells(img, 1.0)
    assert found.rejected["edge_px"] == 0 and found.positive[20:60, 60:64].any()


@pytest.mark.parametrize("size", [2, 3, 4, 5, 13])
def test_box_tests_are_the_scipy_filters_they_replace(size):
    # all-in-box = uniform filter == 1 (the glass squares), any-in-box = maximum filter (the reach of the glass),
    # both centred as scipy's and at the image border
    rng = np.random.default_rng(size)
    before, after = size // 2, size - 1 - size // 2
    for shape in [(1, 7), (9, 1), (37, 50), (64, 64)]:
        dense, sparse = rng.random(shape) > 0.2, rng.random(shape) > 0.97
        all_in = ndi.uniform_filter(dense.astype(np.float32), size=size) > 0.999
        np.testing.assert_array_equal(~ihc._any_in_box(~dense, before, after), all_in)
        np.testing.assert_array_equal(ihc._any_in_box(sparse, before, after), ndi.maximum_filter(sparse, size=size))


@pytest.mark.parametrize("px_um", [1.0, 0.5])
def test_cluster_outlines_closed_group_by_group_equal_closing_the_whole_image(px_um):
    # specks and blobs scattered over an image, some within the 2 µm closing of each other, some on its border
    rng = np.random.default_rng(1)
    mask = ndi.binary_dilation(rng.random((300, 260)) > 0.9985, iterations=3)
    mask[0:6, 100:110] = mask[150:156, 254:260] = True
    disk = ihc._disk(2.0 / px_um)
    whole = measure.mask_to_polygons_l0(ndi.binary_closing(mask, disk, border_value=0) | mask, px_um, 0.25, (8, 4))
    rr, cc = np.nonzero(mask)
    grouped = ihc._outlines_l0(rr, cc, mask.shape, px_um, 0.25, (8, 4))
    assert len(grouped) == len(whole) > 20
    assert shapely.equals(shapely.union_all(grouped), shapely.union_all(whole))


def test_a_crop_that_leaves_out_glass_keeps_the_edge_rule_of_the_whole_image():
    # glass over the left 100 px (24,000 µm²) with a DAB rim along it; cropping away 80 px of that glass leaves a
    # strip of 4,800 µm², too small to be the section's edge unless the crop says glass lies beyond its left side
    img = _cells_image(120, 0.6, glass_left=100, size=240)
    img[:, 100:104] = stain.od_to_rgb(np.full((240, 4, 1), 0.6) * stain.DAB_OD)
    whole = ihc.find_positive_cells(img, 1.0)
    cropped = ihc.find_positive_cells(img[:, 80:], 1.0, glass_beyond=(False, False, True, False))
    np.testing.assert_array_equal(cropped.positive, whole.positive[:, 80:])
    np.testing.assert_allclose(cropped.cells_rc + [0, 80], whole.cells_rc)
    assert ihc.find_positive_cells(img[:, 80:], 1.0).positive[:, 20:24].any()  # without it the rim would stay


def test_bad_input_is_refused():
    with pytest.raises(MicrometsError, match="uint8"):
        ihc.find_positive_cells(np.zeros((10, 10)), 1.0)
    with pytest.raises(MicrometsError, match="pixel size"):
        ihc.find_positive_cells(np.zeros((10, 10, 3), np.uint8), 0)


@pytest.fixture(scope="module")
def phantom_slide(tmp_path_factory):
    phantom = make_ihc_phantom(seed=0, size_mm=(1.6, 1.6), itc_sizes=(5, 12, 30, 60, 150), micro_sizes=(300,),
                               n_haemosiderin=3, n_anthracotic=3, min_separation_um=150)
    path = tmp_path_factory.mktemp("ihc") / "ihc_phantom.tiff"
    write_ihc_phantom(path, phantom)
    return path, phantom.truth()


def test_phantom_slide_clusters_counts_and_node_class(phantom_slide):
    path, truth = phantom_slide
    with open_slide(path) as slide:
        tissue = tissue_mask(slide)
        kind, reason = stain.detect_stain(tissue.rgb, tissue.mask)
        assert kind == "ihc", reason
        found = ihc.analyze_ihc(slide, tissue)
        l0_mpp = slide.l0_mpp
    assert "DAB estimated" in found.stain_note
    polygons = [c["geometry_l0"] for c in found.clusters]
    matched = set()
    for cluster in truth["clusters"]:
        cells = np.asarray(cluster["cells_l0"])
        hits = [i for i, p in enumerate(polygons) if shapely.contains_xy(p, cells[:, 0], cells[:, 1]).any()]
        assert len(hits) == 1, (cluster["n_cells"], hits)
        n_found = found.clusters[hits[0]]["n_cells"]
        assert abs(n_found - cluster["n_cells"]) <= max(1, 0.10 * cluster["n_cells"]), (cluster["n_cells"], n_found)
        matched.add(hits[0])
    assert len(found.clusters) == len(matched), "false clusters (pigment, specks, edge, fold)"
    assert found.rejected["pigment"] >= 1 and found.rejected["speck"] >= 1
    # cell points lie inside their clusters and the heatmap marks them
    inside = shapely.contains_xy(shapely.union_all(polygons), found.cells_l0[:, 0], found.cells_l0[:, 1])
    assert inside.all()
    hm = found.heatmap
    rc = (found.cells_l0[:, ::-1] / hm.l0_cell).astype(int)
    assert (hm.h_prob[rc[:, 0], rc[:, 1]] > 0).mean() > 0.95
    assert hm.h_prob.max() <= 1.0 and hm.cell_um == ihc.CELL_UM
    # through the measurement and staging modules: the node class of the truth
    lesions = measure_lesions(polygons, l0_mpp)
    classes = [ajcc8.node_class(m.diameter_mm, int(shapely.contains_xy(m.geometry_l0, *found.cells_l0.T).sum()))
               for m in lesions]
    assert max(classes, key=["negative", "itc", "micro", "macro"].index) == truth["node_class"] == "micro"
    assert sorted(classes) == ["itc"] * 5 + ["micro"]


def test_windows_cropped_to_the_tissue_give_the_same_findings(phantom_slide, monkeypatch):
    path, _ = phantom_slide
    with open_slide(path) as slide:
        tissue = tissue_mask(slide)
        cropped = ihc.analyze_ihc(slide, tissue)
        monkeypatch.setattr(ihc, "SEARCH_REACH_UM", 1e6)  # every pixel within reach of tissue: nothing cut
        whole = ihc.analyze_ihc(slide, tissue)
    assert cropped.timing_s["analysed_mpx"] < whole.timing_s["analysed_mpx"]  # some glass was cut away
    np.testing.assert_array_equal(cropped.heatmap.h_prob, whole.heatmap.h_prob)
    np.testing.assert_allclose(cropped.cells_l0, whole.cells_l0, atol=1e-9)
    assert cropped.rejected == whole.rejected
    assert [c["n_cells"] for c in cropped.clusters] == [c["n_cells"] for c in whole.clusters]
    assert all(shapely.equals(a["geometry_l0"], b["geometry_l0"]) for a, b in zip(cropped.clusters, whole.clusters))


@pytest.mark.parametrize("l0_mpp, expected", [
    (0.2527, 4 * 0.2527),   # Aperio 40×: its 4× level (1.01 µm/px) is read as stored, not the 2× level shrunk
    (0.2431, 4 * 0.2431),   # CAMELYON16-like: 0.97 µm/px
    (0.5, 1.0),             # an exact 1 µm/px level
    (0.7, 1.0),             # levels 0.7, 1.4, …: none within 10 %, read 0.7 and resample to 1 µm/px
])
def test_work_resolution_is_a_pyramid_level_near_1_um(tmp_path, l0_mpp, expected):
    path = tmp_path / "p.tiff"
    write_pyramid(path, 2048, 1024, l0_mpp, lambda x, y, w, h: np.full((h, w, 3), 230, np.uint8))
    with open_slide(path) as slide:
        assert ihc.work_resolution(slide, 1.0) == pytest.approx(expected, rel=1e-6)


def test_analyze_ihc_refuses_a_bad_work_resolution(phantom_slide):
    path, _ = phantom_slide
    with open_slide(path) as slide, pytest.raises(MicrometsError, match="work resolution"):
        ihc.analyze_ihc(slide, tissue_mask(slide), work_mpp=10.0)
