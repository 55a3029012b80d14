"""Lesion grouping by gap, exact maximum Feret diameter, area and fitted-ellipse axis."""

import json
import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from micromets.errors import MicrometsError
from micromets.measure import (
    ellipse_major_axis,
    hull_vertices,
    mask_to_polygons_l0,
    max_feret,
    measure_lesions,
)


def brute_force_diameter(geom) -> float:
    """Maximum distance over all vertex pairs (the definition, O(n^2))."""
    xy = shapely.get_coordinates(geom)
    diff = xy[:, None, :] - xy[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4)), min_size=1, max_size=60))
def test_rotating_calipers_equal_brute_force(points):
    geom = shapely.MultiPoint(points)
    hull = hull_vertices(geom)
    diameter, a, b = max_feret(hull)
    assert diameter == pytest.approx(brute_force_diameter(geom), rel=1e-12, abs=1e-9)
    assert np.hypot(*(hull[a] - hull[b])) == pytest.approx(diameter)


def test_square_and_disc_sizes():
    mpp = 0.5
    square = shapely.box(0, 0, 1000, 1000)  # 0.5 mm side
    [lesion] = measure_lesions([square], mpp)
    assert lesion.diameter_mm == pytest.approx(0.5 * math.sqrt(2))
    assert lesion.area_mm2 == pytest.approx(0.25)
    assert lesion.n_members == 1 and not lesion.repaired
    disc = shapely.Point(0, 0).buffer(500, quad_segs=256)  # diameter 1000 px = 0.5 mm
    assert ellipse_major_axis(disc) == pytest.approx(1000, rel=1e-4)
    # an ellipse with semi-axes 300 and 100 px: moment-fitted major axis is 600 px
    ellipse = shapely.affinity.scale(shapely.Point(0, 0).buffer(1, quad_segs=512), 300, 100)
    assert ellipse_major_axis(ellipse) == pytest.approx(600, rel=1e-4)


def test_holes_subtract_from_area_not_from_feret():
    ring = shapely.box(0, 0, 100, 100).difference(shapely.box(25, 25, 75, 75))
    [lesion] = measure_lesions([ring], 1.0)
    assert lesion.area_mm2 == pytest.approx((100**2 - 50**2) * 1e-6)
    assert lesion.diameter_mm == pytest.approx(100 * math.sqrt(2) / 1000)


def test_gap_boundary_is_inclusive():
    mpp = 0.25  # 75 µm = 300 px
    left = shapely.box(0, 0, 100, 100)
    at_gap = shapely.box(400, 0, 500, 100)  # 300 px apart: joins
    beyond = shapely.box(400.5, 0, 500, 100)  # 300.5 px: separate
    joined = measure_lesions([left, at_gap], mpp)
    assert len(joined) == 1 and joined[0].n_members == 2
    # the joined lesion is measured on the original outlines: corner to corner across the gap
    assert joined[0].diameter_mm == pytest.approx(math.hypot(500, 100) * mpp / 1000)
    assert joined[0].area_mm2 == pytest.approx(2 * 100 * 100 * mpp**2 / 1e6)
    assert len(measure_lesions([left, beyond], mpp)) == 2
    assert len(measure_lesions([left, at_gap], mpp, gap_um=0)) == 2


def test_grouping_is_transitive_and_sorted():
    mpp = 1.0
    chain = [shapely.box(i * 150, 0, i * 150 + 100, 100) for i in range(4)]  # 50 µm gaps
    far = shapely.box(10_000, 0, 10_050, 50)
    lesions = measure_lesions(chain + [far], mpp)
    assert [lesion.n_members for lesion in lesions] == [4, 1]
    assert lesions[0].diameter_mm > lesions[1].diameter_mm


def test_invalid_outline_is_repaired_and_flagged():
    bow_tie = np.array([[0, 0], [100, 100], [100, 0], [0, 100]], dtype=float)
    [lesion] = measure_lesions([bow_tie], 1.0)
    assert lesion.repaired and lesion.n_members == 1
    assert lesion.area_mm2 == pytest.approx(2 * 0.5 * 100 * 50 * 1e-6)
    assert lesion.diameter_mm == pytest.approx(100 * math.sqrt(2) / 1000)


@pytest.mark.parametrize(
    ("geoms", "mpp", "gap", "message"),
    [
        ([np.array([[0, 0], [1, 1]])], 1.0, 75, "at least 3"),
        ([np.array([[0, 0], [1, 1], [2, 2]])], 1.0, 75, "no area"),
        ([shapely.Polygon()], 1.0, 75, "empty"),
        ([shapely.box(0, 0, 1, 1)], 0.0, 75, "l0_mpp"),
        ([shapely.box(0, 0, 1, 1)], 1.0, -1, "gap_um"),
        ([np.array([[0, 0], [1, np.nan], [2, 0]])], 1.0, 75, "finite"),
    ],
)
def test_bad_outlines_raise(geoms, mpp, gap, message):
    with pytest.raises(MicrometsError, match=message):
        measure_lesions(geoms, mpp, gap)


def test_no_outlines_no_lesions():
    assert measure_lesions([], 0.243) == []


def test_mask_to_polygons_l0_geometry():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:12, 5:25] = True  # 10 x 20 cells
    mask[5:8, 10:15] = False  # a hole
    mask[15, 2] = True  # a single cell
    polygons = mask_to_polygons_l0(mask, mask_mpp=8.0, l0_mpp=0.25, l0_origin=(1000, 2000))
    assert len(polygons) == 2
    big = max(polygons, key=lambda p: p.area)
    scale = 8.0 / 0.25
    minx, miny, maxx, maxy = big.bounds
    # the 0.5 iso-line runs through the pixel-edge mid-points: the box edges exactly
    assert (minx, miny, maxx, maxy) == pytest.approx(
        (1000 + 5 * scale, 2000 + 2 * scale, 1000 + 25 * scale, 2000 + 12 * scale)
    )
    assert len(big.interiors) == 1
    single = min(polygons, key=lambda p: p.area)
    assert single.centroid.x == pytest.approx(1000 + 2.5 * scale)
    assert single.centroid.y == pytest.approx(2000 + 15.5 * scale)

